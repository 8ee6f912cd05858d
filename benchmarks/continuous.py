"""Continuous control at CleanRL's budget: auxrl's returns beside CleanRL's published ones.

Tasks (1M env steps each, seeds 1 2 3 by default):

* ``halfcheetah``, ``hopper``: ``configs/halfcheetah.yaml`` / ``hopper.yaml``, CleanRL's
  ``ppo_continuous_action.py`` settings. They run on the MuJoCo v4 envs by default, the version of
  CleanRL's published table (``--env-version v5`` runs the shipped configs' v5 envs instead);
* ``pendulum``: ``configs/pendulum.yaml`` (CleanRL publishes no PPO figure for Pendulum-v1).

The runs are a plan for ``auxrl study``'s runner (auxrl/study/runner.py; ``--jobs`` at a time,
one torch thread each): each is a normal ``auxrl train`` run directory under
``<out-dir>/runs/<task>__<seed>/``, scored by ``python -m auxrl.study.score`` (10 whole episodes,
sampled actions, frozen observation statistics) into its ``score.json`` beside ``curve.json``
(its training returns), from which the analysis takes the mean return of its last 20 training
episodes (what CleanRL's table reports: the episodic return of training, stochastic policy).
Re-running the same command continues: finished runs are skipped, runs with a checkpoint continue
with ``auxrl train --resume`` (one every 100k steps), a run directory without a checkpoint starts
over; Ctrl-C or SIGTERM makes the training processes save a checkpoint and exit. Each invocation
ends by writing ``results.md`` / ``results.json`` and one learning-curve plot per task for
whatever is finished, and what is not finished yet; ``--analyze`` does only that. A finished
run's ``score.json``, ``curve.json`` and config are committed (its checkpoints stay local), so a
fresh clone skips it too.

Examples::

    pip install -e ".[mujoco,plot]"
    python benchmarks/continuous.py --jobs 2                       # 9 runs: 3 tasks x 3 seeds
    python benchmarks/continuous.py --tasks pendulum --seeds 1     # one run
    nohup python benchmarks/continuous.py --jobs 2 > continuous.log 2>&1 &
"""

from __future__ import annotations

import argparse
import datetime as dt
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling modules, also when imported by tests

from learning import REPO_ROOT, final_return, make_plot, mean_std, setup_info, use_checkout  # noqa: E402

use_checkout()

from auxrl.configfile import resolve_config_path  # noqa: E402
from auxrl.study.runner import run_study  # noqa: E402
from auxrl.study.state import read_json, read_score, run_status, write_json  # noqa: E402

# CleanRL, ppo_continuous_action.py, "MuJoCo v4" table (openrlbenchmark tag pr-424), episodic
# return after 1M steps, mean +- std over seeds: https://docs.cleanrl.dev/rl-algorithms/ppo/
# (section ppo_continuous_action.py, "Experiment results"; copy retrieved 2026-04-06).
CLEANRL_SOURCE = (
    "CleanRL docs, ppo_continuous_action.py, MuJoCo v4 results (tag pr-424): "
    "https://docs.cleanrl.dev/rl-algorithms/ppo/#ppo_continuous_actionpy"
)
CLEANRL_PUBLISHED = {
    "HalfCheetah-v4": (1442.64, 46.03),
    "Hopper-v4": (2382.86, 271.74),
    "Walker2d-v4": (2287.95, 571.78),
}


@dataclass(frozen=True)
class Task:
    name: str  # also the shipped config's name
    env_ids: dict[str, str]  # env version -> env id
    steps: int = 1_000_000

    def env_id(self, version: str) -> str:
        return self.env_ids.get(version, self.env_ids["v5"])


TASKS = {
    "pendulum": Task("pendulum", {"v5": "Pendulum-v1"}),
    "halfcheetah": Task("halfcheetah", {"v4": "HalfCheetah-v4", "v5": "HalfCheetah-v5"}),
    "hopper": Task("hopper", {"v4": "Hopper-v4", "v5": "Hopper-v5"}),
}
LAST_EPISODES = 20  # training episodes averaged for a run's final return
EVAL_EPISODES = 10


@dataclass(frozen=True)
class ContinuousRun:
    task: Task
    seed: int
    env: str  # the env id trained on (score.json's label)

    @property
    def name(self) -> str:
        return f"{self.task.name}__{self.seed}"

    @property
    def variant(self) -> str:
        return self.task.name


class ContinuousPlan:
    """The benchmark's runs as a plan for auxrl study's runner (see ``auxrl.study.runner.Plan``)."""

    eval_episodes = EVAL_EPISODES

    def __init__(self, tasks: list[Task], seeds: list[int], version: str) -> None:
        self._runs = [ContinuousRun(t, s, t.env_id(version)) for s in seeds for t in tasks]
        self.tasks, self.seeds = tasks, seeds

    def runs(self) -> list[ContinuousRun]:
        return self._runs

    def describe(self) -> str:
        return f"{len(self.tasks)} tasks x {len(self.seeds)} seeds"

    def steps_of(self, run: ContinuousRun) -> int:
        return run.task.steps

    def train_args(self, run: ContinuousRun, runs_dir: Path) -> list[str]:
        overrides = [f"seed={run.seed}", f"ppo.total_steps={run.task.steps}", "perf.threads=1"]
        if run.env != run.task.env_ids["v5"]:  # the shipped config's env is the v5 one
            overrides += [f"env.id={run.env}", f"name={run.task.name}"]
        return [str(resolve_config_path(run.task.name)), *overrides]

    def ready(self, run: ContinuousRun, runs_dir: Path) -> bool:
        return True

    def probe_frames(self, run: ContinuousRun) -> int | None:
        return None


def adopt_result_json(runs_dir: Path) -> None:
    """Runs scored by this benchmark's first runner (until 2026-12-05: ``auxrl eval RUN
    --episodes 10`` into ``result.json``) get the same score as a ``score.json``."""
    for old in sorted(runs_dir.glob("*/result.json")):
        data, new = read_json(old), old.with_name("score.json")
        if new.exists() or data is None or not isinstance(data.get("eval"), dict):
            continue
        write_json(
            new,
            {
                "env": data.get("env_id"), "variant": data.get("task"), "seed": data.get("seed"),
                **data["eval"], "step": data.get("step"), "eval_seed": 12345, "date": data.get("date"),
                "scored_by": "auxrl eval RUN --episodes 10 (benchmarks/continuous.py's first runner)",
            },
        )  # fmt: skip


def analyze(out: Path, plan: ContinuousPlan, meta: dict[str, Any]) -> str:
    """results.md / results.json and a plot per task, from the finished runs."""
    rows, data, missing = [], [], []
    for task in plan.tasks:
        results = []
        for run in [r for r in plan.runs() if r.task.name == task.name]:
            run_dir = out / "runs" / run.name
            score = read_score(run_dir)
            if score is None or run_status(run_dir, task.steps) != "done":
                missing.append(run.name)
                continue
            final, _, _ = final_return(run_dir, LAST_EPISODES)
            minutes = (read_json(run_dir / "result.json") or {}).get("minutes")  # the first runner's
            results.append(
                {"seed": run.seed, "final_return": final, "eval": score["score"], "minutes": minutes}
            )
        env_id = task.env_id(meta["env_version"])
        finals = [r["final_return"] for r in results if r["final_return"] is not None]
        evals = [r["eval"] for r in results]
        final, final_std = mean_std(finals)
        score, score_std = mean_std(evals)
        published = CLEANRL_PUBLISHED.get(env_id)
        minutes = [r["minutes"] for r in results if r["minutes"] is not None]
        data.append(
            {
                "task": task.name,
                "env_id": env_id,
                "seeds": [r["seed"] for r in results],
                "final_return": finals,
                "eval": evals,
                "cleanrl": published,
                "minutes": minutes,
            }
        )
        cleanrl = f"{published[0]:.2f} ± {published[1]:.2f}" if published else "none published"
        per_seed = ", ".join(f"{r['seed']}: {_fmt(r.get('final_return'))}" for r in results) or "n/a"
        train_minutes = f"{sum(minutes) / len(minutes):.0f}" if minutes else "n/a"
        rows.append(
            f"| {task.name} | {env_id} | {cleanrl} | {_fmt(final, final_std)} | {_fmt(score, score_std)} | "
            f"{per_seed} | {train_minutes} |"
        )
        runs = [out / "runs" / f"{task.name}__{r['seed']}" for r in results]
        runs = [d for d in runs if any(d.glob("events.out.tfevents.*"))]  # committed plots stay otherwise
        if runs:
            make_plot(runs, out / f"curves_{task.name}.png")
    lines = [
        "# Continuous control at 1M steps: auxrl vs CleanRL's published ppo_continuous_action",
        "",
        f"Machine: {meta['cpu']} ({meta['cores']} cores), device {meta['device_name']}; "
        f"{meta['date']}; versions {', '.join(f'{k} {v}' for k, v in meta['versions'].items())}.",
        f"Command: `{meta['command']}`",
        "",
        "| task | env | CleanRL (published) | auxrl: last 20 training episodes | auxrl: eval, 10 episodes "
        "| training return per seed | min per run (train + eval) |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
        "Mean ± std over seeds. A run's training figure is the mean return of its last 20 training episodes "
        "(stochastic policy, as CleanRL's table reports training returns); eval plays 10 whole episodes with "
        "sampled actions and the run's frozen observation statistics.",
        "",
        f"CleanRL's figures: {CLEANRL_SOURCE}.",
        "",
        f"Not finished yet (the same command continues them): {', '.join(missing) or 'nothing'}",
        "",
        *[f"![{name}](curves_{name}.png)" for name in (t.name for t in plan.tasks)],
    ]
    text = "\n".join(lines) + "\n"
    (out / "results.md").write_text(text)
    write_json(out / "results.json", {"meta": meta, "tasks": data})
    return text


def _fmt(value: float | None, std: float | None = None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.1f}" if std is None else f"{value:.1f} ± {std:.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS), help="tasks to run")
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3], help="seeds of every task")
    parser.add_argument("--steps", type=int, default=1_000_000, help="env steps per run (CleanRL: 1M)")
    parser.add_argument(
        "--env-version", choices=["v4", "v5"], default="v4", help="MuJoCo env version (CleanRL published v4)"
    )
    parser.add_argument("--jobs", type=int, default=2, help="runs trained at a time (one core each)")
    parser.add_argument("--device", default="cpu", help="training device (default: cpu)")
    parser.add_argument(
        "--out-dir", type=Path, help="results directory (default: benchmarks/results/continuous-cpu-<date>)"
    )
    parser.add_argument("--analyze", action="store_true", help="only write the tables and plots")
    args = parser.parse_args(argv)
    out = (args.out_dir or _default_out_dir()).resolve()
    out.mkdir(parents=True, exist_ok=True)
    tasks = [Task(TASKS[name].name, TASKS[name].env_ids, args.steps) for name in args.tasks]
    plan = ContinuousPlan(tasks, args.seeds, args.env_version)
    given = sys.argv[1:] if argv is None else argv
    # the command that trains these runs (--analyze only re-reads them)
    command = shlex.join(["python", "benchmarks/continuous.py", *[a for a in given if a != "--analyze"]])
    adopt_result_json(out / "runs")
    code = 0
    if not args.analyze:
        code = run_study(plan, out, jobs=args.jobs, device=args.device, command=command)
    meta = {**setup_info(args.device), "env_version": args.env_version, "command": command}
    print(analyze(out, plan, meta))
    return code


def _default_out_dir(results: Path = REPO_ROOT / "benchmarks" / "results") -> Path:
    """The latest ``continuous-cpu-<date>`` directory (a resumed suite keeps its directory), or a new one."""
    existing = sorted(results.glob("continuous-cpu-*"))
    return existing[-1] if existing else results / f"continuous-cpu-{dt.date.today().isoformat()}"


if __name__ == "__main__":
    sys.exit(main())
