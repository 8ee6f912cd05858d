"""The ``ray`` and ``slurm`` backends of ``auxrl study`` (see auxrl/study/backends.py for the seam).

Both run a :class:`~auxrl.study.backends.Work` the same way, on some worker: a
:class:`WorkRunner` starts its commands one after the other as child processes (through
auxrl/study/launch.py: SIGINT at its default, a SIGINT when the worker dies), appends their output
to the work's log, and on :meth:`WorkRunner.interrupt` sends the running ``auxrl train`` one
SIGINT (it saves a checkpoint and exits) and starts no later command. Run directories and logs
must be on a filesystem the workers and the study share; the commands use the study's Python.

**ray** (``pip install "auxrl[ray]"``): ``ray.init(address=...)`` (``--ray-address``: ``auto``
finds the cluster ``ray start --head`` runs on this machine, or ``RAY_ADDRESS``;
``host:6379`` or ``ray://host:10001`` another one; ``local`` starts a Ray instance on this
machine for the study alone, with every core, as ``ray.init()`` without an address does). Each
work is an actor (``num_cpus`` = ``--cpus-per-run``, ``num_gpus`` = ``--gpus-per-run``) holding a
WorkRunner: ``run`` executes the commands, ``interrupt`` (a second actor thread) signals the
child. ``stop()`` interrupts every actor and waits for their ``run`` to return; an actor still
running after the timeout is killed, and its child gets SIGINT from its death. The actors belong
to the study's driver: if the study dies, Ray ends them, and their runs save and stop.

**slurm** (``pip install "auxrl[slurm]"``): submitit's ``AutoExecutor(folder=OUT/slurm)``, one job
per work, and the works submitted together (the first ``--jobs``, and whenever several slots free
at once) as one job array (``executor.batch()``). Parameters: ``cpus_per_task`` from
``--cpus-per-run``, ``gpus_per_node`` from ``--gpus-per-run``, ``timeout_min`` 1440 (24 h) unless
given, and ``--slurm KEY=VALUE`` for any other submitit parameter (``partition=gpu``,
``account=abc``, ``mem_gb=16``, ``timeout_min=240``; a name without ``slurm_`` that is not one of
submitit's shared parameters gets the prefix). ``--slurm cluster=local`` runs the jobs through
submitit's local executor on this machine instead (no Slurm: for tests and a dry run).
Inside a job, :func:`run_in_job` turns SIGTERM, SIGUSR1 and SIGUSR2 (``scancel``, and the
warning Slurm sends ``signal_delay_s`` = 90 s before the time limit) into one SIGINT for the run;
the run's processes ignore those signals themselves, since Slurm sends them to every process of
a job step. ``stop()`` sends running jobs ``scancel --signal=TERM`` (a signal only: each job saves
and ends by itself; submitit's local jobs get SIGTERM, which its controller forwards), cancels
pending ones, waits, and ``job.cancel()``\\ s what is left after the timeout. A run cut by the time
limit has saved its checkpoint: it shows as failed with that note in its log, and running the
study again resumes it. Jobs outlive the study on a cluster, so the study writes
``OUT/slurm/heartbeat`` every few seconds and a job whose heartbeat has not changed for
:data:`HEARTBEAT_STALE_S` stops its run the same way (a study killed with ``kill -9`` leaves
no run training unsupervised for long).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from auxrl.study.seam import Backend, BackendOptions, Outcome, Work, command_index

RAY_INSTALL = 'pip install "auxrl[ray]"'
SLURM_INSTALL = 'pip install "auxrl[slurm]"'
DEFAULT_TIMEOUT_MIN = 24 * 60
HEARTBEAT_FILE = "heartbeat"
HEARTBEAT_EVERY_S = 10.0
HEARTBEAT_STALE_S = 600.0
SLURM_SIGNALS = ("TERM", "USR1", "USR2")  # what Slurm sends a whole job step: the runs ignore them
# submitit's parameters shared by every cluster (AutoExecutor); others are Slurm's (slurm_*).
SUBMITIT_SHARED = {
    "name", "timeout_min", "mem_gb", "nodes", "cpus_per_task", "gpus_per_node", "tasks_per_node",
    "stderr_to_stdout",
}  # fmt: skip


# --------------------------------------------------------------------------------------------
# Running a work's commands on a worker
# --------------------------------------------------------------------------------------------


class _Heartbeat:
    """Whether the study is alive, judged by its heartbeat file changing (not by clocks)."""

    def __init__(self, path: Path, stale_s: float) -> None:
        self.path, self.stale_s = path, stale_s
        self.seen: str | None = self._read()
        self.since = time.monotonic()

    def _read(self) -> str | None:
        try:
            return self.path.read_text()
        except OSError:
            return None

    def stale(self) -> bool:
        now = self._read()
        if now != self.seen:
            self.seen, self.since = now, time.monotonic()
        return time.monotonic() - self.since > self.stale_s


class WorkRunner:
    """Runs a work's commands in order as child processes; :meth:`interrupt` stops it cleanly.

    Thread-safe and re-entrant: a Ray actor calls :meth:`interrupt` from another thread, a Slurm
    job from a signal handler while :meth:`run` is in progress.
    """

    def __init__(
        self,
        commands: Sequence[Sequence[str]],
        log: str | Path,
        env: Mapping[str, str],
        cwd: str | Path | None = None,
        ignore: Sequence[str] = (),
    ) -> None:
        self.commands = [list(c) for c in commands]
        self.log, self.env, self.cwd, self.ignore = Path(log), dict(env), cwd, tuple(ignore)
        self._lock = threading.RLock()
        self._proc: subprocess.Popen | None = None
        self._signalled = False
        self.stop_reason: str | None = None

    def _note(self, text: str) -> None:
        try:
            with open(self.log, "a") as f:
                f.write(f"[auxrl study] {text}\n")
        except OSError:
            pass

    def interrupt(self, why: str = "stopped by the study") -> None:
        """Send the running command one SIGINT (``auxrl train`` saves a checkpoint and exits) and
        start no later one. Later calls change nothing: a second SIGINT would stop it unsaved."""
        with self._lock:
            if self.stop_reason is None:
                self.stop_reason = why
                self._note(f"{why}: the run saves a checkpoint and stops")
            proc = self._proc
            if proc is not None and not self._signalled and proc.poll() is None:
                self._signalled = True
                proc.send_signal(signal.SIGINT)

    def _start(self, command: list[str], out: Any) -> subprocess.Popen:
        ignore = ",".join(self.ignore) or "-"
        launch = [sys.executable, "-m", "auxrl.study.launch", str(os.getpid()), ignore, "--", *command]
        return subprocess.Popen(
            launch,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=self.cwd,
            env={**os.environ, **self.env},
            start_new_session=True,  # a terminal's Ctrl-C or a signal to the worker's group misses it
        )

    def run(
        self, heartbeat: str | Path | None = None, stale_s: float = HEARTBEAT_STALE_S
    ) -> tuple[int, int, bool]:
        """Run the commands; (exit code of the last one run, its index, whether it was stopped).

        With ``heartbeat``, a file the study keeps changing: when it has not changed for
        ``stale_s`` seconds the study is gone, and the run is interrupted.
        """
        self.log.parent.mkdir(parents=True, exist_ok=True)
        beat = _Heartbeat(Path(heartbeat), stale_s) if heartbeat is not None else None
        returncode, index = 130, 0
        with open(self.log, "a") as out:
            for index, command in enumerate(self.commands):
                with self._lock:
                    if self.stop_reason is not None:
                        return returncode, max(0, index - 1), True
                    out.write(f"$ {shlex.join(command)}\n")
                    out.flush()
                    proc = self._proc = self._start(command, out)
                    self._signalled = False
                while True:
                    try:
                        returncode = proc.wait(timeout=2.0)
                        break
                    except subprocess.TimeoutExpired:
                        if beat is not None and beat.stale():
                            self.interrupt(f"the study's heartbeat ({beat.path}) stopped for {stale_s:.0f} s")
                with self._lock:
                    self._proc = None
                if returncode != 0 or self.stop_reason is not None:
                    return returncode, index, self.stop_reason is not None
        return 0, index, False


def run_in_job(
    commands: Sequence[Sequence[str]],
    log: str,
    env: Mapping[str, str],
    cwd: str,
    heartbeat: str | None = None,
    stale_s: float = HEARTBEAT_STALE_S,
) -> tuple[int, int, bool]:
    """A Slurm job's function (submitit pickles it by name): run the work, turning the signals a
    job gets into one SIGINT for its run (see the module docstring)."""
    runner = WorkRunner(commands, log, env, cwd, ignore=SLURM_SIGNALS)

    def handle(signum: int, frame: Any) -> None:
        runner.interrupt(f"{signal.Signals(signum).name} to the job")

    handled = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)
    previous = {sig: signal.signal(sig, handle) for sig in handled}  # over submitit's own handlers
    try:
        return runner.run(heartbeat, stale_s)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def _remote_work(work: Work) -> dict[str, Any]:
    """What a worker needs of a work, with the paths absolute (a worker's cwd is not the study's)."""
    return {
        "commands": [list(c) for c in work.commands],
        "log": str(work.log.resolve()),
        "env": dict(work.env),
        "cwd": str((work.cwd or Path.cwd()).resolve()),
    }


def _log_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _log_note(work: Work, text: str) -> None:
    try:
        work.log.parent.mkdir(parents=True, exist_ok=True)
        with open(work.log, "a") as f:
            f.write(f"[auxrl study] {text}\n")
    except OSError:
        pass


class _Tracked:
    """A work in flight on a cluster: where its log started, the command it is at."""

    def __init__(self, work: Work, handle: Any = None) -> None:
        self.work, self.handle = work, handle
        self.offset = _log_size(work.log)
        self.index = 0

    def refresh(self) -> None:
        try:
            with open(self.work.log, "rb") as f:
                f.seek(self.offset)
                text = f.read().decode(errors="replace")
        except OSError:
            return
        found = command_index(self.work, text)
        if found is not None:
            self.index = found


# --------------------------------------------------------------------------------------------
# ray
# --------------------------------------------------------------------------------------------


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ImportError(f"--backend ray: ray is not installed; {RAY_INSTALL}.") from None
    return ray


_ray_connected_here = False


def connect_ray(address: str) -> None:
    """``ray.init`` once per process: connect to ``address``, or start a local instance ("local")."""
    global _ray_connected_here
    ray = _import_ray()
    if ray.is_initialized():
        return
    quiet = {"log_to_driver": False, "logging_level": logging.ERROR}
    try:
        if address == "local":
            ray.init(include_dashboard=False, **quiet)
        else:
            ray.init(address=address, **quiet)
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as err:
        first = str(err).strip().splitlines()[0].split(". ")[0] if str(err).strip() else type(err).__name__
        raise ValueError(
            f"--backend ray: no Ray cluster at --ray-address {address} ({first}); start one with `ray start "
            f"--head` (then --ray-address auto), or pass --ray-address local to start one for this study."
        ) from None
    _ray_connected_here = True


def _unwrapped(call: Any, *args: Any, **kwargs: Any) -> Any:
    """``call(...)`` of Ray's, re-raising what a signal handler raised while it ran: Ray's Cython
    checks for signals and then reports the handler's exception as a SystemError around it."""
    try:
        return call(*args, **kwargs)
    except SystemError as err:
        if isinstance(err.__cause__, BaseException):
            raise err.__cause__ from None
        raise


class RayWorkActor:
    """One work on a Ray worker (made a Ray actor with two threads by :class:`RayBackend`)."""

    def __init__(self, commands: list[list[str]], log: str, env: dict[str, str], cwd: str) -> None:
        self.runner = WorkRunner(commands, log, env, cwd)

    def run(self) -> tuple[int, int, bool]:
        return self.runner.run()

    def interrupt(self) -> None:
        self.runner.interrupt()


class RayBackend(Backend):
    """Each work an actor on a Ray cluster; see the module docstring."""

    name = "ray"

    def __init__(self, slots: int, options: BackendOptions) -> None:
        if slots < 1:
            raise ValueError(f"--jobs {slots}: give 1 or more.")
        self.ray = _import_ray()
        connect_ray(options.ray_address)
        self.slots = slots
        self.actor_class = self.ray.remote(
            num_cpus=options.cpus_per_run, num_gpus=options.gpus_per_run, max_concurrency=2, max_restarts=0
        )(RayWorkActor)
        self._running: dict[str, _Tracked] = {}
        self._refs: dict[Any, str] = {}  # the ref of each actor's run() -> work key

    def submit(self, work: Work) -> None:
        if len(self._running) >= self.slots:
            raise RuntimeError(f"all {self.slots} slots are busy")
        if not work.commands:
            raise ValueError(f"{work.key}: a work needs at least one command")
        remote = _remote_work(work)
        actor = self.actor_class.remote(remote["commands"], remote["log"], remote["env"], remote["cwd"])
        self._running[work.key] = _Tracked(work, actor)
        self._refs[actor.run.remote()] = work.key

    def _collect(self, refs: list[Any], interrupted: bool) -> list[Outcome]:
        ended = []
        for ref in refs:
            job = self._running.pop(self._refs.pop(ref))
            try:
                returncode, index, stopped = _unwrapped(self.ray.get, ref)
            except self.ray.exceptions.RayError as err:  # the actor or its node died
                first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                _log_note(job.work, f"ray: the run's actor failed: {first}")
                job.refresh()
                returncode, index, stopped = -1, job.index, False
            self.ray.kill(job.handle, no_restart=True)
            ended.append(Outcome(job.work, returncode, index, interrupted or stopped))
        return ended

    def wait(self, timeout: float) -> list[Outcome]:
        if not self._refs:
            return []
        refs = list(self._refs)
        ready, _ = _unwrapped(self.ray.wait, refs, num_returns=1, timeout=timeout)
        if ready:
            ready, _ = _unwrapped(self.ray.wait, refs, num_returns=len(refs), timeout=0)
        for job in self._running.values():
            job.refresh()
        return self._collect(ready, interrupted=False)

    def running(self) -> dict[str, tuple[Work, int]]:
        return {key: (job.work, job.index) for key, job in self._running.items()}

    def stop(self, timeout: float = 300.0) -> list[Outcome]:
        for job in self._running.values():
            job.handle.interrupt.remote()
        refs = list(self._refs)
        ready, left = self.ray.wait(refs, num_returns=len(refs), timeout=timeout) if refs else ([], [])
        ended = self._collect(ready, interrupted=True)
        for ref in left:  # past the timeout: killing the actor sends its run SIGINT (launch.py)
            job = self._running.pop(self._refs.pop(ref))
            self.ray.kill(job.handle, no_restart=True)
            ended.append(Outcome(job.work, -1, job.index, True))
        return ended

    def close(self) -> None:
        global _ray_connected_here
        if _ray_connected_here:
            self.ray.shutdown()
            _ray_connected_here = False


# --------------------------------------------------------------------------------------------
# slurm (submitit)
# --------------------------------------------------------------------------------------------


def _import_submitit() -> Any:
    # Imported as is, submitit runs logging.config.dictConfig, which closes every logging handler
    # of the process (a notebook's; absl's, with the stream it holds); NOCONFIG skips that, and its
    # warnings still reach stderr (logging's last-resort handler, or the process's own handlers).
    os.environ.setdefault("SUBMITIT_LOG_LEVEL", "NOCONFIG")
    try:
        import submitit
    except ImportError:
        raise ImportError(f"--backend slurm: submitit is not installed; {SLURM_INSTALL}.") from None
    return submitit


def slurm_parameters(options: BackendOptions, slots: int) -> tuple[str, dict[str, Any]]:
    """(cluster, AutoExecutor parameters) from the options; a one-line ValueError for bad ones."""
    given = dict(options.slurm)
    cluster = given.pop("cluster", "slurm")
    if cluster not in ("slurm", "local"):
        raise ValueError(f"--slurm cluster={cluster}: give slurm (the default) or local.")
    if options.gpus_per_run != int(options.gpus_per_run):
        raise ValueError(
            f"--gpus-per-run {options.gpus_per_run}: Slurm allocates whole GPUs; give 0, 1, 2..."
        )
    params: dict[str, Any] = {
        "name": "auxrl-study",
        "timeout_min": DEFAULT_TIMEOUT_MIN,
        "cpus_per_task": options.cpus_per_run,
        "stderr_to_stdout": True,
        "slurm_array_parallelism": slots,
    }
    if options.gpus_per_run:
        params["gpus_per_node"] = int(options.gpus_per_run)
    for key, value in given.items():
        name = key if key in SUBMITIT_SHARED or key.startswith("slurm_") else f"slurm_{key}"
        if name in ("nodes", "tasks_per_node", "slurm_ntasks_per_node") and value != 1:
            raise ValueError(
                f"--slurm {key}={value}: a study's run is one process on one node; leave it at 1."
            )
        params[name] = value
    return cluster, params


def _executor(options: BackendOptions, slots: int) -> Any:
    submitit = _import_submitit()
    cluster, params = slurm_parameters(options, slots)
    if cluster == "slurm" and (shutil.which("sbatch") is None or shutil.which("srun") is None):
        raise ValueError(
            "--backend slurm: no sbatch / srun on PATH, so this is no Slurm login node; run the study there, "
            "or give --slurm cluster=local to run its jobs through submitit's local executor here."
        )
    folder = options.folder if options.folder is not None else Path("slurm")
    try:
        executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
        executor.update_parameters(**params)
    except (NameError, AssertionError, ValueError, TypeError, RuntimeError) as err:
        text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(
            f"--slurm: submitit refuses the parameters ({text.split(' Valid arguments')[0]})."
        ) from None
    return executor


class SlurmBackend(Backend):
    """Each work a Slurm job through submitit; see the module docstring."""

    name = "slurm"

    def __init__(self, slots: int, options: BackendOptions) -> None:
        if slots < 1:
            raise ValueError(f"--jobs {slots}: give 1 or more.")
        self.submitit = _import_submitit()
        utils = self.submitit.core.utils
        self.job_errors = (utils.UncompletedJobError, utils.FailedJobError)
        self.slots = slots
        self.executor = _executor(options, slots)
        self.folder = Path(self.executor.folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.heartbeat = self.folder / HEARTBEAT_FILE
        self._beats, self._last_beat = 0, -math.inf
        self._beat()
        self._queued: list[Work] = []  # submitted to the backend, not yet to Slurm
        self._jobs: dict[str, _Tracked] = {}

    def _beat(self) -> None:
        if time.monotonic() - self._last_beat < HEARTBEAT_EVERY_S:
            return
        self._beats += 1
        tmp = self.heartbeat.with_name(f".{HEARTBEAT_FILE}.tmp")
        tmp.write_text(f"{self._beats} {os.getpid()} {time.time():.0f}\n")
        os.replace(tmp, self.heartbeat)
        self._last_beat = time.monotonic()

    def submit(self, work: Work) -> None:
        if len(self._queued) + len(self._jobs) >= self.slots:
            raise RuntimeError(f"all {self.slots} slots are busy")
        if not work.commands:
            raise ValueError(f"{work.key}: a work needs at least one command")
        self._queued.append(work)

    def _flush(self) -> None:
        """Submit the queued works: several as one job array."""
        if not self._queued:
            return
        works, self._queued = self._queued, []
        tracked = [_Tracked(work) for work in works]  # log offsets before any job writes
        with self.executor.batch():
            jobs = [
                self.executor.submit(run_in_job, **_remote_work(w), heartbeat=str(self.heartbeat.resolve()))
                for w in works
            ]
        for job, track in zip(jobs, tracked, strict=True):
            track.handle = job
            self._jobs[track.work.key] = track

    def _outcome(self, track: _Tracked, interrupted: bool) -> Outcome:
        try:
            returncode, index, stopped = track.handle.result()
        except (*self.job_errors, OSError, EOFError) as err:  # killed, cancelled, its node failed
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            _log_note(track.work, f"slurm job {track.handle.job_id} failed: {first} (see {self.folder})")
            track.refresh()
            returncode, index, stopped = -1, track.index, False
        return Outcome(track.work, returncode, index, interrupted or stopped)

    def _done(self, interrupted: bool = False, force: bool = False) -> list[Outcome]:
        ended = []
        for key, track in list(self._jobs.items()):
            if track.handle.done(force_check=force):
                del self._jobs[key]
                ended.append(self._outcome(track, interrupted))
            else:
                track.refresh()
        return ended

    def wait(self, timeout: float) -> list[Outcome]:
        self._flush()
        deadline = time.monotonic() + timeout
        while True:
            self._beat()
            ended = self._done()
            if ended or not self._jobs or time.monotonic() >= deadline:
                return ended
            time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))

    def running(self) -> dict[str, tuple[Work, int]]:
        runs = {work.key: (work, 0) for work in self._queued}
        runs.update({key: (track.work, track.index) for key, track in self._jobs.items()})
        return runs

    def _signal(self, job: Any) -> None:
        """Ask a job to stop: SIGTERM to its processes (the job turns it into SIGINT for its run)."""
        if isinstance(job, self.submitit.LocalJob):  # job_id: the pid of submitit's local controller
            try:
                os.kill(int(job.job_id), signal.SIGTERM)
            except (ProcessLookupError, ValueError):
                pass
            return
        if job.state.upper() in ("PENDING", "REQUEUED", "CONFIGURING"):
            job.cancel(check=False)  # not started: nothing to save
        else:
            subprocess.call(["scancel", "--signal=TERM", str(job.job_id)])

    def stop(self, timeout: float = 300.0) -> list[Outcome]:
        ended = [Outcome(work, 130, 0, True) for work in self._queued]
        self._queued = []
        for track in self._jobs.values():
            self._signal(track.handle)
        deadline, last_check = time.monotonic() + timeout, -math.inf
        while self._jobs:
            self._beat()
            force = time.monotonic() - last_check > 5.0
            last_check = time.monotonic() if force else last_check
            ended += self._done(interrupted=True, force=force)
            if self._jobs and time.monotonic() > deadline:
                for track in self._jobs.values():
                    track.handle.cancel(check=False)
                deadline = math.inf
            time.sleep(0.5)
        return ended


# --------------------------------------------------------------------------------------------
# Checks before a study writes anything
# --------------------------------------------------------------------------------------------


def check(name: str, options: BackendOptions) -> None:
    """A one-line error when backend ``name`` cannot run with ``options`` here (ray: connects)."""
    if name == "ray":
        if options.gpus_per_run < 0 or options.cpus_per_run < 1:
            raise ValueError("--cpus-per-run must be >= 1 and --gpus-per-run >= 0.")
        connect_ray(options.ray_address)
    elif name == "slurm":
        with tempfile.TemporaryDirectory() as folder:  # submitit makes its folder: not in OUT yet
            _executor(dataclasses.replace(options, folder=Path(folder)), 1)
