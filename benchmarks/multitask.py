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

Rewards are clipped in every run (the config's ``env.reward_clip``), so PopArt corrects the
games' return scales (episode lengths, reward frequency) but not their raw reward sizes.

The runs are a plan for ``auxrl study``'s runner (auxrl/study/runner.py): each is trained, then
scored by ``python -m auxrl.study.score`` (10 whole, unclipped games per game at the final
checkpoint; a multi-task run's games of each of its tasks) into its ``score.json``; re-running
the command skips finished runs and resumes interrupted ones, and a transfer run starts once its
torso's run is done. The aggregates are the study report's (auxrl/study/analysis.py: rliable's
IQM and P(improvement) with stratified-bootstrap intervals over (game, seed), HNS).

Examples::

    nohup python benchmarks/multitask.py --jobs 2 > multitask.log 2>&1 &
    python benchmarks/multitask.py --analyze
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import re
import subprocess
import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from auxrl.configfile import resolve_config_path
from auxrl.study import analysis
from auxrl.study.analysis import Interval, RunResult
from auxrl.study.runner import run_study
from auxrl.study.scores import atari_game, human_normalized
from auxrl.study.spec import Run
from auxrl.study.state import checkpoint_step, read_json, read_score, run_status, write_json

sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling modules

from learning import REPO_ROOT, setup_info  # noqa: E402

CONFIG = "atari100k"
# Three games PPO makes progress on within 100k steps (benchmarks/results/atari100k-cpu-2026-11-30),
# with different action sets (3, 9, 18 actions) and reward patterns: one point per crossing
# (Freeway), frequent small rewards (MsPacman), +-1 per punch (Boxing).
GAMES = ("Freeway", "MsPacman", "Boxing")
NEW_GAME = "Seaquest"
SEEDS = (1, 2, 3)
STEPS_PER_GAME = 100_000
EVAL_EPISODES = 10
MULTI = ("mt_popart", "mt_plain")
VARIANTS = ("single", *MULTI)
COMMON = ("aux.enabled=false",)
_SPS = re.compile(r"SPS (\d+)")


def env_id(game: str) -> str:
    return f"ALE/{game}-v5"


@dataclass(frozen=True)
class MultitaskRun:
    """One run: ``game`` for single-game runs, None for the multi-task ones."""

    variant: str
    seed: int
    game: str | None = None
    per_game: int = STEPS_PER_GAME

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
    def env(self) -> str:  # score.json's env label
        return ",".join(env_id(g) for g in self.games)

    @property
    def steps(self) -> int:
        return self.per_game * len(self.games)

    def source(self, runs_dir: Path) -> Path | None:
        """The run whose torso this one starts from (transfer only)."""
        return runs_dir / f"mt_popart__{self.seed}" if self.variant == "transfer_head" else None

    def overrides(self, runs_dir: Path) -> list[str]:
        out = [*COMMON, f"env.id={env_id(self.games[0])}", f"seed={self.seed}", f"name={self.variant}"]
        out.append(f"ppo.total_steps={self.steps}")
        if self.game is None:
            tasks = ",".join(env_id(g) for g in GAMES)
            out += [f"env.tasks=[{tasks}]", f"model.popart={str(self.variant == 'mt_popart').lower()}"]
        source = self.source(runs_dir)
        if source is not None:
            out += [f"model.init_from={source}", "model.init_modules=[torso]", "model.freeze=[torso]"]
        return out


class MultitaskPlan:
    """The benchmark's runs as a plan for auxrl study's runner (see ``auxrl.study.runner.Plan``)."""

    eval_episodes = EVAL_EPISODES

    def __init__(self, seeds: Sequence[int], per_game: int = STEPS_PER_GAME) -> None:
        self.seeds, self.per_game = list(seeds), per_game

    def runs(self) -> list[MultitaskRun]:
        """Seed-major, so a stopped benchmark has whole seeds; a transfer run after its torso's run."""
        runs: list[MultitaskRun] = []
        for seed in self.seeds:
            runs += [MultitaskRun("single", seed, g, self.per_game) for g in (*GAMES, NEW_GAME)]
            runs += [MultitaskRun(v, seed, None, self.per_game) for v in MULTI]
            runs.append(MultitaskRun("transfer_head", seed, NEW_GAME, self.per_game))
        return runs

    def describe(self) -> str:
        return (
            f"{len(GAMES)} games x {', '.join(VARIANTS)}, transfer to {NEW_GAME}, {len(self.seeds)} seeds, "
            f"{self.per_game:,} steps per game"
        )

    def steps_of(self, run: MultitaskRun) -> int:
        return run.steps

    def train_args(self, run: MultitaskRun, runs_dir: Path) -> list[str]:
        return [str(resolve_config_path(CONFIG)), *run.overrides(runs_dir)]

    def ready(self, run: MultitaskRun, runs_dir: Path) -> bool:
        """A transfer run waits for its torso's run, trained and with its checkpoint at hand
        (checkpoints are not committed: a torso run scored in another session's checkout is
        missing here; train it again with ``rm -r`` of its directory)."""
        source = run.source(runs_dir)
        if source is None:
            return True
        return (
            run_status(source, self.per_game * len(GAMES)) == "done" and checkpoint_step(source) is not None
        )

    def probe_frames(self, run: MultitaskRun) -> int | None:
        return None  # not what this benchmark asks


def adopt_suite_scores(runs_dir: Path) -> None:
    """Runs scored by this benchmark's first runner (benchmarks/atari100k.py's, until 2026-12-05:
    ``auxrl eval RUN --episodes 10``, eval seed 12345, per-game means in ``eval.json``) get the
    same scores as a ``score.json``, so the runner counts them done and the analysis reads them."""
    for old in sorted(runs_dir.glob("*/eval.json")):
        data, new = read_json(old), old.with_name("score.json")
        if new.exists() or data is None or not isinstance(data.get("scores"), dict):
            continue
        tasks = {env_id(g): {"score": float(x)} for g, x in data["scores"].items()}
        adopted = {
            "env": ",".join(tasks), "variant": data.get("variant"), "seed": data.get("seed"),
            "score": data["score"], "episodes": EVAL_EPISODES * len(tasks), "step": data["step"],
            "eval_seed": 12345, "sps": data.get("sps"), "seconds": data.get("seconds"),
            "date": data.get("date"),
            **({"task_scores": tasks} if len(tasks) > 1 else {}),
            "scored_by": "auxrl eval RUN --episodes 10 (benchmarks/atari100k.py's runner, eval.json)",
        }  # fmt: skip
        write_json(new, adopted)


# --------------------------------------------------------------------------------------------
# Analysis
# --------------------------------------------------------------------------------------------


def train_sps(logs_dir: Path, name: str) -> float | None:
    """The last SPS the run's training printed (all of its games' steps per second)."""
    for log in (logs_dir / f"{name}.log", logs_dir / f"{name}.train.log"):  # the runner's, the old runner's
        try:
            found = _SPS.findall(log.read_text(errors="replace"))
        except OSError:
            continue
        if found:
            return float(found[-1])
    return None


def finished(out: Path, plan: MultitaskPlan) -> list[tuple[MultitaskRun, dict[str, Any]]]:
    """The scored runs with their score.json; their training SPS is kept in it (logs are not
    committed), read from the log the first time."""
    done = []
    for run in plan.runs():
        run_dir = out / "runs" / run.name
        data = read_score(run_dir)
        if data is None or run_status(run_dir, run.steps) != "done":
            continue
        if data.get("sps") is None:
            data["sps"] = train_sps(out / "logs", run.name)
            if data["sps"] is not None:
                write_json(run_dir / "score.json", data)
        done.append((run, data))
    return done


def per_game_results(done: list[tuple[MultitaskRun, dict[str, Any]]]) -> list[RunResult]:
    """One result per (game, variant, seed): a multi-task run gives one per game."""
    results = []
    for run, data in done:
        tasks = data.get("task_scores") or {run.env: {"score": data["score"], "std": data.get("std")}}
        for env, task in tasks.items():
            score, std = float(task["score"]), task.get("std")
            hns = human_normalized(atari_game(env) or env, score)
            std = math.nan if std is None else float(std)
            results.append(
                RunResult(Run(env, run.variant, run.seed), score, hns, std, EVAL_EPISODES, data["step"])
            )
    return results


def _cell(x: Interval | None) -> str:
    return "n/a" if x is None else f"{x[0]:.3f} [{x[1]:.3f}, {x[2]:.3f}]"


def compare(
    results: list[RunResult], games: Sequence[str], variants: Sequence[str], reps: int
) -> dict[str, Any]:
    """rliable's aggregates of ``variants`` on ``games`` (matched runs) and P(v > variants[0])."""
    envs = [env_id(g) for g in games]
    block = analysis.matched_block(results, envs, list(variants))
    if not block.envs:
        return {"block": block, "aggregates": {}, "improvement": {}}
    return {
        "block": block,
        "aggregates": analysis.aggregate_estimates(block.scores, gap=True, reps=reps),
        "improvement": analysis.improvement_estimates(block.scores, variants[0], reps=reps),
    }


def aggregate_table(c: dict[str, Any], baseline: str) -> list[str]:
    block = c["block"]
    if not block.envs:
        return ["No matched runs yet."]
    lines = [
        f"HNS over {block.describe()} (95% stratified-bootstrap CIs):",
        "",
        f"| variant | IQM | median | mean | optimality gap | P(variant > {baseline}) |",
        "|---|---|---|---|---|---|",
    ]
    for v, agg in c["aggregates"].items():
        cells = [_cell(agg[m]) for m in analysis.METRICS]
        lines.append(
            f"| {v} | {' | '.join(cells)} | {_cell(c['improvement'].get(v)) if v != baseline else '-'} |"
        )
    return lines


def per_game_table(results: list[RunResult], games: Sequence[str], variants: Sequence[str]) -> list[str]:
    lines = ["| game | " + " | ".join(variants) + " |", "|---|" + "--:|" * len(variants)]
    for game in games:
        cells = []
        for v in variants:
            xs = [r.score for r in results if r.run.env == env_id(game) and r.run.variant == v]
            sd = f" ± {np.std(xs, ddof=1):.1f}" if len(xs) > 1 else ""
            cells.append(f"{np.mean(xs):.1f}{sd} (n={len(xs)})" if xs else "-")
        lines.append(f"| {game} | " + " | ".join(cells) + " |")
    return lines


def _json(c: dict[str, Any]) -> dict[str, Any]:
    block = c["block"]
    return {
        "envs": block.envs,
        "seeds": block.seeds,
        "hns": {v: x.tolist() for v, x in block.scores.items()},
        "aggregates": {v: {m: list(x) for m, x in agg.items()} for v, agg in c["aggregates"].items()},
        "p_improvement": {v: list(x) for v, x in c["improvement"].items()},
    }


def analyze(out: Path, info: dict[str, Any], reps: int) -> Path:
    """results.md and results.json of everything finished under ``out``."""
    per_game = int(info.get("steps_per_game", STEPS_PER_GAME))
    plan = MultitaskPlan(info.get("seeds", SEEDS), per_game)
    done = finished(out, plan)
    results = per_game_results(done)
    main = compare(results, GAMES, VARIANTS, reps)
    popart = compare(results, GAMES, ("mt_plain", "mt_popart"), reps)["improvement"].get("mt_popart")
    transfer = compare(results, (NEW_GAME,), ("single", "transfer_head"), reps)
    sps: dict[str, list[float]] = defaultdict(list)
    for run, data in done:
        if data.get("sps") is not None:
            sps[run.variant].append(float(data["sps"]))
    scored = {run.name for run, _ in done}
    missing = [run.name for run in plan.runs() if run.name not in scored]
    lines = [
        "# One torso, three Atari games: multi-task PPO with and without PopArt "
        f"({info.get('device', 'cpu')}, {dt.date.today().isoformat()})",
        "",
        f"Runs of `configs/{CONFIG}.yaml` without auxiliary heads (`aux.enabled=false`), {per_game:,} "
        f"agent steps per game (8 envs per game, 32-step rollouts: every run makes the same "
        f"{per_game // 256} updates). `single`: one game per run; `mt_popart` / `mt_plain`: "
        f"{', '.join(GAMES)} in one run (`env.tasks`), a policy head per game and a value output per "
        f"game with / without PopArt; `transfer_head`: {NEW_GAME} with the `mt_popart` torso of the same "
        "seed, frozen (heads only). Rewards clipped in training in every run. Score: the mean unclipped "
        f"return of {EVAL_EPISODES} whole games per game at the final checkpoint; HNS against the random "
        "and human references of auxrl/study/scores.py.",
        "",
        "Command: " + "; ".join(f"`{c}`" for c in info.get("commands", [])),
        "",
        f"Machine: {info.get('cpu', '?')}, {info.get('cores', '?')} cores, {info.get('jobs', '?')} runs at a "
        f"time with 1 torch thread each; auxrl {info.get('commit', '?')}.",
        "",
        "## Multi-task against single-task (the three games)",
        "",
        *aggregate_table(main, "single"),
        "",
        f"P(mt_popart > mt_plain) = {_cell(popart)}",
        "",
        "Per game (raw score, mean ± sample std over seeds):",
        "",
        *per_game_table(results, GAMES, VARIANTS),
        "",
        f"## Transfer: {NEW_GAME} head-only on the multi-task torso against from scratch",
        "",
        *aggregate_table(transfer, "single"),
        "",
        *per_game_table(results, (NEW_GAME,), ("single", "transfer_head")),
        "",
        "## Throughput",
        "",
        "Steps per second of each run's training (all its games' env steps; the last SPS it printed; two "
        "runs at a time on the machine above, so the figures are per run under that load):",
        "",
        "| variant | runs | SPS mean | SPS range |",
        "|---|--:|--:|--:|",
        *(f"| {v} | {len(xs)} | {np.mean(xs):.0f} | {min(xs):.0f}-{max(xs):.0f} |" for v, xs in sps.items()),
        "",
        "## Runs",
        "",
        "| run | step | SPS | score (per game) |",
        "|---|--:|--:|---|",
    ]
    for run, data in done:
        tasks = data.get("task_scores") or {run.env: {"score": data["score"]}}
        games = ", ".join(f"{atari_game(e)} {t['score']:.1f}" for e, t in tasks.items())
        rate = "n/a" if data.get("sps") is None else f"{data['sps']:.0f}"
        lines.append(f"| {run.name} | {data['step']:,} | {rate} | {games} |")
    lines += ["", "## Not finished yet", "", f"- {', '.join(missing)}" if missing else "- nothing"]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    write_json(
        out / "results.json",
        {
            "info": info,
            "multitask": _json(main),
            "transfer": _json(transfer),
            "p_mt_popart_over_mt_plain": popart,
            "sps": sps,
            "missing": missing,
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
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    p.add_argument(
        "--out-dir", type=Path, default=None, help="default: benchmarks/results/multitask-<device>-<date>"
    )
    p.add_argument("--analyze", action="store_true", help="only write results.md / results.json")
    p.add_argument("--reps", type=int, default=2000, help="bootstrap resamples")
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
    results = REPO_ROOT / "benchmarks" / "results"
    if args.out_dir is None:
        existing = sorted(results.glob(f"multitask-{args.device}-*/info.json"))
        args.out_dir = (
            existing[-1].parent if existing else results / f"multitask-{args.device}-{dt.date.today()}"
        )
    out: Path = args.out_dir.resolve()
    out.mkdir(parents=True, exist_ok=True)
    info = read_json(out / "info.json") or {}
    if info.get("steps_per_game", args.steps_per_game) != args.steps_per_game and not args.analyze:
        print(
            f"multitask.py: {out} holds runs of --steps-per-game {info['steps_per_game']}; use that, or "
            "another --out-dir.",
            file=sys.stderr,
        )
        return 2
    adopt_suite_scores(out / "runs")
    rc = 0
    if not args.analyze:
        command = "python benchmarks/multitask.py " + " ".join(argv if argv is not None else sys.argv[1:])
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
        write_json(out / "info.json", info)
        plan = MultitaskPlan(args.seeds, args.steps_per_game)
        rc = run_study(plan, out, jobs=args.jobs, device=args.device, command=command)
    print(f"[multitask] results: {analyze(out, info, args.reps)}", flush=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
