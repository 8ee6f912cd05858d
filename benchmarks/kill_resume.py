"""Kill -9 CartPole training at random moments, then resume it: nothing may be lost or mixed.

With ``--signal INT`` (a Ctrl-C) or ``--signal TERM`` (a scheduler's stop) instead of SIGKILL,
the same trials check the clean stop: the update in progress finishes, a checkpoint is saved,
and the resumed run continues the one curve.

Each trial starts ``auxrl train cartpole`` (small, a checkpoint every update) in a fresh run
directory, kills it with SIGKILL at one of these moments, then brings the run to its end the
way a user would (``auxrl train --resume RUN_DIR``; when that finds nothing to resume, the
original command again):

* ``startup``: at a random time before anything is written;
* ``no-checkpoint``: after config.yaml and events exist, before the first checkpoint;
* ``checkpoint-write``: while a checkpoint (or its ``latest`` pointer) is being written, seen
  as its temp file in checkpoints/;
* ``random``: at a uniformly random time of the training (from config.yaml's appearance to
  the end of an uninterrupted run).

A trial passes when the run ends at the configured final step, every update-level TensorBoard
tag holds each update's step exactly once (one clean curve: no duplicate, no missing step), and
the directory holds nothing but the run's files (no temp files, no stale event files, only the
kept checkpoints). The moment is classified from what the directory held when the process died.

    python benchmarks/kill_resume.py                 # 20 trials, prints a table and X/20
    python benchmarks/kill_resume.py --trials 5 --seed 1 --work-dir /tmp/kills --keep
    python benchmarks/kill_resume.py --signal INT     # Ctrl-C instead of kill -9
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

TOTAL, ROLLOUT, KEEP = 6144, 256, 3
TRAIN = [
    "train",
    "cartpole",
    f"ppo.total_steps={TOTAL}",
    "env.num_envs=4",
    "ppo.num_steps=64",
    "ppo.num_minibatches=2",
    "ppo.update_epochs=2",
    "model.hidden_sizes=[256,256]",  # a checkpoint of ~1.5 MB: writes take long enough to hit
    f"log.checkpoint_every={ROLLOUT}",
    f"log.keep_checkpoints={KEEP}",
    "log.flush_secs=1",
    "--no-progress",
]
UPDATE_TAGS = ("losses/value_loss", "losses/policy_loss", "charts/learning_rate", "charts/SPS")
PLAN = ["startup"] * 2 + ["no-checkpoint"] * 3 + ["checkpoint-write"] * 5  # then random


@dataclass
class Trial:
    index: int
    aim: str
    killed_at: float = 0.0
    moment: str = ""  # what the directory held when the process died
    recovery: str = ""
    final_step: int | None = None
    problems: str = ""


def auxrl(*args: str) -> list[str]:
    return [sys.executable, "-m", "auxrl.cli", *args]


def kill_when(
    proc: subprocess.Popen,
    run: Path,
    aim: str,
    rng: random.Random,
    duration: float,
    sig: int = signal.SIGKILL,
) -> float:
    """Send ``sig`` to ``proc`` at the moment ``aim`` asks for, wait for it to end; returns seconds
    since the start."""
    start = time.monotonic()
    ckpts = run / "checkpoints"
    if aim == "startup":
        deadline = start + rng.uniform(0.0, 1.0)
        while time.monotonic() < deadline and not (run / "config.yaml").exists():
            time.sleep(0.001)
    elif aim == "no-checkpoint":
        while not list(run.glob("events.out.tfevents.*")) and proc.poll() is None:
            time.sleep(0.001)
        time.sleep(rng.uniform(0.0, 0.05))
    elif aim == "checkpoint-write":
        skip = rng.randrange(0, 10)  # not always the first write
        while proc.poll() is None:
            if ckpts.is_dir() and any(name.endswith(".tmp") for name in _listdir(ckpts)):
                if skip == 0:
                    break
                skip -= 1
                while any(name.endswith(".tmp") for name in _listdir(ckpts)):
                    pass
    else:
        while not (run / "config.yaml").exists() and proc.poll() is None:
            time.sleep(0.001)
        time.sleep(rng.uniform(0.0, duration))
    proc.send_signal(sig)
    proc.wait()
    return time.monotonic() - start


def _listdir(path: Path) -> list[str]:
    try:
        return [entry.name for entry in os.scandir(path)]
    except FileNotFoundError:
        return []


def moment(run: Path) -> str:
    if not run.exists() or not (run / "config.yaml").exists():
        return "startup (nothing written)"
    ckpts = run / "checkpoints"
    tmp = sorted(p.name for p in ckpts.glob(".*.tmp")) if ckpts.is_dir() else []
    steps = sorted(ckpts.glob("step_*.pt")) if ckpts.is_dir() else []
    last = f"last checkpoint {int(steps[-1].stem[5:])}" if steps else "no checkpoint"
    return f"during write of {tmp[0].split('.')[1]}, {last}" if tmp else last


def recover(run: Path, log: Path) -> tuple[str, int]:
    """What a user does after the crash: resume; when there is nothing to resume, start again."""
    with open(log, "a") as out:
        done = subprocess.run(auxrl("train", "--resume", str(run), "--no-progress"), stdout=out, stderr=out)
        if done.returncode == 2 and "Nothing to resume" in log.read_text():
            done = subprocess.run(auxrl(*TRAIN, "--run-dir", str(run)), stdout=out, stderr=out)
            return "started again (nothing to resume)", done.returncode
    text = log.read_text()
    how = "restarted (no checkpoint yet)" if "stopped before its first checkpoint" in text else "resumed"
    return how, done.returncode


def check(run: Path) -> tuple[int | None, list[str]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from auxrl import checkpoint

    logging.getLogger("tensorboard").setLevel(logging.ERROR)  # its notes on purged steps are expected
    problems = []
    final = int(checkpoint.load(run)["state"]["global_step"])
    if final != TOTAL:
        problems.append(f"final step {final}")
    acc = EventAccumulator(str(run), size_guidance={"scalars": 0})
    acc.Reload()
    expected = list(range(ROLLOUT, TOTAL + 1, ROLLOUT))
    for tag in UPDATE_TAGS:
        steps = [e.step for e in acc.Scalars(tag)]
        if steps != expected:
            dup = len(steps) - len(set(steps))
            missing = sorted(set(expected) - set(steps))
            problems.append(f"{tag}: {dup} duplicate steps, missing {missing[:5]}")
    allowed = {"config.yaml", "checkpoints/latest", ".auxrl-run"}
    kept = sorted((run / "checkpoints").glob("step_*.pt"))
    allowed |= {f"checkpoints/{p.name}" for p in kept}
    names = [str(p.relative_to(run)) for p in run.rglob("*") if p.is_file()]
    leftovers = [n for n in names if n not in allowed and not n.startswith("events.out.tfevents.")]
    if leftovers:
        problems.append(f"leftover files {leftovers}")
    if len(kept) > KEEP:
        problems.append(f"{len(kept)} checkpoints kept")
    for events in run.glob("events.out.tfevents.*"):  # every event file still holds part of the curve
        one = EventAccumulator(str(events), size_guidance={"scalars": 0})
        one.Reload()
        if not one.Tags()["scalars"]:
            problems.append(f"stale event file {events.name}")
    return final, problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work-dir", type=Path, help="where the runs go (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the run directories")
    parser.add_argument(
        "--signal", choices=["KILL", "INT", "TERM"], default="KILL", help="how training is stopped"
    )
    args = parser.parse_args()
    sig = getattr(signal, f"SIG{args.signal}")
    rng = random.Random(args.seed)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="auxrl_kills_"))
    work.mkdir(parents=True, exist_ok=True)

    # One uninterrupted run for the timing of the random kills: from config.yaml to the exit.
    timing = work / "timing"
    proc = subprocess.Popen(auxrl(*TRAIN, "--run-dir", str(timing)), stdout=subprocess.DEVNULL)
    while not (timing / "config.yaml").exists() and proc.poll() is None:
        time.sleep(0.001)
    t0 = time.monotonic()
    if proc.wait() != 0:
        raise SystemExit("the uninterrupted run failed")
    duration = time.monotonic() - t0
    print(
        f"Uninterrupted run: {duration:.1f} s of training for {TOTAL} steps; {args.trials} trials in {work}"
    )

    trials = []
    for i in range(args.trials):
        trial = Trial(i, PLAN[i] if i < len(PLAN) else "random")
        run, log = work / f"run{i:02d}", work / f"trial{i:02d}.log"
        with open(log, "w") as out:
            proc = subprocess.Popen(auxrl(*TRAIN, "--run-dir", str(run)), stdout=out, stderr=out)
            trial.killed_at = kill_when(proc, run, trial.aim, rng, duration, sig)
        trial.moment = moment(run)
        trial.recovery, code = recover(run, log)
        if code != 0:
            trial.problems = f"exit code {code} (see {log})"
        else:
            trial.final_step, problems = check(run)
            trial.problems = "; ".join(problems)
        trials.append(trial)
        status = "ok" if not trial.problems else f"FAILED: {trial.problems}"
        print(
            f"{i:2d} {trial.aim:<16} killed at {trial.killed_at:5.2f}s  {trial.moment:<42} "
            f"{trial.recovery:<34} final {trial.final_step}  {status}",
            flush=True,
        )
        if not args.keep and not trial.problems:
            shutil.rmtree(run)
    passed = sum(not t.problems for t in trials)
    writes = sum("during write" in t.moment for t in trials)
    early = sum("no checkpoint" in t.moment or "startup" in t.moment for t in trials)
    print(
        f"\n{passed}/{len(trials)} passed ({early} killed before the first checkpoint, {writes} during a "
        f"checkpoint write)"
    )
    if not args.keep:
        shutil.rmtree(work / "timing", ignore_errors=True)
    return 0 if passed == len(trials) else 1


if __name__ == "__main__":
    sys.exit(main())
