"""One torso, three Atari games: multi-task PPO with and without PopArt against single-task PPO,
and a new game learned head-only on the multi-task torso against from scratch (issue 26).

Every run is ``configs/atari100k.yaml`` without auxiliary heads (PPO alone), 100k agent steps
per game (8 envs per game, 32 steps per rollout: the same number of updates in every run, a
multi-task update reading three games' rollouts):

* ``single``: one run per game (``GAMES`` and the transfer game ``NEW_GAME``);
* ``mt_popart``: ``env.tasks`` = the three games, a policy head and a PopArt value output per
  game (``model.popart=true``), 300k steps in all;
* ``mt_plain``: the same, one plain value output per game (``model.popart=false``);
* ``transfer_head``: ``NEW_GAME`` with the ``mt_popart`` run of the same seed as its torso,
  frozen (``model.init_from=RUN model.init_modules=[torso] model.freeze=[torso]``): only the new
  game's policy and value heads learn. Its baseline is ``single`` on that game (from scratch).

Rewards are clipped in every run (the config's ``env.reward_clip``), as in the single-task runs,
so PopArt corrects the games' return scales (episode lengths, reward frequency) but not their
raw reward sizes. Scores: ``auxrl eval RUN --episodes 10`` (whole games, unclipped) per game;
HNS and rliable's aggregates over (game, seed) as in benchmarks/atari100k.py, whose runner this
reuses: re-running the command skips finished runs and resumes interrupted ones.

Examples::

    nohup python benchmarks/multitask.py --jobs 2 > multitask.log 2>&1 &
    python benchmarks/multitask.py --analyze
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import subprocess
import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling modules

import atari100k as suite  # noqa: E402
import atari100k_analysis as analysis  # noqa: E402
from learning import REPO_ROOT, setup_info  # noqa: E402

CONFIG = "atari100k"
# Three games PPO makes progress on within 100k steps (benchmarks/results/atari100k-cpu-2026-11-30),
# with different action sets (3, 9, 18 actions) and reward patterns: one point per crossing
# (Freeway), frequent small rewards (MsPacman), +-1 per punch (Boxing).
GAMES = ("Freeway", "MsPacman", "Boxing")
NEW_GAME = "Seaquest"
SEEDS = (1, 2, 3)
STEPS_PER_GAME = 100_000
MULTI = ("mt_popart", "mt_plain")
VARIANTS = ("single", *MULTI)
COMMON = ("aux.enabled=false",)
_SPS = re.compile(r"SPS (\d+)")
_TASK_EVAL = re.compile(r"^ALE/(?P<game>\w+)-v5: .*episodes, score", re.MULTILINE)


@dataclass(frozen=True)
class Spec:
    """One run: ``game`` for single-game runs, None for the multi-task ones."""

    variant: str
    seed: int
    game: str | None = None
    per_game: int = STEPS_PER_GAME
    phase: str = "multitask"

    @property
    def name(self) -> str:
        return (
            f"{self.variant}__{self.seed}"
            if self.game is None
            else f"{self.game}__{self.variant}__{self.seed}"
        )

    @property
    def games(self) -> tuple[str, ...]:
        return GAMES if self.game is None else (self.game,)

    @property
    def steps(self) -> int:
        return self.per_game * len(self.games)

    @property
    def kind(self) -> str:  # the runner's ETA: seconds per step of runs of this length
        return str(self.steps)

    def source(self, runs_dir: Path) -> Path | None:
        """The run whose torso this one starts from (transfer only)."""
        return runs_dir / f"mt_popart__{self.seed}" if self.variant == "transfer_head" else None

    def overrides(self, runs_dir: Path) -> list[str]:
        first = f"env.id=ALE/{self.games[0]}-v5"
        out = [*COMMON, first, f"seed={self.seed}", f"name={self.variant}", f"ppo.total_steps={self.steps}"]
        if self.game is None:
            tasks = ",".join(f"ALE/{g}-v5" for g in GAMES)
            out += [f"env.tasks=[{tasks}]", f"model.popart={str(self.variant == 'mt_popart').lower()}"]
        if self.variant == "transfer_head":
            source = self.source(runs_dir)
            out += [f"model.init_from={source}", "model.init_modules=[torso]", "model.freeze=[torso]"]
        return out


def plan(seeds: Sequence[int], per_game: int = STEPS_PER_GAME) -> list[Spec]:
    """Seed-major, so a stopped benchmark has whole seeds; a transfer run after its torso's run."""
    specs: list[Spec] = []
    for seed in seeds:
        specs += [Spec("single", seed, g, per_game) for g in (*GAMES, NEW_GAME)]
        specs += [Spec(v, seed, None, per_game) for v in MULTI]
        specs.append(Spec("transfer_head", seed, NEW_GAME, per_game))
    return specs


class _BoundSpec:
    """A Spec with the runner's view of it (overrides resolved against the results directory)."""

    def __init__(self, spec: Spec, runs_dir: Path) -> None:
        self.spec, self._runs_dir = spec, runs_dir
        self.name, self.kind, self.game = spec.name, spec.kind, spec.game
        self.variant, self.seed, self.phase = spec.variant, spec.seed, spec.phase

    def overrides(self) -> list[str]:
        return self.spec.overrides(self._runs_dir)


class Runner(suite.Runner):
    """The Atari 100k runner with runs of several lengths, per-game scores and transfer runs that
    wait for their torso's run; no probes (not what this benchmark asks)."""

    probe = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.durations = defaultdict(list)

    def steps_of(self, spec: Any) -> int:
        return spec.spec.steps

    def ready(self, spec: Any) -> bool:
        source = spec.spec.source(self.runs_dir)
        if source is None:
            return True
        steps = spec.spec.per_game * len(GAMES)
        return (
            suite.run_status(source, steps, probe=False) == "done"
            and suite.checkpoint_step(source) is not None
        )

    def status(self, spec: Any) -> suite.Status:
        """As the suite's, except that an ``mt_popart`` run scored in an earlier session whose
        checkpoint is gone (checkpoints are not committed) trains again while its seed's transfer
        run, which starts from it, is not done."""
        status = super().status(spec)
        s: Spec = spec.spec
        if (
            status == "done"
            and s.variant == "mt_popart"
            and suite.checkpoint_step(self.runs_dir / s.name) is None
        ):
            transfer = Spec("transfer_head", s.seed, NEW_GAME, s.per_game)
            if suite.run_status(self.runs_dir / transfer.name, transfer.steps, probe=False) != "done":
                return "fresh"
        return status

    def record(self, job: suite.Job) -> tuple[dict[str, Any], str]:
        text = job.log.read_text()
        spec: Spec = job.spec.spec
        scores = parse_task_scores(text) if spec.game is None else {spec.game: suite.parse_eval_output(text)}
        missing = [g for g in spec.games if g not in scores]
        if missing:
            raise ValueError(f"no score of {missing} in the auxrl eval output")
        result: dict[str, Any] = {
            "score": float(np.mean([s["score"] for s in scores.values()])),
            "scores": {g: s["score"] for g, s in scores.items()},
            "games": list(spec.games),
            "variant": spec.variant,
            "seed": spec.seed,
            "sps": train_sps(self.logs_dir / f"{spec.name}.train.log"),
        }
        said = ", ".join(f"{g} {s['score']:.1f}" for g, s in scores.items())
        return result, f"scores {said}"

    def _eta(self, todo: Sequence[Any]) -> str:
        if not todo:
            return "nothing left"
        measured = [(sec, int(kind)) for kind, secs in self.durations.items() for sec in secs]
        per_step = sum(s for s, _ in measured) / sum(n for _, n in measured) if measured else 540.0 / 1e5
        seconds = per_step * sum(s.spec.steps for s in todo) / max(1, self.jobs)
        basis = f"{per_step * 1e5 / 60:.1f} min per 100k steps" if measured else "estimated"
        return f"~{seconds / 3600:.1f} h for {len(todo)} runs ({basis})"


def parse_task_scores(text: str) -> dict[str, dict[str, float]]:
    """Per-game scores of a multi-task ``auxrl eval`` (one summary line per game)."""
    out = {}
    for line in text.splitlines():
        m = _TASK_EVAL.match(line)
        if m:
            out[m["game"]] = suite.parse_eval_output(line)
    return out


def train_sps(log: Path) -> float | None:
    """The last SPS the run's training printed (all of its games' steps per second)."""
    try:
        found = _SPS.findall(log.read_text())
    except OSError:
        return None
    return float(found[-1]) if found else None


# --------------------------------------------------------------------------------------------
# Analysis
# --------------------------------------------------------------------------------------------


def collect_scores(runs_dir: Path) -> list[analysis.Score]:
    """One Score per (game, variant, seed): a multi-task run gives one per game."""
    scores = []
    for run_dir in sorted(runs_dir.glob("*__*")):
        data = suite.read_eval(run_dir)
        if data is None or "scores" not in data:
            continue
        for game, score in data["scores"].items():
            scores.append(analysis.Score(game, data["variant"], int(data["seed"]), float(score)))
    return scores


def write_curves(runs_dir: Path) -> None:
    """``curve.json`` of every scored run with events: per game, (steps of that game, return)."""
    from auxrl.plot import read_scalars

    for run_dir in sorted(runs_dir.glob("*__*")):
        data = suite.read_eval(run_dir)
        if (
            (run_dir / "curve.json").is_file()
            or data is None
            or not any(run_dir.glob("events.out.tfevents.*"))
        ):
            continue
        games, curves = data.get("games", []), {}
        for game in games:
            tag = "charts/episodic_return" if len(games) == 1 else f"charts/{game}/episodic_return"
            try:
                steps, returns = read_scalars(run_dir, tag)
            except (OSError, ValueError):
                continue
            # The global step counts every game's env steps; each game has an equal share.
            curves[game] = {"game_step": (steps / len(games)).tolist(), "episodic_return": returns.tolist()}
        suite.write_json(run_dir / "curve.json", curves)


def _run_table(runs_dir: Path) -> list[str]:
    rows = ["| run | steps | SPS (all games) | minutes | scores |", "|---|--:|--:|--:|---|"]
    for run_dir in sorted(runs_dir.glob("*__*")):
        data = suite.read_eval(run_dir)
        if data is None or "scores" not in data:
            continue
        scores = ", ".join(f"{g} {s:.1f}" for g, s in data["scores"].items())
        sps = "n/a" if data.get("sps") is None else f"{data['sps']:.0f}"
        rows.append(f"| {run_dir.name} | {data['step']:,} | {sps} | {data['seconds'] / 60:.1f} | {scores} |")
    return rows


def _sps_summary(runs_dir: Path) -> dict[str, list[float]]:
    out: dict[str, list[float]] = defaultdict(list)
    for run_dir in sorted(runs_dir.glob("*__*")):
        data = suite.read_eval(run_dir)
        if data and data.get("sps") is not None:
            out[data["variant"]].append(float(data["sps"]))
    return dict(out)


def analyze(out: Path, info: dict[str, Any], reps: int, plots: bool = True) -> Path:
    """results.md and results.json of everything finished under ``out``."""
    runs_dir = out / "runs"
    per_game = int(info.get("steps_per_game", STEPS_PER_GAME))
    write_curves(runs_dir)
    scores = collect_scores(runs_dir)
    seeds = sorted({int(s) for s in info.get("seeds", SEEDS)})
    main = analysis.analyze_phase(
        "multitask",
        [(g, v, s) for g in GAMES for v in VARIANTS for s in seeds],
        scores,
        reps,
        baseline="single",
    )
    transfer = analysis.analyze_phase(
        "transfer", [(NEW_GAME, v, s) for v in ("single", "transfer_head") for s in seeds], scores, reps,
        baseline="single",
    )  # fmt: skip
    popart_vs_plain = {}
    if all(v in main.block.hns for v in MULTI):
        pair = {v: main.block.hns[v] for v in MULTI}
        popart_vs_plain = analysis.improvement_estimates(pair, "mt_plain", reps)
    sps = _sps_summary(runs_dir)
    written = []
    if plots:
        for a in (main, transfer):
            if a.aggregates:
                written += analysis.rliable_plots(a, out, reps)
    lines = [
        "# One torso, three Atari games: multi-task PPO with and without PopArt "
        f"({info.get('device', 'cpu')}, {dt.date.today().isoformat()})",
        "",
        f"Runs of `configs/{CONFIG}.yaml` without auxiliary heads (`aux.enabled=false`), {per_game:,} "
        f"agent steps per game (8 envs per game, 32-step rollouts: every run makes the same "
        f"{per_game // 256} updates). `single`: one game per run; `mt_popart` / `mt_plain`: "
        f"{', '.join(GAMES)} in one run (`env.tasks`), a policy head per game and a value output per "
        f"game with / without PopArt; `transfer_head`: {NEW_GAME} with the `mt_popart` torso of the same "
        "seed, frozen (heads only). Rewards clipped in training in every run. Score: mean unclipped "
        "return of `auxrl eval RUN --episodes 10` (whole games) per game at the final checkpoint; HNS as "
        "in the Atari 100k suite.",
        "",
        "Command: " + "; ".join(f"`{c}`" for c in info.get("commands", [])),
        "",
        f"Machine: {info.get('cpu', '?')}, {info.get('cores', '?')} cores, {info.get('jobs', '?')} runs at a "
        "time with 1 torch thread each; auxrl " + str(info.get("commit", "?")) + ".",
        "",
        "## Multi-task against single-task (the three games)",
        "",
        *analysis.aggregate_table(main),
        "",
    ]
    if popart_vs_plain:
        p = popart_vs_plain["mt_popart"]
        lines += [f"P(mt_popart > mt_plain) = {p[0]:.2f} [{p[1]:.2f}, {p[2]:.2f}]", ""]
    lines += ["Per game (raw score mean ± sample std over seeds):", "", *analysis.per_game_table(main), ""]
    lines += [f"## Transfer: {NEW_GAME} head-only on the multi-task torso against from scratch", ""]
    lines += [*analysis.aggregate_table(transfer), "", *analysis.per_game_table(transfer), ""]
    lines += ["## Throughput", ""]
    lines += [
        "Steps per second of each run's training (all its games' env steps; the last SPS it printed; two "
        "runs at a time on the machine above, so figures are per run under that load):",
        "",
        "| variant | runs | SPS mean | SPS range |",
        "|---|--:|--:|--:|",
    ]
    for variant, values in sps.items():
        lines.append(
            f"| {variant} | {len(values)} | {np.mean(values):.0f} | {min(values):.0f}-{max(values):.0f} |"
        )
    lines += ["", "## Runs", "", *_run_table(runs_dir), ""]
    missing = main.missing + transfer.missing
    lines += ["## Not finished yet", ""]
    lines += [
        f"- {', '.join('__'.join(map(str, k)) for k in missing)}"
        if missing
        else "- nothing: every planned run is scored"
    ]
    lines += ["", *(f"![{p}]({p})" for p in written), ""]
    (out / "results.md").write_text("\n".join(lines))
    suite.write_json(
        out / "results.json",
        {
            "info": info,
            "multitask": main.to_json(),
            "transfer": transfer.to_json(),
            "p_mt_popart_over_mt_plain": popart_vs_plain.get("mt_popart"),
            "sps": sps,
        },
    )
    return out / "results.md"


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    p.add_argument("--steps-per-game", type=int, default=STEPS_PER_GAME, help="agent steps per game and run")
    p.add_argument("--jobs", type=int, default=2, help="runs at a time (1 torch thread each)")
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--out-dir", type=Path, default=None, help="default: benchmarks/results/multitask-<device>-<date>"
    )
    p.add_argument("--analyze", action="store_true", help="only write results.md / results.json")
    p.add_argument("--reps", type=int, default=2000, help="bootstrap resamples")
    p.add_argument("--no-plots", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.jobs < 1 or args.steps_per_game < 256 or any(s < 0 for s in args.seeds):
        print(
            "multitask.py: --jobs must be >= 1, --steps-per-game >= 256 and --seeds non-negative, "
            "e.g. --jobs 2 --seeds 1 2 3",
            file=sys.stderr,
        )
        return 2
    slug = suite.device_slug(args.device)
    if args.out_dir is None:
        existing = sorted((REPO_ROOT / "benchmarks" / "results").glob(f"multitask-{slug}-*/info.json"))
        args.out_dir = (
            existing[-1].parent
            if existing
            else REPO_ROOT / "benchmarks" / "results" / f"multitask-{slug}-{dt.date.today()}"
        )
    out: Path = args.out_dir.resolve()
    out.mkdir(parents=True, exist_ok=True)
    try:
        info = json.loads((out / "info.json").read_text())
    except (OSError, ValueError):
        info = {}
    if info.get("steps_per_game", args.steps_per_game) != args.steps_per_game and not args.analyze:
        print(
            f"multitask.py: {out} holds runs of --steps-per-game {info['steps_per_game']}; use that, or "
            "another --out-dir.",
            file=sys.stderr,
        )
        return 2
    command = "python benchmarks/multitask.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if not args.analyze:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True
        ).stdout.strip()
        setup = setup_info(args.device)
        info.update(
            device=setup["device_name"], cpu=setup["cpu"], cores=setup["cores"], jobs=args.jobs,
            commit=info.get("commit", commit), seeds=sorted({*info.get("seeds", []), *args.seeds}),
            steps_per_game=args.steps_per_game,
        )  # fmt: skip
        if command not in info.setdefault("commands", []):
            info["commands"].append(command)
        suite.write_json(out / "info.json", info)
        runner = Runner(out, CONFIG, [], args.steps_per_game, args.device, args.jobs, threads=1)
        specs = [_BoundSpec(s, out / "runs") for s in plan(args.seeds, args.steps_per_game)]
        rc = runner.run(specs)
    else:
        rc = 0
    print(f"[multitask] results: {analyze(out, info, args.reps, plots=not args.no_plots)}", flush=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
