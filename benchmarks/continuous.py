"""Continuous control at CleanRL's budget: auxrl's returns beside CleanRL's published ones.

Tasks (1M env steps each, seeds 1 2 3 by default):

* ``halfcheetah``, ``hopper``: ``configs/halfcheetah.yaml`` / ``hopper.yaml``, CleanRL's
  ``ppo_continuous_action.py`` settings. They run on the MuJoCo v4 envs by default, the version of
  CleanRL's published table (``--env-version v5`` runs the shipped configs' v5 envs instead);
* ``pendulum``: ``configs/pendulum.yaml`` (CleanRL publishes no PPO figure for Pendulum-v1).

Every run is a normal ``auxrl train`` run directory trained by a subprocess (``--jobs`` at a
time, one torch thread each) under ``<out-dir>/runs/<task>__<seed>/``, then scored: the mean
return of its last 20 training episodes (what CleanRL's table reports: the episodic return of
training, stochastic policy) and ``auxrl eval RUN --episodes 10`` (whole episodes, sampled
actions, frozen observation statistics). Re-running the same command continues: finished runs
are skipped, runs with a checkpoint continue with ``auxrl train --resume`` (one every 100k
steps), a run directory without a checkpoint is trained from scratch. Killing the runner (even
``kill -9``) makes its training processes save a checkpoint and exit. Each invocation ends by
writing ``results.md`` / ``results.json`` and one learning-curve plot per task for whatever
is finished, and what is not finished yet; ``--analyze`` does only that. A finished run's
``result.json``, config and events are committed (its checkpoints stay local), so a fresh clone
skips it too.

Examples::

    pip install -e ".[mujoco,plot]"
    python benchmarks/continuous.py --jobs 2                       # 9 runs: 3 tasks x 3 seeds
    python benchmarks/continuous.py --tasks pendulum --seeds 1     # one run
    nohup python benchmarks/continuous.py --jobs 2 > continuous.log 2>&1 &
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling modules, also when imported by tests

from atari100k import (  # noqa: E402
    SuiteLock,
    _raise_interrupt,
    checkpoint_step,
    parse_eval_output,
    run_status,
    start_child,
    write_json,
)
from learning import REPO_ROOT, final_return, make_plot, mean_std, setup_info, use_checkout  # noqa: E402

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


@dataclass
class Job:
    task: Task
    seed: int
    run_dir: Path
    stage: str  # train | eval
    proc: subprocess.Popen
    log: Path
    started: float = field(default_factory=time.monotonic)


class Runner:
    """Trains and scores runs, ``jobs`` at a time, polling its child processes."""

    def __init__(self, out: Path, version: str, device: str, jobs: int) -> None:
        self.out, self.version, self.device, self.jobs = out, version, device, jobs
        self.runs, self.logs = out / "runs", out / "logs"
        self.failed: list[str] = []
        self.pass_fds: tuple[int, ...] = ()

    def run_dir(self, task: Task, seed: int) -> Path:
        return self.runs / f"{task.name}__{seed}"

    def status(self, task: Task, seed: int) -> str:
        return run_status(self.run_dir(task, seed), task.steps, lambda d: _read_json(d / "result.json"))

    def run(self, plan: list[tuple[Task, int]]) -> int:
        self.runs.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        self.pass_fds = SuiteLock(self.out / ".lock").pass_fds
        todo = [(t, s) for t, s in plan if self.status(t, s) != "done"]
        print(
            f"[continuous] {len(plan)} runs, {len(plan) - len(todo)} done; {self.jobs} at a time", flush=True
        )
        running: list[Job] = []
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
        try:
            while todo or running:
                while todo and len(running) < self.jobs:
                    job = self._start(*todo.pop(0))
                    if job is not None:
                        running.append(job)
                time.sleep(1.0)
                for job in [j for j in running if j.proc.poll() is not None]:
                    running.remove(job)
                    follow = self._finish(job)
                    if follow is not None:
                        running.append(follow)
        except KeyboardInterrupt:
            for job in running:
                if job.proc.poll() is None:
                    job.proc.send_signal(signal.SIGINT)  # the trainer saves a checkpoint
            for job in running:
                try:
                    job.proc.wait(timeout=120)
                except subprocess.TimeoutExpired:
                    job.proc.kill()
            print("[continuous] stopped; run the same command again to continue.", flush=True)
            return 130
        finally:
            signal.signal(signal.SIGTERM, previous)
        return 1 if self.failed else 0

    def train_command(self, task: Task, seed: int, resume: bool) -> list[str]:
        base = [sys.executable, "-m", "auxrl.cli", "train"]
        run_dir = str(self.run_dir(task, seed))
        if resume:  # the run's saved config; --steps may have changed
            return [
                *base,
                "--resume",
                run_dir,
                f"ppo.total_steps={task.steps}",
                "--device",
                self.device,
                "--no-progress",
            ]
        overrides = [f"seed={seed}", f"ppo.total_steps={task.steps}", "perf.threads=1"]
        env_id = task.env_id(self.version)
        if env_id != TASKS[task.name].env_ids["v5"]:
            overrides += [f"env.id={env_id}", f"name={task.name}"]
        return [*base, task.name, *overrides, "--run-dir", run_dir, "--device", self.device, "--no-progress"]

    def _start(self, task: Task, seed: int) -> Job | None:
        status, run_dir = self.status(task, seed), self.run_dir(task, seed)
        if status == "done":
            return None
        if status == "eval":
            return self._spawn(task, seed, "eval", self._eval_command(run_dir))
        if status == "fresh" and run_dir.exists():
            shutil.rmtree(run_dir)  # killed before its first checkpoint: nothing to keep
        return self._spawn(task, seed, "train", self.train_command(task, seed, status == "resume"))

    def _eval_command(self, run_dir: Path) -> list[str]:
        episodes = ["--episodes", str(EVAL_EPISODES), "--device", self.device]
        return [sys.executable, "-m", "auxrl.cli", "eval", str(run_dir), *episodes]

    def _spawn(self, task: Task, seed: int, stage: str, command: list[str]) -> Job:
        log = self.logs / f"{task.name}__{seed}.{stage}.log"
        proc = start_child(command, log, 1, self.pass_fds, append=stage == "train")
        print(f"[continuous] {task.name}__{seed}: {stage} (log {log})", flush=True)
        return Job(task, seed, self.run_dir(task, seed), stage, proc, log)

    def _finish(self, job: Job) -> Job | None:
        name = f"{job.task.name}__{job.seed}"
        if job.proc.returncode != 0:
            self.failed.append(name)
            tail = job.log.read_text().strip().splitlines()[-6:]
            print(f"[continuous] FAILED {name} ({job.stage}); last lines of {job.log}:", flush=True)
            for line in tail:
                print(f"    {line}", flush=True)
            return None
        if job.stage == "train":
            follow = self._spawn(job.task, job.seed, "eval", self._eval_command(job.run_dir))
            follow.started = job.started
            return follow
        final, episodes, counted = final_return(job.run_dir, LAST_EPISODES)
        result = {
            "task": job.task.name,
            "env_id": _read_config(job.run_dir).get("env", {}).get("id"),
            "seed": job.seed,
            "step": checkpoint_step(job.run_dir),
            "final_return": final,
            "episodes": episodes,
            "final_return_episodes": counted,
            "eval": parse_eval_output(job.log.read_text()),
            "minutes": round((time.monotonic() - job.started) / 60, 1),
            "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        }
        write_json(job.run_dir / "result.json", result)
        print(
            f"[continuous] {name}: final return {_fmt(final)}, eval {_fmt(result['eval']['score'])}",
            flush=True,
        )
        return None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _read_config(run_dir: Path) -> dict[str, Any]:
    from auxrl.plot import read_config

    return read_config(run_dir)


def analyze(out: Path, plan: list[tuple[Task, int]], meta: dict[str, Any]) -> str:
    """results.md / results.json and a plot per task, from the finished runs."""
    rows, data, missing = [], [], []
    tasks = {t.name: t for t, _ in plan}
    for task in tasks.values():
        seeds = [s for t, s in plan if t.name == task.name]
        read = {s: _read_json(out / "runs" / f"{task.name}__{s}" / "result.json") for s in seeds}
        missing += [f"{task.name}__{s}" for s, r in read.items() if not r]
        results = [r for r in read.values() if r]
        env_id = results[0]["env_id"] if results else task.env_id(meta["env_version"])
        finals = [r["final_return"] for r in results if r.get("final_return") is not None]
        evals = [r["eval"]["score"] for r in results]
        final, final_std = mean_std(finals)
        score, score_std = mean_std(evals)
        published = CLEANRL_PUBLISHED.get(env_id)
        minutes = [r["minutes"] for r in results]
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
        rows.append(
            f"| {task.name} | {env_id} | {cleanrl} | "
            f"{_fmt(final, final_std)} | {_fmt(score, score_std)} | "
            f"{per_seed} | "
            f"{(sum(minutes) / len(minutes)) if minutes else float('nan'):.0f} |"
        )
        runs = [out / "runs" / f"{task.name}__{r['seed']}" for r in results]
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
        "| training return per seed | min per run |",
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
        *[f"![{name}](curves_{name}.png)" for name in tasks],
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
    use_checkout()
    out = args.out_dir or _default_out_dir()
    out.mkdir(parents=True, exist_ok=True)
    plan = [
        (Task(TASKS[name].name, TASKS[name].env_ids, args.steps), seed)
        for seed in args.seeds
        for name in args.tasks
    ]
    code = 0
    if not args.analyze:
        code = Runner(out, args.env_version, args.device, args.jobs).run(plan)
    given = sys.argv[1:] if argv is None else argv
    meta = {
        **setup_info(args.device),
        "env_version": args.env_version,
        "command": shlex.join(
            # the command that trains these runs (--analyze only re-reads them)
            ["python", "benchmarks/continuous.py", *[a for a in given if a != "--analyze"]]
        ),
    }
    print(analyze(out, plan, meta))
    return code


def _default_out_dir(results: Path = REPO_ROOT / "benchmarks" / "results") -> Path:
    """The latest ``continuous-cpu-<date>`` directory (a resumed suite keeps its directory), or a new one."""
    existing = sorted(results.glob("continuous-cpu-*"))
    return existing[-1] if existing else results / f"continuous-cpu-{dt.date.today().isoformat()}"


if __name__ == "__main__":
    sys.exit(main())
