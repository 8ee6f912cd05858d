"""Run a study's matrix of runs, resumably: ``auxrl study SPEC --jobs N --out DIR``.

Every env x variant x seed is an ordinary ``auxrl train`` run directory,
``OUT/runs/<env>__<variant>__<seed>``, then scored into its ``score.json``. What each run needs
next is read from its directory (auxrl/study/state.py), so the same command continues a stopped
study: finished runs are skipped, runs with a checkpoint continue with ``auxrl train --resume``,
runs that died before their first checkpoint start over, trained runs are only scored. Ctrl-C or
SIGTERM stops the children cleanly (each saves a checkpoint) and exits with 130 or 143.

``OUT/study.json`` records the spec: a later invocation may add envs, variants and seeds, but not
change what its existing runs were trained with (the base config, steps, eval episodes,
extra_overrides or a variant's overrides), which would mix two studies in one report. An OS
lock on ``OUT/.lock`` keeps two studies out of one directory; every child holds it too, so after
a ``kill -9`` of the study a new one waits for the children to save.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import re
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from auxrl.config import ConfigError
from auxrl.configfile import override_texts
from auxrl.study.backends import Backend, BackendOptions, Outcome, Work, make_backend
from auxrl.study.spec import Study
from auxrl.study.state import (
    Status,
    checkpoint_step,
    probe_due,
    read_json,
    read_score,
    run_status,
    write_json,
)

STUDY_FILE = "study.json"
LOCK_FILE = ".lock"
LOCK_WAIT_S = 120.0  # how long to wait for the children of a study that died to finish saving
HEARTBEAT_S = 30.0
# Seed of a run's evaluation games: auxrl eval's default plus the run's seed, so the seeds of a
# variant play different games and the variants of one seed the same ones (a paired comparison).
EVAL_SEED = 12345  # seconds between progress lines while runs are in flight
_TRAIN_STATUS = re.compile(r"step ([\d,]+)/([\d,]+)")


def say(message: str) -> None:
    print(f"[study] {message}", flush=True)


# --------------------------------------------------------------------------------------------
# One study per output directory
# --------------------------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


class StudyLock:
    """An exclusive flock on ``OUT/.lock``, held by the study and inherited by its children.

    Taken by another live study: refused at once. Held only by the children of a study that died
    (they got SIGINT and are saving their checkpoints): waited for, up to ``wait_s`` seconds.
    """

    def __init__(self, path: Path, wait_s: float = LOCK_WAIT_S) -> None:
        self.fd: int | None = None
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock
            return
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline, told = time.monotonic() + wait_s, False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = path.read_text().strip()
                pid = int(holder) if holder.isdigit() else None
                if (pid is not None and _alive(pid)) or time.monotonic() > deadline:
                    os.close(fd)
                    who = (
                        f"another auxrl study (pid {pid})"
                        if pid is not None and _alive(pid)
                        else "the training processes of a stopped study, still saving"
                    )
                    raise ValueError(
                        f"{path.parent} is in use by {who}; wait for it to finish or stop it first (one "
                        f"study per --out)."
                    ) from None
                if not told:
                    say(f"waiting for the runs of a stopped study to save their checkpoints ({path})")
                    told = True
                time.sleep(1.0)
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self.fd = fd

    @property
    def pass_fds(self) -> tuple[int, ...]:
        return () if self.fd is None else (self.fd,)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


# --------------------------------------------------------------------------------------------
# OUT/study.json
# --------------------------------------------------------------------------------------------


def _fixed(spec_data: dict[str, Any]) -> dict[str, Any]:
    """What the runs of a study are trained with, comparable across invocations."""
    return {
        "base": spec_data.get("base"),
        "steps": spec_data.get("steps"),
        "eval_episodes": spec_data.get("eval_episodes"),
        "extra_overrides": override_texts(spec_data.get("extra_overrides") or []),
    }


def record_study(out: Path, study: Study, command: str) -> dict[str, Any]:
    """Check the spec against ``OUT/study.json`` and write the new one (see the module docstring)."""
    old = read_json(out / STUDY_FILE) or {}
    new_spec = study.spec.model_dump()
    before = old.get("spec")
    if before:
        was, now = _fixed(before), _fixed(new_spec)
        for key in was:
            if was[key] != now[key]:
                raise ConfigError(
                    f"{study.path}: {key} is {now[key]!r}, but the runs in {out} were trained with "
                    f"{was[key]!r}; use another --out (or put {key} back)."
                )
        for name, given in (before.get("variants") or {}).items():
            if name in study.spec.variants and override_texts(given) != study.overrides_of(name):
                raise ConfigError(
                    f"{study.path}: variants.{name} changed since its runs in {out} were trained (was "
                    f"{override_texts(given)}); give the new setting another name, or use another --out."
                )
    commands = list(old.get("commands", []))
    if command not in commands:
        commands.append(command)
    from auxrl import __version__

    data = {
        "spec": new_spec,
        "spec_file": str(study.path.resolve()),
        "base_config": str(study.base_path),
        "baseline": study.baseline,
        "runs": [run.name for run in study.runs()],
        "started": old.get("started") or dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "commands": commands,
        "auxrl": __version__,
    }
    write_json(out / STUDY_FILE, data)
    return data


# --------------------------------------------------------------------------------------------
# The runner
# --------------------------------------------------------------------------------------------


class _Stop(BaseException):  # not an Exception: a backend's `except Exception` must not swallow it
    def __init__(self, signum: int) -> None:
        self.signum = signum


def _raise_stop(signum: int, frame: Any) -> None:
    raise _Stop(signum)


def child_env(threads: int) -> dict[str, str]:
    """What each child adds to its environment: its share of the cores, auxrl importable, and
    unbuffered output (its log shows its progress)."""
    package_root = str(Path(__file__).resolve().parents[2])
    path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH", "")) if p)
    return {
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "PYTHONPATH": path,
        "PYTHONUNBUFFERED": "1",
    }


class Plan(Protocol):
    """What a :class:`StudyRunner` trains: a spec's matrix (:class:`auxrl.study.spec.Study`), or a
    benchmark's own runs (benchmarks/multitask.py: runs of several lengths, some starting from
    another's torso). Each run has ``name`` (its directory under ``OUT/runs``), ``env``, ``variant``
    and ``seed`` (score.json's labels)."""

    eval_episodes: int  # whole games played on each run's final checkpoint

    def runs(self) -> Sequence[Any]: ...

    def describe(self) -> str: ...  # the matrix, for the first progress line

    def steps_of(self, run: Any) -> int: ...  # ppo.total_steps of the run

    def train_args(self, run: Any, runs_dir: Path) -> list[str]: ...  # auxrl train's config + overrides

    def ready(self, run: Any, runs_dir: Path) -> bool: ...  # False: waits for another run

    def probe_frames(self, run: Any) -> int | None: ...  # auxrl probe's frames; None: no probe


def _stage(command: Sequence[str]) -> str:
    """A work's command as a word: train, score or probe."""
    return "score" if "auxrl.study.score" in command else command[3]


class StudyRunner:
    """Trains, scores (and probes) every unfinished run of a plan through a :class:`Backend`."""

    def __init__(self, study: Plan, out: Path, backend: Backend, threads: int, device: str = "auto") -> None:
        self.study, self.out, self.backend = study, out, backend
        self.threads, self.device = threads, device
        self.runs_dir, self.logs_dir = out / "runs", out / "logs"
        self.failed: list[str] = []
        self.per_step: list[float] = []  # seconds per step of runs trained from step 0 in this session
        self.started: dict[str, tuple[Any, float, bool]] = {}  # name -> (run, start, trained from step 0)
        self.done = self.total = 0
        self.last_beat = time.monotonic()

    # ---------------------------------------------------------------- commands
    def train_command(self, run: Any, status: Status) -> list[str]:
        run_dir = (self.runs_dir / run.name).resolve()  # absolute: a backend may run it elsewhere
        cli = [sys.executable, "-m", "auxrl.cli", "train"]
        tail = ["--device", self.device, "--no-progress"]
        if status == "resume":
            return [*cli, "--resume", str(run_dir), *tail]
        return [*cli, *self.study.train_args(run, self.runs_dir.resolve()), "--run-dir", str(run_dir), *tail]

    def score_command(self, run: Any) -> list[str]:
        return [
            sys.executable, "-m", "auxrl.study.score", str((self.runs_dir / run.name).resolve()),
            "--episodes", str(self.study.eval_episodes), "--steps", str(self.study.steps_of(run)),
            "--device", self.device, "--seed", str((EVAL_SEED + run.seed) % 2**32),
            "--label", f"env={run.env}", "--label", f"variant={run.variant}", "--label", f"seed={run.seed}",
        ]  # fmt: skip

    def probe_command(self, run: Any, frames: int) -> list[str]:
        """auxrl probe of the final checkpoint: random-agent frames, seed 0 for every run (the same
        frames for every variant of a game), the random-torso floor beside it."""
        run_dir = str((self.runs_dir / run.name).resolve())
        return [sys.executable, "-m", "auxrl.cli", "probe", run_dir, "--frames", str(frames), "--seed", "0",
                "--device", self.device]  # fmt: skip

    def work(self, run: Any, status: Status) -> Work:
        commands = [] if status in ("score", "probe") else [self.train_command(run, status)]
        if status != "probe":
            commands.append(self.score_command(run))
        frames = self.study.probe_frames(run)
        if frames is not None:
            commands.append(self.probe_command(run, frames))
        return Work(
            key=run.name,
            commands=tuple(tuple(c) for c in commands),
            log=self.logs_dir / f"{run.name}.log",
            env=child_env(self.threads),
        )

    # ---------------------------------------------------------------- scheduling
    def status(self, run: Any) -> Status:
        run_dir = self.runs_dir / run.name
        status = run_status(run_dir, self.study.steps_of(run))
        if status == "done" and self.study.probe_frames(run) is not None and probe_due(run_dir):
            return "probe"
        return status

    def next_ready(self, todo: list[Any]) -> Any | None:
        """Take the first run of ``todo`` that can start now (None: each waits for another run)."""
        for i, run in enumerate(todo):
            if self.study.ready(run, self.runs_dir):
                return todo.pop(i)
        return None

    def run(self) -> int:
        """0: every run finished; 1: some failed; 128 + signal number: stopped (resumable)."""
        runs = list(self.study.runs())
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        statuses = {run.name: self.status(run) for run in runs}
        todo = [run for run in runs if statuses[run.name] != "done"]
        self.total, self.done = len(runs), len(runs) - len(todo)
        counts = {
            k: sum(s == k for s in statuses.values())
            for k in ("done", "probe", "score", "resume", "restart", "fresh")
        }
        probe = f", {counts['probe']} to probe" if counts["probe"] else ""
        say(
            f"{self.total} runs ({self.study.describe()}): {counts['done']} done{probe}, "
            f"{counts['score']} to score, {counts['resume']} to resume, "
            f"{counts['restart'] + counts['fresh']} to start; "
            f"{self.backend.slots} at a time ({self.backend.name}), {self.threads} torch thread(s) each"
        )
        handlers = {sig: signal.signal(sig, _raise_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            while todo or self.backend.running():
                while todo and len(self.backend.running()) < self.backend.slots:
                    run = self.next_ready(todo)
                    if run is None:
                        break
                    self.submit(run)
                # Nothing running (a backend lists a work until wait() reports it) and every ready run
                # taken above: the rest wait for runs that failed, and can never start.
                if todo and not self.backend.running():
                    for run in todo:
                        self.failed.append(run.name)
                        say(f"FAILED {run.name}: it waits for a run that did not finish")
                    todo.clear()
                for outcome in self.backend.wait(timeout=1.0):
                    self.finish(outcome, todo)
                self.heartbeat(todo)
        except _Stop as stop:
            for sig in handlers:
                signal.signal(sig, signal.SIG_IGN)  # a second Ctrl-C must not cut the saves short
            left = len(self.backend.running())
            say(f"stopping: {left} run(s) save a checkpoint and exit" if left else "stopping")
            self.backend.stop()
            say("stopped; run the same command again to continue where each run stopped.")
            return 128 + stop.signum
        except BaseException:  # a bug or an OS error here: the children must not train on unwatched
            self.backend.stop()
            raise
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
        if self.failed:
            say(f"{len(self.failed)} run(s) failed: {', '.join(self.failed)} (logs in {self.logs_dir})")
        return 1 if self.failed else 0

    def submit(self, run: Any) -> None:
        status = self.status(run)  # may have changed since planning
        if status == "done":
            self.done += 1
            return
        what = {
            "fresh": "train",
            "restart": "train from step 0 (its directory has no checkpoint)",
            "resume": f"resume from step {checkpoint_step(self.runs_dir / run.name) or 0:,}",
            "score": "score (trained already)",
            "probe": "probe (scored already)",
        }[status]
        work = self.work(run, status)
        self.backend.submit(work)
        self.started[run.name] = (run, time.monotonic(), status in ("fresh", "restart"))
        say(f"{run.name}: {what} (log {work.log})")

    def finish(self, outcome: Outcome, todo: Sequence[Any]) -> None:
        name = outcome.work.key
        run, began, from_zero = self.started.pop(name)
        if outcome.interrupted:
            return
        if outcome.returncode != 0:
            stage = _stage(outcome.work.commands[outcome.command])
            self.fail(outcome.work, f"{stage} exited with code {outcome.returncode}")
            return
        run_dir = self.runs_dir / name
        score = read_score(run_dir)
        if score is None or self.status(run) != "done":
            self.fail(outcome.work, f"no score (or probe) of its final checkpoint in {run_dir}")
            return
        seconds = time.monotonic() - began
        if from_zero:
            self.per_step.append(seconds / self.study.steps_of(run))
        self.done += 1
        say(
            f"{self.done}/{self.total} done: {name} score {score['score']:.2f} +- {score['std']:.2f} "
            f"({score['episodes']} episodes) in {seconds / 60:.1f} min; {self.eta(todo)}"
        )

    def fail(self, work: Work, why: str) -> None:
        self.failed.append(work.key)
        tail = work.log.read_text(errors="replace").strip().splitlines()[-8:] if work.log.exists() else []
        say(f"FAILED {work.key} ({why}); last lines of {work.log}:")
        for line in tail:
            print(f"    {line}", flush=True)

    # ---------------------------------------------------------------- progress
    def eta(self, todo: Sequence[Any]) -> str:
        left = len(todo) + len(self.backend.running())
        if not left:
            return "nothing left to start" if not todo else ""
        if not self.per_step:
            return f"{left} to go (ETA after the first run trained here)"
        steps = sum(self.study.steps_of(r) for r in todo) + sum(
            self.study.steps_of(run) for run, _, _ in self.started.values()
        )
        seconds = sum(self.per_step) / len(self.per_step) * steps / self.backend.slots
        when = f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{max(1, round(seconds / 60))} min"
        return f"{left} to go, ETA ~{when}"

    def heartbeat(self, todo: Sequence[Any]) -> None:
        if not self.backend.running() or time.monotonic() - self.last_beat < HEARTBEAT_S:
            return
        self.last_beat = time.monotonic()
        parts = []
        for name, (work, index) in self.backend.running().items():
            stage = _stage(work.commands[index])
            if stage != "train":
                parts.append(f"{name} {'scoring' if stage == 'score' else 'probing'}")
                continue
            match = None
            try:
                with open(work.log, "rb") as f:
                    f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
                    found = _TRAIN_STATUS.findall(f.read().decode(errors="replace"))
                    match = found[-1] if found else None
            except OSError:
                pass
            parts.append(f"{name} step {match[0]}/{match[1]}" if match else f"{name} starting")
        say(f"{self.done}/{self.total} done; running: {', '.join(parts)}; {self.eta(todo)}")


def run_study(
    study: Plan,
    out: Path,
    *,
    jobs: int = 1,
    backend: str = "local",
    device: str = "auto",
    command: str = "",
    options: BackendOptions | None = None,
) -> int:
    """Train and score every unfinished run of ``study`` into ``out``; the runner's exit code. A
    spec's :class:`Study` is recorded in ``OUT/study.json``; another plan keeps its own record.

    ``options``: where and with what each run executes (backends.py); its ``cpus_per_run`` is
    also each run's thread count (default: this machine's cores // ``jobs``)."""
    from auxrl.perf import available_cores
    from auxrl.study.backends import check_backend

    if jobs < 1:
        raise ValueError(f"--jobs {jobs}: give 1 or more.")
    if options is None:
        options = BackendOptions(cpus_per_run=max(1, available_cores() // jobs))
    options = dataclasses.replace(options, folder=options.folder or out / backend)
    check_backend(backend, options)  # before anything is written
    out.mkdir(parents=True, exist_ok=True)
    lock = StudyLock(out / LOCK_FILE)
    made: Backend | None = None
    try:
        if isinstance(study, Study):
            record_study(out, study, command)
        made = make_backend(backend, jobs, lock.pass_fds, options)
        runner = StudyRunner(study, out, made, options.cpus_per_run, device)
        return runner.run()
    finally:
        if made is not None:
            made.close()
        lock.release()


def load_record(out: Path) -> dict[str, Any]:
    """``OUT/study.json``, or a one-line error saying what the folder is not."""
    data = read_json(out / STUDY_FILE)
    if data is None or not isinstance(data.get("spec"), dict):
        what = "no such folder" if not out.exists() else f"no {STUDY_FILE} in it"
        raise ValueError(
            f"{out}: {what}; give the --out folder of `auxrl study SPEC` (it holds {STUDY_FILE} and runs/)."
        )
    return data
