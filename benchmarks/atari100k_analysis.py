"""Scores of the Atari 100k suite: human-normalised scores, rliable aggregates, results.md.

Used by ``benchmarks/atari100k.py`` (``--analyze`` or at the end of every invocation). Works
on any subset of finished runs: the aggregates use the largest block of matched runs (the same
games and seeds for every variant compared), and what is not finished yet is listed.

The aggregates follow Agarwal et al. (2021), "Deep RL at the edge of the statistical
precipice", with their ``rliable`` package: interquartile mean (IQM), median and mean of the
human-normalised score (HNS) with 95% percentile intervals from a stratified bootstrap (runs
resampled within each game), and the probability of improvement P(X > Y) of each variant over
``no_aux``. ``rliable`` needs ``pip install -e ".[bench]"``.
"""

from __future__ import annotations

import contextlib
import json
import math
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# --------------------------------------------------------------------------------------------
# Reference scores
# --------------------------------------------------------------------------------------------
# The 26 games of Atari 100k and the random / human reference scores of the DQN literature (from
# rliable's colab) live in the package, for `auxrl study`'s hns normalisation as well.
from auxrl.study.scores import (  # noqa: E402, F401  (re-exported for atari100k.py and its tests)
    ATARI_100K_GAMES,
    HUMAN_SCORES,
    RANDOM_SCORES,
    REFERENCE_SOURCE,
)

# PPO after 100k agent steps elsewhere, per game: (mean, std over seeds or None), for the table's
# comparison columns. Neither used our settings (network, envs, evaluation), so they place our
# no_aux numbers, they do not rank them. SimPLe's appendix (Kaiser et al. 2019, arXiv:1903.00374)
# has a PPO_100k column for all 26 games; its table could not be read from the sources searchable
# here.
PPO_100K_REFERENCES: dict[str, tuple[dict[str, tuple[float, float | None]], str]] = {
    "QWR T2": (
        {"Boxing": (-3.9, None), "Breakout": (5.9, None), "Freeway": (8.0, None), "Seaquest": (370.0, None)},
        "'Q-Value Weighted Regression: Reinforcement Learning with Limited Data' (ICLR 2021 "
        "submission, OpenReview rd_bm8CK7o0), Table 2, row PPO, '6 Atari games at 100K samples' "
        "(no std, settings not stated; its SimPLe row matches SimPLe's paper)",
    ),
    "DreamerV3 data": (
        {
            "Boxing": (1.8, 2.9), "Breakout": (2.8, 0.5), "Freeway": (2.2, 4.4), "Kangaroo": (47.7, 27.5),
            "MsPacman": (325.0, 25.0), "PrivateEye": (70.0, 18.7), "Qbert": (316.5, 55.1),
            "Seaquest": (316.6, 11.3),
        },
        "danijar/dreamerv3 scores/atari100k-ppo_fixhp.json.gz (added in commit 2411f7d; Hafner et al. "
        "2025: Acme PPO, fixed hyperparameters, 400k frames, 5 seeds); summarised by us: per seed the "
        "mean return of the training episodes logged at >= 360k frames, then mean ± std over the 5 seeds",
    ),
}  # fmt: skip

BASELINE = "no_aux"
# PPO alone; a phase's baseline is the first of these it plans (no_aux_ram: PPO alone on the env
# path that reads the RAM labels, the matched baseline of state_prediction).
BASELINES = ("no_aux", "no_aux_ram")
METRICS = ("IQM", "median", "mean")


from auxrl.study.scores import human_normalized  # noqa: E402

# --------------------------------------------------------------------------------------------
# Finished runs and matched blocks
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Score:
    """The evaluation score of one finished run."""

    game: str
    variant: str
    seed: int
    score: float  # mean unclipped return of the evaluation games

    @property
    def hns(self) -> float:
        return human_normalized(self.game, self.score)


@dataclass
class Block:
    """Matched runs: for every game, the same ``k`` seeds for every variant."""

    games: list[str]
    seeds: dict[str, list[int]]  # game -> the k seeds used
    hns: dict[str, np.ndarray]  # variant -> (k, len(games)) human-normalised scores

    @property
    def k(self) -> int:
        return len(next(iter(self.seeds.values()))) if self.seeds else 0

    def describe(self) -> str:
        if not self.games:
            return "no matched runs yet"
        return f"{len(self.games)} games x {self.k} seeds, matched across variants"


def matched_block(scores: Iterable[Score], games: Sequence[str], variants: Sequence[str]) -> Block:
    """The largest complete block of matched runs of ``variants`` on ``games``.

    A game's matched seeds are those finished for every variant. rliable needs the same number
    of runs on every game, so the block takes ``k`` seeds (the lowest matched ones) on the games
    with at least ``k`` matched seeds, with ``k`` chosen to keep the most runs (ties: more games).
    """
    by_key = {(s.game, s.variant, s.seed): s for s in scores}
    matched: dict[str, list[int]] = {}
    for game in games:
        seed_sets = [{s for (g, v, s) in by_key if g == game and v == variant} for variant in variants]
        common = sorted(set.intersection(*seed_sets)) if seed_sets else []
        if common:
            matched[game] = common
    if not matched:
        return Block([], {}, {v: np.zeros((0, 0)) for v in variants})
    most = max(len(s) for s in matched.values())
    best_k = max(range(1, most + 1), key=lambda k: (k * sum(len(s) >= k for s in matched.values()), -k))
    used = [g for g in games if len(matched.get(g, [])) >= best_k]
    seeds = {g: matched[g][:best_k] for g in used}
    hns = {
        v: np.array(
            [[by_key[(g, v, seeds[g][i])].hns for g in used] for i in range(best_k)], dtype=np.float64
        )
        for v in variants
    }
    return Block(used, seeds, hns)


# --------------------------------------------------------------------------------------------
# rliable aggregates
# --------------------------------------------------------------------------------------------


def _rliable() -> tuple[Any, Any]:
    # arch (under rliable) warns that rliable's random_state argument is deprecated.
    warnings.filterwarnings("ignore", message="random_state is deprecated", category=FutureWarning)
    try:
        from rliable import library, metrics
    except Exception as err:  # ImportError, or arch failing to import under pandas >= 3
        raise ImportError(
            f"The Atari 100k analysis needs rliable ({type(err).__name__}: {err}). Install it with "
            'pip install -e ".[bench]" (its dependency arch 7.x needs pandas < 3).'
        ) from err
    return library, metrics


Interval = tuple[float, float, float]  # point estimate, lower, upper


def aggregate_estimates(
    hns: dict[str, np.ndarray], reps: int = 1000, seed: int = 0
) -> dict[str, dict[str, Interval]]:
    """IQM, median and mean HNS of every variant, with 95% stratified-bootstrap intervals."""
    library, metrics = _rliable()

    def aggregates(x: np.ndarray) -> np.ndarray:
        return np.array([metrics.aggregate_iqm(x), metrics.aggregate_median(x), metrics.aggregate_mean(x)])

    with seeded_numpy(seed):
        points, intervals = library.get_interval_estimates(hns, aggregates, reps=reps)
    return {
        v: {
            m: (float(points[v][i]), float(intervals[v][0, i]), float(intervals[v][1, i]))
            for i, m in enumerate(METRICS)
        }
        for v in hns
    }


@contextlib.contextmanager
def seeded_numpy(seed: int) -> Iterator[None]:
    """Seed numpy's global generator for the block, then restore it.

    rliable 1.2's stratified bootstrap draws its indices from ``np.random.choice`` and ignores its
    ``random_state`` argument, so without this the intervals change from one analysis to the next.
    """
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def improvement_estimates(
    hns: dict[str, np.ndarray], baseline: str = BASELINE, reps: int = 1000, seed: int = 0
) -> dict[str, Interval]:
    """P(variant > baseline) for every other variant, with 95% stratified-bootstrap intervals.

    The probability that a run of the variant scores higher than a run of the baseline on a
    game picked at random (Mann-Whitney U statistic averaged over games; ties count half).
    """
    library, metrics = _rliable()
    pairs = {f"{v},{baseline}": (hns[v], hns[baseline]) for v in hns if v != baseline}
    if not pairs:
        return {}

    def probability(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return np.array([metrics.probability_of_improvement(x, y)])

    with seeded_numpy(seed):
        points, intervals = library.get_interval_estimates(pairs, probability, reps=reps)
    return {
        pair.split(",")[0]: (
            float(points[pair][0]),
            float(intervals[pair][0, 0]),
            float(intervals[pair][1, 0]),
        )
        for pair in pairs
    }


def best_variant(aggregates: dict[str, dict[str, Interval]], baseline: str = BASELINE) -> str | None:
    """The variant other than ``baseline`` (and PPO alone) with the highest IQM (ties: the higher mean)."""
    candidates = [v for v in aggregates if v != baseline and v not in BASELINES]
    if not candidates:
        return None
    return max(candidates, key=lambda v: (aggregates[v]["IQM"][0], aggregates[v]["mean"][0]))


# --------------------------------------------------------------------------------------------
# One phase's analysis
# --------------------------------------------------------------------------------------------


@dataclass
class PhaseAnalysis:
    """What is finished in one phase of the suite and what it shows."""

    phase: str
    games: list[str]
    variants: list[str]
    planned: list[tuple[str, str, int]]  # (game, variant, seed)
    scores: list[Score]
    block: Block
    aggregates: dict[str, dict[str, Interval]]
    improvement: dict[str, Interval]
    baseline: str = BASELINE

    @property
    def missing(self) -> list[tuple[str, str, int]]:
        done = {(s.game, s.variant, s.seed) for s in self.scores}
        return [key for key in self.planned if key not in done]

    @property
    def complete(self) -> bool:
        return not self.missing and bool(self.planned)

    def to_json(self) -> dict[str, Any]:
        return {
            "games": self.games,
            "variants": self.variants,
            "planned": len(self.planned),
            "finished": len(self.planned) - len(self.missing),
            "missing": ["__".join(map(str, key)) for key in self.missing],
            "block": {"games": self.block.games, "seeds": self.block.seeds},
            "aggregates": self.aggregates,
            "baseline": self.baseline,
            "probability_of_improvement_over_baseline": self.improvement,
            "runs": [
                {"game": s.game, "variant": s.variant, "seed": s.seed, "score": s.score, "hns": s.hns}
                for s in self.scores
            ],
        }


def analyze_phase(
    phase: str,
    planned: Sequence[tuple[str, str, int]],
    scores: Iterable[Score],
    reps: int = 1000,
    seed: int = 0,
    baseline: str | None = None,
) -> PhaseAnalysis:
    """Aggregate the finished runs among ``planned`` (any subset may be finished); ``baseline``:
    the variant P(improvement) is taken against (default: the first of BASELINES it plans)."""
    planned = list(planned)
    games = list(dict.fromkeys(g for g, _, _ in planned))
    variants = list(dict.fromkeys(v for _, v, _ in planned))
    keys = set(planned)
    mine = [s for s in scores if (s.game, s.variant, s.seed) in keys]
    # Variants with no finished run yet would empty the whole block: compare the others.
    block = matched_block(mine, games, [v for v in variants if any(s.variant == v for s in mine)])
    aggregates: dict[str, dict[str, Interval]] = {}
    improvement: dict[str, Interval] = {}
    if baseline is None:
        baseline = next((v for v in BASELINES if v in variants), BASELINE)
    if block.games:
        aggregates = aggregate_estimates(block.hns, reps, seed)
        if baseline in block.hns:
            improvement = improvement_estimates(block.hns, baseline, reps, seed)
    return PhaseAnalysis(phase, games, variants, planned, mine, block, aggregates, improvement, baseline)


# --------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------


def rliable_plots(analysis: PhaseAnalysis, out_dir: Path, reps: int = 1000) -> list[str]:
    """Interval estimates, probability of improvement and performance profile PNGs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from rliable import library, plot_utils

    if not analysis.aggregates:
        return []
    written = []
    variants = list(analysis.aggregates)
    points = {v: np.array([analysis.aggregates[v][m][0] for m in METRICS]) for v in variants}
    intervals = {
        v: np.array(
            [[analysis.aggregates[v][m][1] for m in METRICS], [analysis.aggregates[v][m][2] for m in METRICS]]
        )
        for v in variants
    }
    few = len(variants) < 5  # rliable's default layout puts the axis label over the ticks of a short figure
    fig, _ = plot_utils.plot_interval_estimates(
        points,
        intervals,
        metric_names=list(METRICS),
        algorithms=variants,
        xlabel="Human-normalised score",
        row_height=0.6 if few else 0.37,
        xlabel_y_coordinate=-0.3 if few else -0.1,
    )
    written.append(_save(fig, out_dir / f"aggregates-{analysis.phase}.png", plt))

    if analysis.improvement:
        base = analysis.baseline
        estimates = {f"{v},{base}": np.array([p]) for v, (p, _, _) in analysis.improvement.items()}
        cis = {f"{v},{base}": np.array([[lo], [hi]]) for v, (_, lo, hi) in analysis.improvement.items()}
        ax = plot_utils.plot_probability_of_improvement(estimates, cis, figsize=(5, 1 + 0.5 * len(estimates)))
        written.append(_save(ax.figure, out_dir / f"probability_of_improvement-{analysis.phase}.png", plt))

    tau = np.linspace(-0.1, max(1.0, max(float(np.max(x)) for x in analysis.block.hns.values())), 101)
    with seeded_numpy(0):
        profiles, profile_cis = library.create_performance_profile(analysis.block.hns, tau, reps=reps)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    plot_utils.plot_performance_profiles(
        profiles, tau, performance_profile_cis=profile_cis, ax=ax, xlabel="Human-normalised score (τ)",
        ylabel="Fraction of runs with score > τ", legend=True,
    )  # fmt: skip
    ax.legend(loc="upper right")
    written.append(_save(fig, out_dir / f"performance_profile-{analysis.phase}.png", plt))
    return written


def _save(fig: Any, path: Path, plt: Any) -> str:
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path.name


# --------------------------------------------------------------------------------------------
# results.md
# --------------------------------------------------------------------------------------------


def _num(x: float | None, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:.{digits}f}"


def _interval(x: Interval | None, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x[0]:.{digits}f} [{x[1]:.{digits}f}, {x[2]:.{digits}f}]"


def aggregate_table(analysis: PhaseAnalysis) -> list[str]:
    """Markdown rows: IQM / median / mean HNS with CIs and P(> no_aux) per variant."""
    if not analysis.aggregates:
        return ["No matched finished runs yet: no aggregates."]
    lines = [
        f"Block: {analysis.block.describe()} ({', '.join(analysis.block.games)}); 95% stratified-bootstrap "
        "intervals in brackets.",
        "",
        f"| variant | runs | IQM HNS | median HNS | mean HNS | P(variant > {analysis.baseline}) |",
        "|---|--:|--:|--:|--:|--:|",
    ]
    for v, agg in analysis.aggregates.items():
        runs = analysis.block.hns[v].size
        poi = "(baseline)" if v == analysis.baseline else _interval(analysis.improvement.get(v), 2)
        lines.append(
            f"| {v} | {runs} | {_interval(agg['IQM'])} | {_interval(agg['median'])} "
            f"| {_interval(agg['mean'])} | {poi} |"
        )
    return lines


def _reference_cell(score: tuple[float, float | None] | None) -> str:
    if score is None:
        return "-"
    mean, std = score
    return f"{mean:g}" if std is None else f"{mean:g} ± {std:g}"


def per_game_table(analysis: PhaseAnalysis) -> list[str]:
    """Markdown rows: raw score mean ± std (seeds) and mean HNS per game and variant."""
    refs = [f"PPO 100k ({name})" for name in PPO_100K_REFERENCES]
    head = "| game | random | human | " + " | ".join([*refs, *analysis.variants]) + " |"
    lines = [head, "|---|--:|--:|" + "--:|" * (len(refs) + len(analysis.variants))]
    for game in analysis.games:
        cells = []
        for v in analysis.variants:
            values = [s.score for s in analysis.scores if s.game == game and s.variant == v]
            if not values:
                cells.append("-")
                continue
            std = f" ± {np.std(values, ddof=1):.1f}" if len(values) > 1 else ""
            hns = human_normalized(game, float(np.mean(values)))
            cells.append(f"{np.mean(values):.1f}{std} (n={len(values)}; HNS {hns:.3f})")
        published = [_reference_cell(scores.get(game)) for scores, _ in PPO_100K_REFERENCES.values()]
        lines.append(
            f"| {game} | {RANDOM_SCORES[game]:g} | {HUMAN_SCORES[game]:g} | "
            + " | ".join([*published, *cells])
            + " |"
        )
    return lines


def results_markdown(
    meta: dict[str, Any], phases: dict[str, PhaseAnalysis], plots: dict[str, list[str]], best: dict[str, Any]
) -> str:
    """The whole results.md: status, aggregates, per-game tables, plots, setup."""
    v = meta["versions"]
    lines = [
        f"# Atari 100k: PPO with and without auxiliary heads ({meta['device_name']}, {meta['date']})",
        "",
        "Score of a run: mean unclipped return of `auxrl eval RUN --episodes 10` (whole games: no "
        "episodic-life cut, no reward clipping) on its final checkpoint at 100k agent steps (400k frames). "
        "HNS = (score - random) / (human - random), reference scores of the DQN literature as in rliable.",
        "",
        "## Status",
        "",
    ]
    for name, a in phases.items():
        done = len(a.planned) - len(a.missing)
        lines.append(f"- {name}: {done}/{len(a.planned)} runs finished")
    lines.append(
        f"- best heads variant for the final phase: {best.get('variant') or 'not chosen yet'} "
        f"({best.get('why', '')})"
    )
    for name in ("final", "screen"):
        if name not in phases:
            continue
        a = phases[name]
        title = "Final comparison" if name == "final" else "Screening"
        lines += [
            "",
            f"## {title}",
            "",
            *aggregate_table(a),
            "",
            "Per game (raw score mean ± sample std over seeds):",
            "",
        ]
        lines += per_game_table(a)
        if plots.get(name):
            lines += ["", " ".join(f"![{p}]({p})" for p in plots[name])]
    lines += ["", "## Not finished yet", ""]
    missing = [(name, key) for name, a in phases.items() for key in a.missing]
    lines += [f"- {name}: {'__'.join(map(str, key))}" for name, key in missing] or [
        "- nothing: every planned run is finished"
    ]
    lines += [
        "",
        "## Setup",
        "",
        f"- runs: {meta['started']} to {meta.get('last_scored', '?')} (last run scored; analysed "
        f"{meta['time']}); host: {meta['hostname']}; CPU: {meta['cpu']} "
        f"({meta['cores']} cores); device: {meta['device_name']}; parallel runs: {meta.get('jobs', '?')}",
        f"- config: `{meta['config']}` ({meta['config_summary']})",
        f"- versions: python {v['python']}, torch {v['torch']}, gymnasium {v['gymnasium']}, "
        f"ale-py {v['ale-py']}, auxrl {v['auxrl']}, rliable {meta.get('rliable', '?')}",
        *(f"- PPO 100k ({name}): {source}" for name, (_, source) in PPO_100K_REFERENCES.items()),
        "",
        "## Command",
        "",
        "```",
        *meta["commands"],
        "```",
        "",
    ]
    return "\n".join(lines)


def write_results(out_dir: Path, meta: dict[str, Any], phases: dict[str, PhaseAnalysis], plots, best) -> Path:
    """Write results.md and results.json into ``out_dir``; returns the results.md path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.md").write_text(results_markdown(meta, phases, plots, best))
    data = {
        "metadata": meta,
        "best_variant": best,
        "reference_scores": REFERENCE_SOURCE,
        "phases": {name: a.to_json() for name, a in phases.items()},
        "plots": plots,
    }
    (out_dir / "results.json").write_text(json.dumps(data, indent=2) + "\n")
    return out_dir / "results.md"
