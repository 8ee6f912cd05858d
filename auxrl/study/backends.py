"""Where a study's runs execute: the seam between the study runner and processes, or a cluster.

The runner (auxrl/study/runner.py) decides *what* each run needs next and hands it to a backend
as a :class:`Work`: plain argv commands (``auxrl train ...``, then ``python -m
auxrl.study.score ...``) to run one after the other, each only if the one before exited 0, with
their output appended to one log file. A backend decides *where* they run. It knows nothing of
studies, and the runner knows nothing of processes: everything a run leaves (checkpoints,
``score.json``) is in its run directory, which the runner reads after an outcome comes back.

A backend (:class:`Backend`) offers:

- ``slots``: how many works it runs at once (the runner submits no more);
- ``submit(work)``: start it, without waiting;
- ``wait(timeout)``: the works that ended since the last call, waiting up to ``timeout``
  seconds for the first one; an :class:`Outcome` says which command ended it and its exit code;
- ``running()``: the works running now and the index of the command each is at (for progress);
- ``stop()``: interrupt every running work so that ``auxrl train`` saves a checkpoint and exits
  (it does on SIGINT or SIGTERM), wait until they have, start none of their later commands.

A backend also has ``close()``: release what it holds (a Ray connection), once, at the end.
These types (:class:`Work`, :class:`Outcome`, :class:`Backend`, :class:`BackendOptions`) are
defined in auxrl/study/seam.py and re-exported here.

Three are registered in :data:`BACKENDS`: ``local`` (child processes of the study, below), and
``ray`` and ``slurm`` (auxrl/study/cluster.py, imported only when chosen: ``pip install
"auxrl[ray]"`` / ``"auxrl[slurm]"``). The cluster ones run the run directories on a filesystem
the workers and the study share, the commands with the study's Python (``sys.executable``: the
same venv path on every node), ``work.env`` added to the environment, and ``stop()`` delivers
SIGINT to ``auxrl train`` (never a kill first), so a stopped study resumes from the checkpoints.
A new backend implements the five above against its cluster, takes its settings from
:class:`BackendOptions`, and is registered in :data:`BACKENDS`.
"""

from __future__ import annotations

import ctypes
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO

# The seam's types live in auxrl/study/seam.py (cluster.py imports them there); re-exported here.
from auxrl.study.seam import Backend, BackendOptions, Outcome, Work, command_index

__all__ = [
    "BACKENDS",
    "Backend",
    "BackendOptions",
    "LocalBackend",
    "Outcome",
    "Work",
    "check_backend",
    "command_index",
    "make_backend",
]


# --------------------------------------------------------------------------------------------
# Local processes
# --------------------------------------------------------------------------------------------


def _child_setup() -> Callable[[], None]:  # the cluster backends use auxrl/study/launch.py
    """A preexec_fn: SIGINT at its default (the child's Python raises KeyboardInterrupt and auxrl
    train saves a checkpoint), and on Linux the kernel sends the child SIGINT when the study dies,
    even by ``kill -9``, so no run trains on unsupervised.

    SIGINT is reset first because a study started in the background by a shell without job
    control inherits SIGINT ignored, and so would its children.
    """
    prctl = None
    if sys.platform.startswith("linux"):
        try:
            prctl = ctypes.CDLL(None, use_errno=True).prctl
        except (OSError, AttributeError):
            pass
    parent = os.getpid()

    def setup() -> None:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        if prctl is not None:
            prctl(1, int(signal.SIGINT))  # PR_SET_PDEATHSIG
            if os.getppid() != parent:  # the study died before prctl took effect
                os.kill(os.getpid(), signal.SIGINT)

    return setup


@dataclass
class _Running:
    work: Work
    index: int
    proc: subprocess.Popen
    log: IO[str]
    interrupted: bool = False


class LocalBackend(Backend):
    """``slots`` child processes on this machine.

    Each child gets its own session, so a Ctrl-C in the terminal reaches only the study, which
    then sends each child one SIGINT (a second would cut its checkpoint save short). ``pass_fds``
    are inherited by every child: the study's lock stays held until its last child has saved.
    """

    name = "local"

    def __init__(self, slots: int, pass_fds: tuple[int, ...] = ()) -> None:
        if slots < 1:
            raise ValueError(f"--jobs {slots}: give 1 or more.")
        self.slots, self.pass_fds = slots, pass_fds
        self._running: dict[str, _Running] = {}

    def submit(self, work: Work) -> None:
        if len(self._running) >= self.slots:
            raise RuntimeError(f"all {self.slots} slots are busy")
        if not work.commands:
            raise ValueError(f"{work.key}: a work needs at least one command")
        work.log.parent.mkdir(parents=True, exist_ok=True)
        log = open(work.log, "a")  # noqa: SIM115 (closed when the work ends)
        self._running[work.key] = self._start(work, 0, log)

    def _start(self, work: Work, index: int, log: IO[str]) -> _Running:
        command = list(work.commands[index])
        log.write(f"$ {shlex.join(command)}\n")
        log.flush()
        proc = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=work.cwd,
            env={**os.environ, **work.env},
            pass_fds=self.pass_fds,
            preexec_fn=_child_setup(),
            start_new_session=True,
        )
        return _Running(work, index, proc, log)

    def _poll(self) -> list[Outcome]:
        ended = []
        for key, job in list(self._running.items()):
            rc = job.proc.poll()
            if rc is None:
                continue
            if rc == 0 and not job.interrupted and job.index + 1 < len(job.work.commands):
                self._running[key] = self._start(job.work, job.index + 1, job.log)
                continue
            job.log.close()
            del self._running[key]
            ended.append(Outcome(job.work, rc, job.index, job.interrupted))
        return ended

    def wait(self, timeout: float) -> list[Outcome]:
        deadline = time.monotonic() + timeout
        while True:
            ended = self._poll()
            if ended or not self._running or time.monotonic() >= deadline:
                return ended
            time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))

    def running(self) -> dict[str, tuple[Work, int]]:
        return {key: (job.work, job.index) for key, job in self._running.items()}

    def stop(self, timeout: float = 300.0) -> list[Outcome]:
        """SIGINT to every child (auxrl train saves a checkpoint), then wait for them to exit;
        after ``timeout`` seconds the ones left are killed (their last checkpoint stays)."""
        for job in self._running.values():
            job.interrupted = True
            if job.proc.poll() is None:
                job.proc.send_signal(signal.SIGINT)
        deadline = time.monotonic() + timeout
        ended: list[Outcome] = []
        while self._running:
            ended += self._poll()
            if time.monotonic() > deadline:
                for job in self._running.values():
                    job.proc.kill()
                deadline = float("inf")
            time.sleep(0.1)
        return ended


# --------------------------------------------------------------------------------------------
# Choosing one
# --------------------------------------------------------------------------------------------


def _cluster(name: str) -> Callable[..., Backend]:
    def make(slots: int, pass_fds: tuple[int, ...], options: BackendOptions) -> Backend:
        from auxrl.study import cluster

        return cluster.RayBackend(slots, options) if name == "ray" else cluster.SlurmBackend(slots, options)

    return make


# name -> factory(slots, pass_fds, options). A factory that cannot run here raises a one-line ValueError.
BACKENDS: dict[str, Callable[..., Backend]] = {
    "local": lambda slots, pass_fds, options: LocalBackend(slots, pass_fds),
    "ray": _cluster("ray"),
    "slurm": _cluster("slurm"),
}


def check_backend(name: str, options: BackendOptions | None = None) -> None:
    """Fail before any work when ``name`` cannot run here (a one-line ValueError): an unknown name,
    a package that is not installed, settings it refuses, no cluster to reach."""
    if name not in BACKENDS:
        raise ValueError(f"--backend {name}: unknown; choose one of {', '.join(BACKENDS)}.")
    if name != "local":
        from auxrl.study import cluster

        cluster.check(name, options or BackendOptions())


def make_backend(
    name: str, slots: int, pass_fds: tuple[int, ...] = (), options: BackendOptions | None = None
) -> Backend:
    check_backend(name, options)
    return BACKENDS[name](slots, pass_fds, options or BackendOptions())
