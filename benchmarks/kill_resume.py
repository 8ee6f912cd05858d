"""Kill -9 CartPole training at random moments, then resume it: nothing may be lost or mixed.

With ``--signal INT`` (a Ctrl-C) or ``--signal TERM`` (a scheduler's stop) instead of SIGKILL,
the same trials check the clean stop: the update in progress finishes, a checkpoint is saved,
and the resumed run continues the one curve.

With ``--nproc N`` each trial trains with N processes (``auxrl train --nproc N``) and the signal
goes to the launcher alone, as a scheduler or the OOM killer would send it. After a SIGKILL,
which the launcher cannot pass on, each trial also checks that its workers do not outlive it
(``auxrl/__main__.py``): every process it had started (and any carrying its
``AUXRL_LAUNCHER_PID``) must be gone within ``--orphan-timeout`` seconds; the table shows when.

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
    python benchmarks/kill_resume.py --nproc 2        # kill -9 the launcher of a 2-process run
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
    orphans_gone: float | None = None  # --nproc: seconds from the kill until no worker was alive


NPROC = 1  # processes per run (--nproc)


def auxrl(*args: str) -> list[str]:
    nproc = ["--nproc", str(NPROC)] if NPROC > 1 and args[0] == "train" else []
    return [sys.executable, "-m", "auxrl.cli", *args, *nproc]


def rollout() -> int:
    """Env steps per update, all processes together."""
    return ROLLOUT * NPROC


def workers_of(launcher: int) -> list:
    """Every process of ``launcher``'s tree, and any that carries its AUXRL_LAUNCHER_PID (a worker
    the launcher was starting when it died)."""
    import psutil

    try:
        found = {p.pid: p for p in psutil.Process(launcher).children(recursive=True)}
    except psutil.NoSuchProcess:
        found = {}
    mark = f"AUXRL_LAUNCHER_PID={launcher}"
    for proc in psutil.process_iter(["environ"]):
        env = proc.info.get("environ") or {}
        if f"AUXRL_LAUNCHER_PID={env.get('AUXRL_LAUNCHER_PID')}" == mark:
            found.setdefault(proc.pid, proc)
    return list(found.values())


def alive(procs: list) -> list:
    import psutil

    left = []
    for proc in procs:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                left.append(proc)
        except psutil.NoSuchProcess:
            pass
    return left


def wait_orphans(launcher: int, before: list, timeout: float) -> float | None:
    """Seconds from now until none of the launcher's workers is alive (None: still alive after
    ``timeout``; those are then killed)."""
    start = time.monotonic()
    procs = {p.pid: p for p in before + workers_of(launcher)}
    while alive(list(procs.values())):
        if time.monotonic() - start > timeout:
            for proc in alive(list(procs.values())):
                proc.kill()
            return None
        time.sleep(0.005)
    return time.monotonic() - start


def kill_when(
    proc: subprocess.Popen,
    run: Path,
    aim: str,
    rng: random.Random,
    duration: float,
    sig: int = signal.SIGKILL,
    trial: Trial | None = None,
    orphan_timeout: float = 10.0,
) -> float:
    """Send ``sig`` to ``proc`` at the moment ``aim`` asks for, wait for it to end; returns seconds
    since the start. With several processes and SIGKILL, also waits until no worker is alive
    (``trial.orphans_gone``)."""
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
    watch = NPROC > 1 and sig == signal.SIGKILL
    before = workers_of(proc.pid) if watch else []
    proc.send_signal(sig)
    proc.wait()
    killed = time.monotonic() - start
    if watch and trial is not None:
        trial.orphans_gone = wait_orphans(proc.pid, before, orphan_timeout)
    return killed


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
    expected = list(range(rollout(), TOTAL + 1, rollout()))
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
    parser.add_argument(
        "--nproc", type=int, default=1, help="train with N processes; the signal goes to their launcher"
    )
    parser.add_argument(
        "--orphan-timeout",
        type=float,
        default=10.0,
        help="--nproc with SIGKILL: seconds the workers may outlive their launcher (default: 10)",
    )
    args = parser.parse_args()
    global NPROC
    NPROC = args.nproc
    if args.nproc < 1 or TOTAL % (ROLLOUT * args.nproc):
        parser.error(f"--nproc {args.nproc}: {TOTAL} steps must be whole updates of {ROLLOUT} x N steps")
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
            trial.killed_at = kill_when(proc, run, trial.aim, rng, duration, sig, trial, args.orphan_timeout)
        trial.moment = moment(run)
        trial.recovery, code = recover(run, log)
        if code != 0:
            trial.problems = f"exit code {code} (see {log})"
        else:
            trial.final_step, problems = check(run)
            trial.problems = "; ".join(problems)
        if NPROC > 1 and sig == signal.SIGKILL and trial.orphans_gone is None:
            orphans = f"workers alive {args.orphan_timeout:g} s after the launcher's kill"
            trial.problems = "; ".join(filter(None, [orphans, trial.problems]))
        trials.append(trial)
        status = "ok" if not trial.problems else f"FAILED: {trial.problems}"
        gone = "" if trial.orphans_gone is None else f"workers gone after {trial.orphans_gone:.3f}s  "
        print(
            f"{i:2d} {trial.aim:<16} killed at {trial.killed_at:5.2f}s  {trial.moment:<42} "
            f"{gone}{trial.recovery:<34} final {trial.final_step}  {status}",
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
    if NPROC > 1 and sig == signal.SIGKILL:
        times = [t.orphans_gone for t in trials if t.orphans_gone is not None]
        slowest = f"{max(times):.3f}" if times else "n/a"
        print(
            f"{len(times)}/{len(trials)} trials: no worker alive {slowest} s after the launcher's SIGKILL "
            f"(at most; limit {args.orphan_timeout:g} s), "
            f"{sum(not t.problems for t in trials)}/{len(trials)} resumed OK ({NPROC} processes)"
        )
    if not args.keep:
        shutil.rmtree(work / "timing", ignore_errors=True)
    return 0 if passed == len(trials) else 1


if __name__ == "__main__":
    sys.exit(main())
