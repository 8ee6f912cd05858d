"""``auxrl study report DIR``: report.md, results.json and PNG plots of a study's output folder.

Everything comes from ``DIR/study.json`` (the spec) and the run directories (``score.json``,
``curve.json`` or the TensorBoard files, ``probe.json``): committed results re-report without
training anything, and the bootstrap is seeded, so the same runs give the same numbers.

``auxrl study report DIR --spec SPEC --out OUT`` reports the runs of ``DIR/runs`` as the runs of
SPEC instead, into OUT: a suite of the retired benchmarks/atari100k.py (runs ``<Game>__<variant>__<seed>``
scored in ``eval.json``) re-reports as the study its spec describes, e.g. the committed
``benchmarks/results/atari100k-cpu-2026-11-30`` with ``configs/studies/atari100k.yaml``.
"""

from __future__ import annotations

import json
import math
import shlex
import sys
from pathlib import Path
from typing import Any

import numpy as np

from auxrl.configfile import override_texts
from auxrl.study import analysis
from auxrl.study.analysis import METRICS, Block, Interval, RunResult
from auxrl.study.runner import STUDY_FILE, load_record
from auxrl.study.score import RETURN_TAG
from auxrl.study.scores import REFERENCE_SOURCE, SCALE_NAMES, normalizer, reference_range
from auxrl.study.spec import Run, Study, parse_spec
from auxrl.study.state import REPORT_SCORE_FILES, SCORE_FILE, read_json, read_score, write_json

REPORT_FILE = "report.md"
RESULTS_FILE = "results.json"
SUITE_FILE = "suite.json"  # an older suite's record (settings, commands): the retired benchmarks/atari100k.py
DEFAULT_REPS = 2000


def _interval(x: Interval | None, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x[0]:.{digits}f} [{x[1]:.{digits}f}, {x[2]:.{digits}f}]"


def _as_json(x: Interval) -> dict[str, float]:
    return {"point": x[0], "lower": x[1], "upper": x[2]}


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def spec_record(study: Study, source: Path) -> dict[str, Any]:
    """What ``study.json`` would record of ``study``, to report the runs of ``source/runs`` with it
    (a study's folder, or an older suite's: its commands are kept)."""
    if not (source / "runs").is_dir():
        what = "no such folder" if not source.exists() else "no runs/ folder in it"
        raise ValueError(f"{source}: {what}; give the folder whose runs/ holds the run directories.")
    before = read_json(source / STUDY_FILE) or read_json(source / SUITE_FILE) or {}
    return {
        "spec": study.spec.model_dump(),
        "spec_file": str(study.path),
        "base_config": str(study.base_path),
        "commands": [str(c) for c in before.get("commands", [])],
    }


class Report:
    """The analysis of one study folder (see :func:`write_report`): its runs under
    ``source/runs``, described by ``source/study.json`` or by the spec file ``spec_file``; its
    plots go to ``out`` (default: ``source``)."""

    def __init__(
        self,
        source: Path,
        reps: int = DEFAULT_REPS,
        seed: int = 0,
        spec_file: Path | None = None,
        out: Path | None = None,
    ) -> None:
        self.source, self.out, self.reps, self.seed = source, out or source, reps, seed
        self.spec_file = spec_file
        if spec_file is None:
            self.record = load_record(source)
            given = parse_spec(self.record["spec"], str(source / STUDY_FILE))
            self.study = Study(given, source / STUDY_FILE, Path(self.record.get("base_config", given.base)))
        else:
            from auxrl.study.spec import load_spec

            # The spec describes runs trained already: its overrides need not build on this auxrl.
            self.study = load_spec(spec_file, check_configs=False)
            self.record = spec_record(self.study, source)
        self.spec = spec = self.study.spec
        self.baseline = self.study.baseline
        self.scale = SCALE_NAMES[spec.normalize]
        self.planned = self.study.runs()
        ranges = {env: (pair[0], pair[1]) for env, pair in spec.ranges.items()}
        self.ranges = ranges
        self.results = analysis.collect(
            source / "runs", self.planned, spec.steps, normalizer(spec.normalize, ranges), spec.score
        )
        done = {r.run for r in self.results}
        self.missing = [run for run in self.planned if run not in done]
        with_runs = [v for v in self.study.variants if any(r.run.variant == v for r in self.results)]
        self.block: Block = analysis.matched_block(self.results, spec.envs, with_runs)
        self.aggregates: dict[str, dict[str, Interval]] = {}
        self.improvement: dict[str, Interval] = {}
        if self.block.envs:
            gap = spec.normalize != "none"
            self.aggregates = analysis.aggregate_estimates(self.block.scores, gap=gap, reps=reps, seed=seed)
            if self.baseline in self.block.scores:
                self.improvement = analysis.improvement_estimates(
                    self.block.scores, self.baseline, reps=reps, seed=seed
                )
        self.plots: list[str] = []

    # ---------------------------------------------------------------- tables
    def of(self, env: str | None = None, variant: str | None = None) -> list[RunResult]:
        return [
            r
            for r in self.results
            if (env is None or r.run.env == env) and (variant is None or r.run.variant == variant)
        ]

    def probe_cell(self, results: list[RunResult]) -> str:
        f1 = [r.probe_f1 for r in results if r.probe_f1 is not None]
        if not f1:
            return "-"
        floor = [r.probe_random_f1 for r in results if r.probe_random_f1 is not None]
        extra = f", random torso {np.mean(floor):.3f}" if floor else ""
        return f"{np.mean(f1):.3f} (n={len(f1)}{extra})"

    @property
    def probed(self) -> bool:
        return any(r.probe_f1 is not None for r in self.results)

    def aggregate_lines(self) -> list[str]:
        if not self.aggregates:
            return ["No matched finished runs yet: no aggregates."]
        names = [m for m in METRICS if m in next(iter(self.aggregates.values()))]
        probe = self.probed
        head = ["variant", "runs", *names, f"P(variant > {self.baseline})", *(["probe F1"] if probe else [])]
        lines = [
            f"Scale: {self.scale}. Block: {self.block.describe()} ({', '.join(self.block.envs)}); 95% "
            f"stratified-bootstrap intervals in brackets ({self.reps} resamples, seed {self.seed}).",
            "",
            "| " + " | ".join(head) + " |",
            "|---|" + "--:|" * (len(head) - 1),
        ]
        for v, agg in self.aggregates.items():
            p = "(baseline)" if v == self.baseline else _interval(self.improvement.get(v), 2)
            cells = [v, str(self.block.scores[v].size), *(_interval(agg[m]) for m in names), p]
            cells += [self.probe_cell(self.of(variant=v))] if probe else []
            lines.append("| " + " | ".join(cells) + " |")
        if "optimality gap" in names:
            lines += [
                "",
                "Optimality gap: the mean shortfall below a normalised score of 1 (lower is better).",
            ]
        if self.improvement:
            lines += ["", f"Against {self.baseline}:", ""]
            lines += [
                f"- {v}: P({v} > {self.baseline}) {_interval(p, 2)}: {analysis.verdict(p, self.block.runs)}."
                for v, p in self.improvement.items()
            ]
        return lines

    def env_lines(self, env: str) -> list[str]:
        low, high = reference_range(env, self.spec.normalize, self.ranges)
        scale = "" if self.spec.normalize == "none" else f" ({self.scale}: {low:g} -> 0, {high:g} -> 1)"
        probe, normalized = self.probed, self.spec.normalize != "none"
        name = "score" if self.spec.score == "return" else f"`{self.spec.score}`"
        head = ["variant", "runs", f"{name} mean ± std over seeds", *(["normalised"] if normalized else [])]
        head += [f"{name} per seed", *(["probe F1"] if probe else [])]
        lines = [f"### {env}{scale}", "", "| " + " | ".join(head) + " |", "|---|" + "--:|" * (len(head) - 1)]
        for v in self.study.variants:
            mine = sorted(self.of(env, v), key=lambda r: r.run.seed)
            if not mine:
                lines.append(f"| {v} | 0 |" + " - |" * (len(head) - 2))
                continue
            scores = [r.score for r in mine]
            std = f" ± {np.std(scores, ddof=1):.2f}" if len(scores) > 1 else ""
            cells = [v, str(len(mine)), f"{np.mean(scores):.2f}{std}"]
            cells += [f"{np.mean([r.normalized for r in mine]):.3f}"] if normalized else []
            cells += [", ".join(f"{r.run.seed}: {r.score:.1f}" for r in mine)]
            cells += [self.probe_cell(mine)] if probe else []
            lines.append("| " + " | ".join(cells) + " |")
        return lines

    # ---------------------------------------------------------------- plots
    def write_plots(self) -> list[str]:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        written: list[str] = []
        for name, draw in (
            ("aggregates.png", self._aggregates_plot),
            ("probability_of_improvement.png", self._improvement_plot),
            ("performance_profile.png", self._profile_plot),
            ("curves.png", self._curves_plot),
        ):
            try:
                fig = draw(plt)
            except Exception as err:  # a plot must never cost the tables
                print(
                    f"auxrl study report: note: {name} not drawn ({type(err).__name__}: {err})",
                    file=sys.stderr,
                )
                continue
            if fig is None:
                continue
            fig.savefig(self.out / name, dpi=120, bbox_inches="tight")
            plt.close(fig)
            written.append(name)
        return written

    def _aggregates_plot(self, plt: Any) -> Any:
        if not self.aggregates:
            return None
        from rliable import plot_utils

        variants = list(self.aggregates)
        names = [m for m in METRICS if m in self.aggregates[variants[0]]]
        points = {v: np.array([self.aggregates[v][m][0] for m in names]) for v in variants}
        cis = {
            v: np.array(
                [[self.aggregates[v][m][1] for m in names], [self.aggregates[v][m][2] for m in names]]
            )
            for v in variants
        }
        few = len(variants) < 5  # rliable's default layout puts the x label over a short figure's ticks
        fig, _ = plot_utils.plot_interval_estimates(
            points, cis, metric_names=names, algorithms=variants, xlabel=self.scale.capitalize(),
            row_height=0.6 if few else 0.37, xlabel_y_coordinate=-0.3 if few else -0.1,
        )  # fmt: skip
        return fig

    def _improvement_plot(self, plt: Any) -> Any:
        if not self.improvement:
            return None
        from rliable import plot_utils

        base = self.baseline
        estimates = {f"{v},{base}": np.array([p]) for v, (p, _, _) in self.improvement.items()}
        cis = {f"{v},{base}": np.array([[lo], [hi]]) for v, (_, lo, hi) in self.improvement.items()}
        ax = plot_utils.plot_probability_of_improvement(estimates, cis, figsize=(5, 1 + 0.5 * len(estimates)))
        ax.set_xlim(0, 1)  # the whole scale, with 0.5 (no difference) marked
        ax.axvline(0.5, color="grey", linestyle="--", linewidth=1)
        return ax.figure

    def _profile_plot(self, plt: Any) -> Any:
        if not self.block.envs:
            return None
        from rliable import plot_utils

        tau, profiles, cis = analysis.performance_profiles(self.block.scores, reps=self.reps, seed=self.seed)
        fig, ax = plt.subplots(figsize=(7, 4.5))
        plot_utils.plot_performance_profiles(
            profiles, tau, performance_profile_cis=cis, ax=ax, xlabel=f"{self.scale.capitalize()} (τ)",
            ylabel="Fraction of runs with score > τ", legend=True,
        )  # fmt: skip
        ax.legend(loc="upper right")
        return fig

    @property
    def curve_tag(self) -> str:
        """The learning curves drawn: the training returns, or the env score the study compares."""
        return RETURN_TAG if self.spec.score == "return" else self.spec.score

    def _curves_plot(self, plt: Any) -> Any:
        bands: dict[str, dict[str, analysis.Band]] = {}
        for env in self.spec.envs:
            for v in self.study.variants:
                dirs = [r.run_dir or self.source / "runs" / r.run.name for r in self.of(env, v)]
                curves = [analysis.read_curve(d, self.curve_tag) for d in dirs]
                band = analysis.curve_band([c for c in curves if c is not None])
                if band is not None:
                    bands.setdefault(env, {})[v] = band
        if not bands:
            return None
        envs = [e for e in self.spec.envs if e in bands]
        cols = min(3, len(envs))
        rows = math.ceil(len(envs) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 3.8 * rows), squeeze=False)
        colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        for ax, env in zip(axes.ravel(), envs, strict=False):
            for i, v in enumerate(self.study.variants):
                band = bands[env].get(v)
                if band is None:
                    continue
                color = colors[i % len(colors)]
                ax.plot(band.steps, band.mean, color=color, label=f"{v} (n={band.seeds})")
                if band.seeds > 1:
                    ax.fill_between(band.steps, band.lower, band.upper, color=color, alpha=0.2)
            ax.set_title(env)
            ax.set_xlabel("env steps")
            tag = self.curve_tag
            ax.set_ylabel(f"{'episodic return' if tag == RETURN_TAG else tag} (training)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        for ax in axes.ravel()[len(envs) :]:
            ax.set_visible(False)
        fig.suptitle("Learning curves: mean over seeds (smoothed 0.9), 95% t-interval", fontsize=10)
        fig.tight_layout()
        return fig

    # ---------------------------------------------------------------- files
    @property
    def command(self) -> str:
        """The ``auxrl study report`` command that writes this report again."""
        parts = ["auxrl", "study", "report", str(self.source)]
        parts += ["--spec", str(self.spec_file)] if self.spec_file is not None else []
        parts += ["--out", str(self.out)] if self.out != self.source else []
        parts += ["--reps", str(self.reps)] if self.reps != DEFAULT_REPS else []
        return shlex.join(parts)

    def source_lines(self) -> list[str]:
        """Where the runs were read, when not from the report's own folder or not as a study's."""
        lines = []
        if self.out != self.source or self.spec_file is not None:
            spec = f" as the runs of the spec {self.spec_file}" if self.spec_file is not None else ""
            lines.append(f"Runs read from `{self.source / 'runs'}`{spec}.")
        suite = sum(r.score_file != SCORE_FILE for r in self.results)
        if suite:
            which = "All" if suite == len(self.results) else f"{suite} of the"
            lines.append(
                f"{which} {len(self.results)} finished runs were scored by benchmarks/atari100k.py (their "
                f"`eval.json`: `auxrl eval RUN --episodes 10`, the same evaluation env seed, 12345, for "
                f"every run; a study's runs play with 12345 + the run's seed)."
            )
        return [" ".join(lines), ""] if lines else []

    def scored_by(self) -> str:
        games = (
            f"{self.spec.eval_episodes} whole games (`auxrl eval`: no episodic-life cut, no reward clipping) "
            f"on its final checkpoint"
        )
        if self.spec.score == "return":
            return f"scored by the mean return of {games}."
        return (
            f"scored by `{self.spec.score}` at its final step, the env's own score over every training "
            f"episode as training logged it (score.json's train_scores; the mean return of {games} is "
            f"score.json's score)."
        )

    def missing_line(self, run: Run) -> str:
        """A run of the "Not finished" list, with why where it was scored without the spec's score."""
        data = read_score(analysis.run_dir_of(self.source / "runs", run), REPORT_SCORE_FILES)
        score = self.spec.score
        if score == "return" or data is None or analysis.score_of(data, score) is not None:
            return f"- {run.name}"
        has = ", ".join(sorted(data.get("train_scores") or {})) or "none"
        return f"- {run.name}: scored, but without `{score}` (its train_scores: {has})"

    def markdown(self) -> str:
        spec = self.spec
        title = spec.description or f"Study {Path(self.record.get('spec_file', 'study')).stem}"
        lines = [
            f"# {title}",
            "",
            f"{len(self.results)}/{len(self.planned)} runs finished. Each run: `{spec.base}` with "
            f"ppo.total_steps={spec.steps:,}, {self.scored_by()} "
            f"Envs: {', '.join(spec.envs)}; seeds: {', '.join(map(str, spec.seeds))}.",
            "",
            *self.source_lines(),
            "## Aggregates",
            "",
            *self.aggregate_lines(),
            "",
            "How to read: IQM is the mean of the middle half of the runs (robust to a few outliers, less "
            "noisy than the median); P(X > Y) is the chance that a run of X beats a run of Y on an env "
            "picked at random (0.5: no difference). An interval that includes 0.5, or IQM intervals that "
            "overlap, mean these runs do not show a difference; with few seeds the intervals are wide "
            "and the bootstrap's percentile intervals are themselves rough.",
            "",
            "## Per env",
            "",
        ]
        for env in spec.envs:
            lines += [*self.env_lines(env), ""]
        if self.plots:
            lines += ["## Plots", "", *(f"![{p}]({p})" for p in self.plots), ""]
        lines += ["## Variants", ""]
        lines += [
            f"- {v}{' (baseline)' if v == self.baseline else ''}: "
            + (", ".join(f"`{t}`" for t in override_texts(given)) or "the base config as it is")
            for v, given in spec.variants.items()
        ]
        if spec.extra_overrides:
            lines.append("- every run: " + ", ".join(f"`{t}`" for t in override_texts(spec.extra_overrides)))
        if spec.normalize == "hns":
            lines.append(f"- reference scores: {REFERENCE_SOURCE}")
        lines += ["", "## Not finished", ""]
        missing = [self.missing_line(run) for run in self.missing]
        lines += missing or ["- nothing: every planned run is finished"]
        lines += [
            "",
            "## Commands",
            "",
            "```",
            *self.record.get("commands", []),
            self.command,
            "```",
            "",
        ]
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "description": self.spec.description,
            "spec": self.record["spec"],
            "scale": self.scale,
            "baseline": self.baseline,
            "reps": self.reps,
            "seed": self.seed,
            "source": str(self.source),
            "planned": len(self.planned),
            "finished": len(self.results),
            "missing": [run.name for run in self.missing],
            "block": {"envs": self.block.envs, "seeds": self.block.seeds},
            "aggregates": {v: {m: _as_json(x) for m, x in agg.items()} for v, agg in self.aggregates.items()},
            "probability_of_improvement": {
                v: {**_as_json(p), "over": self.baseline, "verdict": analysis.verdict(p, self.block.runs)}
                for v, p in self.improvement.items()
            },
            "per_env": {
                env: {
                    v: {
                        "runs": len(mine),
                        "score_mean": _mean([r.score for r in mine]),
                        "normalized_mean": _mean([r.normalized for r in mine]),
                        "probe_f1_mean": _mean([r.probe_f1 for r in mine if r.probe_f1 is not None]),
                    }
                    for v in self.study.variants
                    if (mine := self.of(env, v))
                }
                for env in self.spec.envs
            },
            "runs": [
                {
                    "run": r.run.name,
                    "env": r.run.env,
                    "variant": r.run.variant,
                    "seed": r.run.seed,
                    "score": r.score,
                    "normalized": r.normalized,
                    "std": r.std,
                    "episodes": r.episodes,
                    "step": r.step,
                    "probe_f1": r.probe_f1,
                    "probe_random_f1": r.probe_random_f1,
                    "dir": r.run_dir.name if r.run_dir is not None else r.run.name,
                    "score_file": r.score_file,
                }
                for r in self.results
            ],  # fmt: skip
            "plots": self.plots,
        }


def check_out(out: Path, source: Path, spec_file: Path | None) -> None:
    """Refuse to write a report where it would overwrite what the report did not write (e.g. a
    committed older suite's results.json)."""
    if spec_file is not None and out.resolve() == source.resolve() and not (source / STUDY_FILE).is_file():
        raise ValueError(
            f"{source} is not a study's folder (no {STUDY_FILE}): give --out, a folder for the report of "
            f"its runs as {spec_file}'s."
        )
    written = read_json(out / RESULTS_FILE)
    if (out / RESULTS_FILE).exists() and (written is None or "spec" not in written):
        raise ValueError(
            f"{out / RESULTS_FILE} was not written by auxrl study report (a benchmark suite's?); give --out "
            f"another folder for the report."
        )


def write_report(
    source: str | Path,
    reps: int = DEFAULT_REPS,
    seed: int = 0,
    plots: bool = True,
    spec_file: str | Path | None = None,
    out: str | Path | None = None,
) -> Path:
    """Write ``report.md``, ``results.json`` and the plots of the runs in ``source`` into ``out``
    (default: ``source``, a study's folder); returns report.md's path. ``spec_file``: report them
    as that spec's runs (an older suite's folder, or another spec of a study's)."""
    source = Path(source)
    out = Path(out) if out is not None else source
    spec_path = Path(spec_file) if spec_file is not None else None
    analysis.rliable()  # the one-line install hint before any work
    check_out(out, source, spec_path)
    report = Report(source, reps, seed, spec_path, out)
    out.mkdir(parents=True, exist_ok=True)
    if plots:
        report.plots = report.write_plots()
    (out / REPORT_FILE).write_text(report.markdown())
    write_json(out / RESULTS_FILE, report.to_json())
    return out / REPORT_FILE


def summary_lines(out: Path) -> list[str]:
    """The headline of a written report (results.json): IQM and P(improvement) per variant."""
    data = json.loads((out / RESULTS_FILE).read_text())
    lines = []
    for v, agg in data["aggregates"].items():
        iqm = agg["IQM"]
        line = f"{v}: IQM {iqm['point']:.3f} [{iqm['lower']:.3f}, {iqm['upper']:.3f}]"
        p = data["probability_of_improvement"].get(v)
        if p:
            line += f"; P({v} > {p['over']}) {p['point']:.2f} [{p['lower']:.2f}, {p['upper']:.2f}]"
        lines.append(line)
    return lines
