"""Atari 100k suite: does PPO learn more from 100k agent steps with the auxiliary heads?

Two phases, each a list of (game, variant, seed) runs of ``configs/atari100k.yaml``:

* ``screen``: 2 games x 2 seeds; ``no_aux`` and all three heads with each balancing method
  (``none``, ``norm``, ``cosine``, ``pcgrad``, ``olaux``: ``aux.balance.method=<method>``), and
  ``norm`` with the aux losses on every 2nd / 4th PPO minibatch only (``norm_every2``,
  ``norm_every4``: ``aux.every=k``, the heads' compute traded for their signal);
* ``final``: 6 games x 3 seeds (dense- and sparse-reward; ``--games ... Kangaroo Qbert`` adds
  two more once they are done); ``no_aux`` and the best heads variant
  of the screening (highest IQM; or ``--best-variant``). Its seeds differ from the screening's,
  so the final comparison is not scored on the runs that chose the variant.

Every run is a normal ``auxrl train`` run directory, trained by a subprocess
(``python -m auxrl.cli train ... --no-progress``, ``OMP_NUM_THREADS=1``) under
``<out-dir>/runs/<Game>__<variant>__<seed>/``, then scored by ``auxrl eval RUN --episodes 10``
(whole games, unclipped) into its ``eval.json``. Re-running the same command continues: finished
runs (final checkpoint at ``ppo.total_steps`` and ``eval.json`` for it) are skipped, runs with a
checkpoint continue with ``auxrl train --resume``, a run directory without a checkpoint is
deleted and trained from scratch. The runner can be killed at any moment (``kill -9`` too: its
training processes then get SIGINT, save a checkpoint and exit). Each invocation ends with the
analysis (``results.md``, ``results.json``, plots) of whatever is finished; ``--analyze`` does
only that.

Examples::

    python benchmarks/atari100k.py --phase screen --jobs 2      # 32 runs
    python benchmarks/atari100k.py --phase final --jobs 2       # 36 runs, best variant from screening
    python benchmarks/atari100k.py --analyze                    # tables and plots only
    nohup python benchmarks/atari100k.py --phase final --jobs 2 > atari100k.log 2>&1 &
"""

from __future__ import annotations

import argparse
import ctypes
import datetime as dt
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling modules, also when imported by tests

import atari100k_analysis as analysis  # noqa: E402
from learning import REPO_ROOT, make_plot, setup_info, use_checkout  # noqa: E402

# --------------------------------------------------------------------------------------------
# The suite
# --------------------------------------------------------------------------------------------

CONFIG = "atari100k"
BALANCE_METHODS = ("none", "norm", "cosine", "pcgrad", "olaux")
# Variant -> config overrides. ``heads`` keeps the config's own balancing setting.
VARIANTS: dict[str, tuple[str, ...]] = {
    "no_aux": ("aux.enabled=false",),
    "heads": ("aux.enabled=true",),
    **{m: ("aux.enabled=true", f"aux.balance.method={m}") for m in BALANCE_METHODS},
    # The heads' compute traded for their signal (aux losses on every k-th PPO minibatch only):
    # the same learning with fewer CPU-seconds? Throughput: benchmarks/throughput.py all_heads/everyK.
    **{f"norm_every{k}": ("aux.enabled=true", "aux.balance.method=norm", f"aux.every={k}") for k in (2, 4)},
    # Issue 25's candidates (2026-12-04), each alone on PPO unless named otherwise. The heads as
    # configured now: reward_prediction (scale-free head) and next_state on PPO's minibatch.
    "heads_now": ("aux.enabled=true",),
    "rad": ("aux.enabled=false", "ppo.augment=shift"),  # augmentation of PPO's inputs (RAD)
    "drac": ("aux.enabled=true", "aux.tasks={augment_consistency: {}}"),  # DrAC's consistency loss
    "spr": ("aux.enabled=true", "aux.tasks={next_state: {mode: spr}}"),  # SPR-style latent prediction
    # The AtariARI RAM variables as labels; the RAM is read through gymnasium's ALE env, so its
    # baseline is PPO alone on that same env path (no_aux_ram).
    "state_prediction": ("aux.enabled=true", "env.labels=[ram]", "aux.tasks={state_prediction: {}}"),
    "no_aux_ram": ("aux.enabled=false", "env.labels=[ram]"),
    # The best combination of the screening's two best heads (state_prediction, then spr).
    "state_prediction_spr": (
        "aux.enabled=true",
        "env.labels=[ram]",
        "aux.tasks={state_prediction: {}, next_state: {mode: spr}}",
    ),
}
# The screening of issue 25's candidates: --phase screen --variants ... (same games and seeds).
CANDIDATES = (
    "no_aux",
    "heads_now",
    "rad",
    "drac",
    "spr",
    "state_prediction",
    "no_aux_ram",
    "state_prediction_spr",
)
PROBE_FRAMES = 10_000  # auxrl probe on every final checkpoint of an AtariARI game (~1 min of CPU)
# Games where PPO learns something within 100k steps (the pilot: MsPacman 307 -> 640; Breakout
# stays at the random score), so the screening can tell the methods apart.
SCREEN_GAMES = ("MsPacman", "Seaquest")
SCREEN_SEEDS = (101, 102)
SCREEN_VARIANTS = ("no_aux", *BALANCE_METHODS, "norm_every2", "norm_every4")
# Dense rewards: Breakout, Boxing, MsPacman, Seaquest. Sparse: Freeway (one point per crossing,
# nothing on the way), PrivateEye (rare clue rewards). Six, not more: with heads a run takes ~18 min
# of two busy cores, so 36 final runs are ~4 h; EXTRA_GAMES are the next two when there is time.
FINAL_GAMES = ("Breakout", "Boxing", "Freeway", "MsPacman", "Seaquest", "PrivateEye")
EXTRA_GAMES = ("Kangaroo", "Qbert")
FINAL_SEEDS = (1, 2, 3)
EVAL_EPISODES = 10
# Seconds per run before any run of this session finished (2-core CPU, two runs at a time:
# ~8.5 CPU-minutes without heads in the pilot; with heads assumed ~1.7x).
DEFAULT_SECONDS = {"no_aux": 540.0, "heads": 900.0}

Status = Literal["done", "probe", "eval", "resume", "fresh"]


@dataclass(frozen=True)
class RunSpec:
    """One run of the suite."""

    phase: str
    game: str
    variant: str
    seed: int

    @property
    def name(self) -> str:
        return f"{self.game}__{self.variant}__{self.seed}"

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.game, self.variant, self.seed)

    @property
    def kind(self) -> str:
        """``no_aux`` or ``heads``: what a run costs."""
        return "no_aux" if self.variant in analysis.BASELINES else "heads"

    def overrides(self) -> list[str]:
        """Config overrides of this run (``name`` groups its seeds in ``auxrl plot``)."""
        return [
            f"env.id=ALE/{self.game}-v5",
            f"seed={self.seed}",
            f"name={self.variant}",
            *VARIANTS[self.variant],
        ]


def plan_runs(
    phase: str, games: Sequence[str], seeds: Sequence[int], variants: Sequence[str]
) -> list[RunSpec]:
    """Seed-major order: every game's first seed of every variant before any second seed, so an
    interrupted suite has matched pairs on as many games as possible; the baseline first."""
    order = sorted(variants, key=lambda v: v not in analysis.BASELINES)
    return [RunSpec(phase, g, v, s) for s in seeds for g in games for v in order]


# --------------------------------------------------------------------------------------------
# What a run directory holds
# --------------------------------------------------------------------------------------------

_STEP_FILE = re.compile(r"step_(\d+)\.pt$")
_EVAL_LINE = re.compile(
    r"(?P<episodes>\d+) episodes, score (?P<mean>\S+) \+- (?P<std>\S+) \(min (?P<min>\S+), max (?P<max>\S+)\)"
)


def checkpoint_step(run_dir: Path) -> int | None:
    """Step of the run's latest checkpoint, from its file name (None: no checkpoint)."""
    from auxrl import checkpoint

    try:
        match = _STEP_FILE.search(checkpoint.find(run_dir).name)
    except FileNotFoundError:
        return None
    return int(match.group(1)) if match else None


def read_eval(run_dir: Path) -> dict[str, Any] | None:
    """The run's ``eval.json`` (None when absent or unreadable)."""
    try:
        data = json.loads((run_dir / "eval.json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and "score" in data else None


def run_status(
    run_dir: Path,
    total_steps: int,
    read_score: Callable[[Path], dict[str, Any] | None] = read_eval,
    probe: bool = True,
) -> Status:
    """What a run needs next.

    ``done``: final checkpoint (step >= total_steps) scored (``read_score(run_dir)``, by default
    its ``eval.json``, names that step); ``eval``: trained, not (or not this checkpoint) scored;
    ``resume``: a checkpoint short of total_steps; ``fresh``: no checkpoint (a directory left by
    a run killed before its first checkpoint is deleted before training). A run scored at
    total_steps without a checkpoint (finished in an earlier session or another clone: its score,
    config and events are committed, its checkpoints of tens of MB are not) is ``done``.
    ``probe``: an AtariARI game's scored run still needs its ``auxrl probe`` (``probe``).
    """
    step = checkpoint_step(run_dir)
    scored = read_score(run_dir) or {}
    if step is None:
        return "done" if scored.get("step", 0) >= total_steps else "fresh"
    if step < total_steps:
        return "resume"
    if scored.get("step") != step:
        return "eval"
    return "probe" if probe and wants_probe(run_dir, step) else "done"


def wants_probe(run_dir: Path, step: int) -> bool:
    """A scored final checkpoint of an AtariARI game whose ``probe.json`` is missing or older."""
    from auxrl.envs.atari_ram import game_of

    config = run_dir / "config.yaml"
    game = run_dir.name.split("__")[0]
    if game_of(f"ALE/{game}-v5") is None or not config.is_file():
        return False
    try:
        probed = json.loads((run_dir / "probe.json").read_text()).get("global_step")
    except (OSError, ValueError):
        probed = None
    return probed != step


def parse_eval_output(text: str) -> dict[str, float]:
    """Score of ``auxrl eval``'s summary line: mean, std, min, max, episodes."""
    matches = list(_EVAL_LINE.finditer(text))
    if not matches:
        raise ValueError("no 'N episodes, score M +- S (min A, max B)' line in the auxrl eval output")
    m = matches[-1]
    return {
        "score": float(m["mean"]),
        "std": float(m["std"]),
        "min": float(m["min"]),
        "max": float(m["max"]),
        "episodes": int(m["episodes"]),
    }


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temp file + rename), so a kill never leaves half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------
# Subprocesses
# --------------------------------------------------------------------------------------------


def train_command(
    run_dir: Path, spec: RunSpec | None, config: str, extra: Sequence[str], device: str
) -> list[str]:
    """``auxrl train`` for a fresh run (``spec`` given) or ``--resume`` (``spec`` None)."""
    base = [sys.executable, "-m", "auxrl.cli", "train"]
    if spec is None:
        return [*base, "--resume", str(run_dir), "--device", device, "--no-progress"]
    return [
        *base,
        config,
        *extra,
        *spec.overrides(),
        "--run-dir",
        str(run_dir),
        "--device",
        device,
        "--no-progress",
    ]


def eval_command(run_dir: Path, device: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "auxrl.cli",
        "eval",
        str(run_dir),
        "--episodes",
        str(EVAL_EPISODES),
        "--device",
        device,
    ]


def probe_command(run_dir: Path, device: str) -> list[str]:
    """``auxrl probe`` of the run's final checkpoint: random-agent frames, the AtariARI variables."""
    cli = [sys.executable, "-m", "auxrl.cli", "probe", str(run_dir)]
    return [*cli, "--frames", str(PROBE_FRAMES), "--seed", "0", "--device", device]


def child_env(threads: int) -> dict[str, str]:
    """The children's environment: few threads each (parallel runs share the cores), auxrl importable."""
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _child_setup() -> Callable[[], None]:
    """A preexec_fn that makes SIGINT stop the child cleanly (the trainer saves a checkpoint and
    exits), and on Linux has the kernel send it that SIGINT when the runner dies, even by kill -9.

    SIGINT is reset to its default first: a runner started in the background by a shell without
    job control (``nohup ... &`` in a script) inherits SIGINT ignored, and so would its children.
    """
    prctl = None
    if sys.platform.startswith("linux"):
        try:
            prctl = ctypes.CDLL(None, use_errno=True).prctl
        except (OSError, AttributeError):
            pass
    parent = os.getpid()

    def setup() -> None:
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # the child's Python then raises KeyboardInterrupt
        if prctl is not None:
            prctl(1, int(signal.SIGINT))  # PR_SET_PDEATHSIG
            if os.getppid() != parent:  # the runner died before prctl took effect
                os.kill(os.getpid(), signal.SIGINT)

    return setup


def start_child(
    command: list[str], log: Path, threads: int, pass_fds: tuple[int, ...] = (), append: bool = True
) -> subprocess.Popen:
    """Start ``command`` in the repository with its output in ``log`` (after a ``$ command`` line),
    ``threads`` torch threads, stopped cleanly by SIGINT (see :func:`_child_setup`)."""
    with open(log, "a" if append else "w") as f:
        f.write(f"$ {shlex.join(command)}\n")
        f.flush()
        return subprocess.Popen(
            command,
            stdout=f,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=REPO_ROOT,
            env=child_env(threads),
            pass_fds=pass_fds,
            preexec_fn=_child_setup(),
            # Own session: a Ctrl-C in the terminal reaches only the runner, which then sends
            # each child one SIGINT (a second one would interrupt its checkpoint save).
            start_new_session=True,
        )


class SuiteLock:
    """An exclusive flock on ``<out-dir>/.lock``: one runner per results directory.

    The lock's file descriptor is passed to every child, so it stays held until the runner and
    all its training processes are gone (after a ``kill -9`` of the runner, its children still
    save their checkpoints before the next runner may start).
    """

    def __init__(self, path: Path, wait_s: float = 120.0) -> None:
        self.fd: int | None = None
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock
            return
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    holder = path.read_text().strip() or "?"
                    raise SystemExit(
                        f"[atari100k] {path.parent} is in use by another runner or its training processes "
                        f"(pid {holder}); stop it first, or wait for them to finish saving."
                    ) from None
                time.sleep(2.0)
        os.ftruncate(self.fd, 0)
        os.write(self.fd, str(os.getpid()).encode())

    @property
    def pass_fds(self) -> tuple[int, ...]:
        return () if self.fd is None else (self.fd,)


# --------------------------------------------------------------------------------------------
# The runner
# --------------------------------------------------------------------------------------------


@dataclass
class Job:
    """A run being trained or evaluated by a child process."""

    spec: RunSpec
    run_dir: Path
    stage: Literal["train", "eval", "probe"]
    proc: subprocess.Popen
    log: Path
    fresh: bool = False  # trained from scratch in this session: its time counts for the ETA
    run_started: float = field(default_factory=time.monotonic)


class Runner:
    """Runs a list of RunSpecs, ``jobs`` at a time, from one thread (polling its children).

    Other suites (benchmarks/multitask.py) reuse it through a few hooks: :meth:`steps_of` (a run's
    length), :meth:`ready` (a run that waits for another), :meth:`record` (its eval.json) and
    ``probe`` (whether AtariARI games get ``auxrl probe``).
    """

    probe = True

    def __init__(
        self, out: Path, config: str, extra: list[str], steps: int, device: str, jobs: int, threads: int
    ):
        self.out, self.config, self.extra, self.steps = out, config, extra, steps
        self.device, self.jobs, self.threads = device, jobs, threads
        self.runs_dir, self.logs_dir = out / "runs", out / "logs"
        self.durations: dict[str, list[float]] = {"no_aux": [], "heads": []}
        self.failed: list[str] = []
        self.pass_fds: tuple[int, ...] = ()
        self.done = 0
        self.total = 0

    # ---------------------------------------------------------------- scheduling
    def run(self, specs: list[RunSpec]) -> int:
        """Train and score every unfinished run; 0 if all finished, 1 if any failed, 130 if stopped."""
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        lock = SuiteLock(self.out / ".lock")
        self.pass_fds = lock.pass_fds
        statuses = {s: self.status(s) for s in specs}
        todo = [s for s in specs if statuses[s] != "done"]
        self.total, self.done = len(specs), len(specs) - len(todo)
        kinds = ("done", "probe", "eval", "resume", "fresh")
        counts = {k: sum(v == k for v in statuses.values()) for k in kinds}
        print(
            f"[atari100k] {self.total} runs: {counts['done']} done, {counts['probe']} to probe, "
            f"{counts['eval']} to score, "
            f"{counts['resume']} to resume, {counts['fresh']} to start; {self.jobs} at a time. "
            f"ETA {self._eta(todo)}",
            flush=True,
        )
        running: list[Job] = []
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
        try:
            while todo or running:
                while todo and len(running) < self.jobs:
                    ready = [s for s in todo if self.ready(s)]
                    if not ready:
                        if not running:  # what they wait for failed or is not planned
                            for spec in todo:
                                self.failed.append(spec.name)
                                print(
                                    f"[atari100k] FAILED {spec.name}: what it needs did not finish",
                                    flush=True,
                                )
                            todo.clear()
                        break
                    todo.remove(ready[0])
                    job = self._start(ready[0])
                    if job is not None:
                        running.append(job)
                time.sleep(1.0)
                for job in list(running):
                    if job.proc.poll() is None:
                        continue
                    running.remove(job)
                    follow_up = self._finish(job, todo)
                    if follow_up is not None:
                        running.append(follow_up)
        except KeyboardInterrupt:
            self._stop(running)
            print("[atari100k] stopped; run the same command again to continue.", flush=True)
            return 130
        finally:
            signal.signal(signal.SIGTERM, previous)
        return 1 if self.failed else 0

    # ---------------------------------------------------------------- hooks
    def steps_of(self, spec: Any) -> int:
        """Agent steps of a finished run."""
        return self.steps

    def ready(self, spec: Any) -> bool:
        """Whether ``spec`` can start now (every run of this suite can)."""
        return True

    def status(self, spec: Any) -> Status:
        return run_status(self.runs_dir / spec.name, self.steps_of(spec), probe=self.probe)

    def record(self, job: Job) -> tuple[dict[str, Any], str]:
        """eval.json's content of a scored run, and how the log line states its score."""
        result = parse_eval_output(job.log.read_text())
        result.update(game=job.spec.game, variant=job.spec.variant, seed=job.spec.seed)
        hns = analysis.human_normalized(job.spec.game, result["score"])
        return result, f"score {result['score']:.1f} (HNS {hns:.3f})"

    def _start(self, spec: RunSpec) -> Job | None:
        run_dir = self.runs_dir / spec.name
        status = self.status(spec)  # may have changed since planning (e.g. another session)
        if status == "done":
            self.done += 1
            return None
        if status == "eval":
            return self._spawn(spec, run_dir, "eval", eval_command(run_dir, self.device))
        if status == "probe":
            return self._spawn(spec, run_dir, "probe", probe_command(run_dir, self.device))
        if status == "fresh" and run_dir.exists():
            print(f"[atari100k] {spec.name}: no checkpoint in its directory; starting it again", flush=True)
            shutil.rmtree(run_dir)
        if status == "resume":
            print(f"[atari100k] {spec.name}: resuming from step {checkpoint_step(run_dir):,}", flush=True)
        command = train_command(
            run_dir, spec if status == "fresh" else None, self.config, self.extra, self.device
        )
        job = self._spawn(spec, run_dir, "train", command)
        job.fresh = status == "fresh"
        return job

    def _spawn(
        self, spec: RunSpec, run_dir: Path, stage: Literal["train", "eval", "probe"], command: list[str]
    ) -> Job:
        log = self.logs_dir / f"{spec.name}.{stage}.log"
        proc = start_child(command, log, self.threads, self.pass_fds, append=stage == "train")
        print(f"[atari100k] {spec.name}: {stage} (log {log})", flush=True)
        return Job(spec, run_dir, stage, proc, log)

    def _finish(self, job: Job, todo: list[RunSpec]) -> Job | None:
        """Handle a child that exited; returns the eval job that follows a training job."""
        rc, name = job.proc.returncode, job.spec.name
        if rc != 0:
            return self._fail(job, f"{job.stage} exited with code {rc}")
        if job.stage == "train":
            step = checkpoint_step(job.run_dir)
            if step is None or step < self.steps_of(job.spec):
                return self._fail(job, f"training ended at step {step} < {self.steps_of(job.spec)}")
            follow = self._spawn(job.spec, job.run_dir, "eval", eval_command(job.run_dir, self.device))
            follow.run_started, follow.fresh = job.run_started, job.fresh
            return follow
        if job.stage == "probe":  # probe.json written by auxrl probe; the run is done
            self.done += 1
            print(f"[atari100k] {self.done}/{self.total} done: {name} probed", flush=True)
            return None
        try:
            result, said = self.record(job)
        except ValueError as err:
            return self._fail(job, str(err))
        seconds = time.monotonic() - job.run_started
        result.update(
            step=checkpoint_step(job.run_dir),
            checkpoint=str(job.run_dir / "checkpoints"),
            seconds=round(seconds, 1),
            date=dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        )
        write_json(job.run_dir / "eval.json", result)
        if job.fresh:
            self.durations[job.spec.kind].append(seconds)
        self.done += 1
        print(
            f"[atari100k] {self.done}/{self.total} done: {name} {said} "
            f"in {seconds / 60:.1f} min; ETA {self._eta(todo)}",
            flush=True,
        )
        if self.probe and wants_probe(job.run_dir, result["step"]):  # counted done already: the score is in
            self.done -= 1
            return self._spawn(job.spec, job.run_dir, "probe", probe_command(job.run_dir, self.device))
        return None

    def _fail(self, job: Job, why: str) -> None:
        self.failed.append(job.spec.name)
        tail = job.log.read_text().strip().splitlines()[-8:] if job.log.exists() else []
        print(f"[atari100k] FAILED {job.spec.name} ({why}); last lines of {job.log}:", flush=True)
        for line in tail:
            print(f"    {line}", flush=True)
        return None

    def _stop(self, running: list[Job]) -> None:
        """SIGINT to the children (the trainer saves a checkpoint), then wait for them."""
        for job in running:
            if job.proc.poll() is None:
                job.proc.send_signal(signal.SIGINT)
        for job in running:
            try:
                job.proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                job.proc.kill()

    # ---------------------------------------------------------------- progress
    def seconds_per_run(self, kind: str) -> float:
        """Mean measured seconds of a run of this kind (estimated before any finished)."""
        mine, other = self.durations[kind], self.durations["heads" if kind == "no_aux" else "no_aux"]
        if mine:
            return sum(mine) / len(mine)
        if other:
            ratio = DEFAULT_SECONDS[kind] / DEFAULT_SECONDS["heads" if kind == "no_aux" else "no_aux"]
            return ratio * sum(other) / len(other)
        return DEFAULT_SECONDS[kind]

    def _eta(self, todo: Sequence[RunSpec]) -> str:
        """Time left for ``todo`` at the mean seconds per run of each kind, ``jobs`` at a time."""
        if not todo:
            return "nothing left"
        seconds = sum(self.seconds_per_run(s.kind) for s in todo) / max(1, self.jobs)
        measured = ", ".join(
            f"{k} {sum(v) / len(v) / 60:.1f} min/run (n={len(v)})" for k, v in self.durations.items() if v
        )
        left = f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"
        basis = measured or "estimated: no run of this session finished yet"
        return f"~{left} for {len(todo)} runs ({basis})"


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


# --------------------------------------------------------------------------------------------
# The results directory's suite.json: settings, plans, commands
# --------------------------------------------------------------------------------------------


def device_slug(device: str) -> str:
    """``cpu`` or the GPU's name as a file-name slug (``nvidia-h200``)."""
    import torch

    from auxrl.device import resolve_device

    dev = resolve_device(device)
    if dev.type != "cuda":
        return dev.type
    return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(dev).lower()).strip("-")


def default_out_dir(slug: str, results: Path = REPO_ROOT / "benchmarks" / "results") -> Path:
    """The latest ``atari100k-<slug>-<date>`` results directory, or a new one dated today."""
    existing = sorted(p for p in results.glob(f"atari100k-{slug}-*") if (p / "suite.json").is_file())
    return existing[-1] if existing else results / f"atari100k-{slug}-{dt.date.today().isoformat()}"


# Set per run (game, seed, variant), so not part of the suite's settings.
PER_RUN_KEYS = ("name", "seed", "env.id", "aux.enabled", "aux.balance.method")


def resolved_config(config: str, extra: Sequence[str], steps: int) -> dict[str, Any]:
    """The suite's config with the common overrides, as a flat dotted dict (games and variants aside)."""
    from auxrl.config import to_dict
    from auxrl.configfile import flatten_dotted, load_config

    flat = flatten_dotted(to_dict(load_config(config, [*extra, f"ppo.total_steps={steps}"])))
    return {k: v for k, v in flat.items() if k not in PER_RUN_KEYS}


def load_suite(out: Path) -> dict[str, Any]:
    try:
        return json.loads((out / "suite.json").read_text())
    except (OSError, ValueError):
        return {}


def check_settings(suite: dict[str, Any], settings: dict[str, Any]) -> None:
    """Refuse to mix runs of different settings in one results directory.

    Only keys known to both are compared: a config key added to (or removed from) auxrl since
    the suite started is reported, not refused.
    """
    old = suite.get("settings")
    if not old:
        return
    new_keys = sorted(set(old) ^ set(settings))
    if new_keys:
        print(f"[atari100k] note: config keys added or removed since the suite started: {new_keys}")
    keys = sorted(k for k in set(old) & set(settings) if old[k] != settings[k])
    if keys:
        diff = "; ".join(f"{k}: {old.get(k)!r} before, {settings.get(k)!r} now" for k in keys[:8])
        raise SystemExit(
            f"[atari100k] this results directory holds runs of other settings ({diff}). "
            f"Use another --out-dir, or the same config, --steps and --extra as before."
        )


def merge_plan(suite: dict[str, Any], specs: list[RunSpec]) -> None:
    """Add the runs of this invocation to the phase's recorded plan (the union, in order)."""
    for spec in specs:
        plan = suite.setdefault("plans", {}).setdefault(spec.phase, [])
        if list(spec.key) not in plan:
            plan.append(list(spec.key))


def recorded_plan(suite: dict[str, Any], phase: str) -> list[RunSpec]:
    return [RunSpec(phase, g, v, int(s)) for g, v, s in suite.get("plans", {}).get(phase, [])]


# --------------------------------------------------------------------------------------------
# Analysis
# --------------------------------------------------------------------------------------------


def collect_scores(runs_dir: Path) -> list[analysis.Score]:
    """The scores in ``<runs_dir>/*/eval.json`` of runs whose latest checkpoint is the scored one,
    or that have no checkpoint left (finished in an earlier session or a fresh clone: eval.json is
    committed, checkpoints stay local; a run is only scored once trained to the end)."""
    scores = []
    for run_dir in sorted(runs_dir.glob("*__*__*")):
        result, step = read_eval(run_dir), checkpoint_step(run_dir)
        if result is None or (step is not None and result.get("step") != step):
            continue
        game, variant, seed = run_dir.name.split("__")
        scores.append(analysis.Score(game, variant, int(seed), float(result["score"])))
    return scores


def last_scored(runs_dir: Path) -> str:
    """When the last run was scored (``date`` in its eval.json; "?" if none is)."""
    dates = [str(r["date"]) for d in runs_dir.glob("*__*__*") if (r := read_eval(d)) and r.get("date")]
    return max(dates, default="?")  # ISO 8601 with the same offset: sorts as text


def screening_best(screen: analysis.PhaseAnalysis) -> tuple[str | None, str]:
    """The best heads variant of a complete screening, and why (or why none yet)."""
    if not screen.planned:
        return None, "no screening planned"
    if not screen.complete:
        return None, f"screening unfinished ({len(screen.missing)} of {len(screen.planned)} runs missing)"
    best = analysis.best_variant(screen.aggregates)
    if best is None:
        return None, "no heads variant finished in the screening"
    return best, f"highest screening IQM HNS ({screen.aggregates[best]['IQM'][0]:.3f})"


def write_curves(runs_dir: Path) -> None:
    """``curve.json`` (env step, episodic return) of every scored run that has its TensorBoard
    events: the compact form of its learning curve, committed instead of the raw event files."""
    from auxrl.plot import read_scalars

    for run_dir in sorted(runs_dir.glob("*__*__*")):
        if (run_dir / "curve.json").is_file() or read_eval(run_dir) is None:
            continue
        if not any(run_dir.glob("events.out.tfevents.*")):
            continue
        try:
            steps, returns = read_scalars(run_dir, "charts/episodic_return")
        except (OSError, ValueError):
            continue
        write_json(run_dir / "curve.json", {"step": steps.tolist(), "episodic_return": returns.tolist()})


def analyze(out: Path, suite: dict[str, Any], device: str, reps: int, plots: bool = True) -> Path:
    """Write results.md, results.json and the plots of everything finished under ``out``."""
    write_curves(out / "runs")
    scores = collect_scores(out / "runs")
    phases = {}
    for phase in ("screen", "final"):
        plan = recorded_plan(suite, phase)
        if plan:
            phases[phase] = analysis.analyze_phase(phase, [s.key for s in plan], scores, reps)
    best = {"variant": suite.get("best_variant"), "why": suite.get("best_variant_why", "")}
    if best["variant"] is None and "screen" in phases:
        best["variant"], best["why"] = screening_best(phases["screen"])
    written: dict[str, list[str]] = {}
    if plots:
        for name, a in phases.items():
            written[name] = _plots(out, name, a, reps)
    meta = {
        **setup_info(device),
        "started": suite.get("started", "?"),
        "last_scored": last_scored(out / "runs"),
        "config": suite.get("config", CONFIG),
        "config_summary": config_summary(suite.get("settings", {})),
        "commands": suite.get("commands", []),
        "jobs": suite.get("jobs", "?"),
        "rliable": _version("rliable"),
    }
    results = analysis.write_results(out, meta, phases, written, best)
    probes = {name: probe_summary(out / "runs", a, reps) for name, a in phases.items()}
    if any(probes.values()):  # the probes of the final checkpoints beside the returns
        with results.open("a") as f:
            f.write("\n" + probe_markdown(probes))
        data = json.loads((out / "results.json").read_text())
        data["probe"] = probes
        write_json(out / "results.json", data)
    return results


def probe_summary(runs_dir: Path, a: analysis.PhaseAnalysis, reps: int) -> dict[str, Any]:
    """Mean probe F1 (``auxrl probe``: AtariARI categories, then games) of every variant's final
    checkpoints and of their random-torso floors, with 95% stratified-bootstrap intervals, over the
    games where every planned run of the phase has been probed (a matched block, as for returns)."""
    found: dict[tuple[str, str, int], dict[str, Any]] = {}
    for game, variant, seed in a.planned:
        try:
            found[(game, variant, seed)] = json.loads(
                (runs_dir / f"{game}__{variant}__{seed}" / "probe.json").read_text()
            )["summary"]
        except (OSError, ValueError, KeyError):
            continue
    # Per game the seeds whose every variant is probed; the same number k of them on every game.
    complete = {
        g: sorted({s for gg, _, s in a.planned if gg == g and all((g, v, s) in found for v in a.variants)})
        for g in a.games
    }
    games = [g for g in a.games if complete[g]]
    if not games:
        return {}
    k = min(len(complete[g]) for g in games)
    library, metrics = analysis._rliable()

    def matrix(variant: str, key: str) -> np.ndarray:  # [k seeds, games]
        return np.array(
            [[float(found[(g, variant, complete[g][i])][key] or 0.0) for g in games] for i in range(k)]
        )

    out: dict[str, Any] = {"games": games, "seeds": {g: complete[g][:k] for g in games}}
    for key, label in (("f1_mean", "trained"), ("random_f1_mean", "random_floor")):
        scores = {v: matrix(v, key) for v in a.variants}
        with analysis.seeded_numpy(0):
            points, intervals = library.get_interval_estimates(
                scores, lambda x: np.array([metrics.aggregate_mean(x)]), reps=reps
            )
        out[label] = {
            v: (float(points[v][0]), float(intervals[v][0, 0]), float(intervals[v][1, 0])) for v in scores
        }
    return out


def probe_markdown(probes: dict[str, dict[str, Any]]) -> str:
    lines = [
        "## Probe F1 of the final checkpoints",
        "",
        f"`auxrl probe RUN --frames {PROBE_FRAMES} --seed 0` on every scored final checkpoint of an "
        "AtariARI game: linear probes of the frozen torso for the game's RAM variables (random-agent "
        "frames), weighted F1 averaged per category, then over categories; the random floor is the "
        "same architecture untrained. Mean over the matched games and seeds; 95% stratified-bootstrap "
        "intervals. A variant trained on the RAM labels (state_prediction) probes well by construction.",
        "",
    ]
    for phase, probe in probes.items():
        if not probe:
            continue
        lines += [
            f"{phase}: "
            + "; ".join(f"{g} seeds {', '.join(map(str, probe['seeds'][g]))}" for g in probe["games"]),
            "",
            "| variant | probe F1 (trained) | random-torso floor |",
            "|---|--:|--:|",
        ]
        for variant, (mean, low, high) in probe["trained"].items():
            floor = "{:.3f} [{:.3f}, {:.3f}]".format(*probe["random_floor"][variant])
            lines.append(f"| {variant} | {mean:.3f} [{low:.3f}, {high:.3f}] | {floor} |")
        lines.append("")
    return "\n".join(lines)


def _plots(out: Path, phase: str, a: analysis.PhaseAnalysis, reps: int) -> list[str]:
    written = []
    try:
        written += analysis.rliable_plots(a, out, reps)
    except Exception as err:  # a plot must never lose the tables
        print(f"[atari100k] rliable plots of {phase} failed: {type(err).__name__}: {err}", file=sys.stderr)
    for game in a.games:
        dirs = [out / "runs" / f"{g}__{v}__{s}" for g, v, s in a.planned if g == game]
        dirs = [d for d in dirs if any(d.glob("events.out.tfevents.*"))]
        if dirs:
            note = make_plot(dirs, out / f"curves-{phase}-{game}.png")
            if note.startswith("!["):
                written.append(f"curves-{phase}-{game}.png")
    return written


def config_summary(settings: dict[str, Any]) -> str:
    """The settings that define the budget and the protocol, in one line."""
    if not settings:
        return "?"
    keys = [
        "ppo.total_steps", "env.num_envs", "ppo.num_steps", "ppo.num_minibatches", "ppo.update_epochs",
        "ppo.lr", "ppo.anneal_lr", "env.sticky_actions", "env.episodic_life", "env.max_episode_frames",
        "perf.compile",
    ]  # fmt: skip
    return ", ".join(f"{k}={settings.get(k)}" for k in keys if k in settings)


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("--phase", choices=["screen", "final"], help="which runs to train")
    p.add_argument(
        "--analyze", action="store_true", help="only write results.md/json and plots of finished runs"
    )
    p.add_argument("--jobs", type=int, default=1, help="runs at a time (default 1)")
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of each run (default 1)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument(
        "--out-dir",
        type=Path,
        help="default: the latest benchmarks/results/atari100k-<device>-* with a suite.json, else a new one "
        "dated today",
    )
    p.add_argument(
        "--best-variant",
        choices=sorted(set(VARIANTS) - {"no_aux"}),
        help="heads variant of the final phase (default: the screening's best, once it is complete)",
    )
    p.add_argument(
        "--final-variants",
        nargs="+",
        choices=sorted(VARIANTS),
        help="the final phase's variants instead of no_aux and the best one; its baseline is the first of "
        f"{', '.join(analysis.BASELINES)} among them (e.g. no_aux_ram state_prediction: PPO alone on the "
        "same env path as the RAM labels)",
    )
    p.add_argument(
        "--games",
        nargs="+",
        help=f"instead of the phase's games (final: {' '.join(FINAL_GAMES)}; next: {' '.join(EXTRA_GAMES)})",
    )
    p.add_argument("--seeds", type=int, nargs="+", help="instead of the phase's seeds (e.g. 1 2 3 4 5)")
    p.add_argument(
        "--variants", nargs="+", choices=sorted(VARIANTS), help="screening variants instead of the default"
    )
    p.add_argument("--config", default=CONFIG, help="config name or path (default: atari100k)")
    p.add_argument("--steps", type=int, help="ppo.total_steps (default: the config's)")
    p.add_argument(
        "--extra", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides for every run"
    )
    p.add_argument("--reps", type=int, default=1000, help="bootstrap resamples of the CIs (default 1000)")
    p.add_argument("--no-plots", action="store_true", help="tables only")
    p.add_argument(
        "--dry-run", action="store_true", help="print the plan and each run's status, train nothing"
    )
    args = p.parse_args(argv)
    if not args.analyze and not args.phase:
        p.error("give --phase screen|final (or --analyze)")
    if args.jobs < 1 or args.threads < 1:
        p.error("--jobs and --threads must be >= 1")
    unknown = [g for g in args.games or [] if g not in analysis.RANDOM_SCORES]
    if unknown:
        p.error(
            f"no reference scores for {unknown}; Atari 100k games: {', '.join(analysis.ATARI_100K_GAMES)}"
        )
    return args


def phase_specs(args: argparse.Namespace, suite: dict[str, Any], out: Path) -> list[RunSpec]:
    """The runs this invocation trains."""
    if args.phase == "final" and args.final_variants:
        if not any(v in analysis.BASELINES for v in args.final_variants):
            raise SystemExit(
                f"[atari100k] --final-variants needs a baseline: one of {', '.join(analysis.BASELINES)}"
            )
        suite["best_variant"] = next(v for v in args.final_variants if v not in analysis.BASELINES)
        suite["best_variant_why"] = "chosen with --final-variants"
        print(f"[atari100k] final phase: {' vs '.join(args.final_variants)}", flush=True)
        return plan_runs("final", args.games or FINAL_GAMES, args.seeds or FINAL_SEEDS, args.final_variants)
    if args.phase == "screen":
        return plan_runs(
            "screen", args.games or SCREEN_GAMES, args.seeds or SCREEN_SEEDS, args.variants or SCREEN_VARIANTS
        )
    best = args.best_variant or suite.get("best_variant")
    if best is None:
        screen = analysis.analyze_phase(
            "screen", [s.key for s in recorded_plan(suite, "screen")], collect_scores(out / "runs"), args.reps
        )
        best, why = screening_best(screen)
        if best is None:
            raise SystemExit(
                f"[atari100k] no best heads variant for the final phase: {why}. Give --best-variant."
            )
        suite["best_variant_why"] = why
    elif args.best_variant:
        suite["best_variant_why"] = "chosen with --best-variant"
    suite["best_variant"] = best
    print(f"[atari100k] final phase: no_aux vs {best} ({suite['best_variant_why']})", flush=True)
    return plan_runs("final", args.games or FINAL_GAMES, args.seeds or FINAL_SEEDS, ["no_aux", best])


def check_variants(config: str, extra: Sequence[str], specs: list[RunSpec]) -> list[RunSpec]:
    """Drop the runs of variants whose config does not load (e.g. a key this auxrl lacks)."""
    from auxrl.config import ConfigError
    from auxrl.configfile import load_config

    bad: dict[str, str] = {}
    for variant in dict.fromkeys(s.variant for s in specs):
        try:
            load_config(config, [*extra, *VARIANTS[variant]])
        except ConfigError as err:
            bad[variant] = str(err)
    for variant, err in bad.items():
        print(f"[atari100k] skipping variant {variant!r}: its config does not load here ({err})", flush=True)
    return [s for s in specs if s.variant not in bad]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    use_checkout()
    from auxrl.configfile import load_config

    steps = args.steps or load_config(args.config).ppo.total_steps
    out = (args.out_dir or default_out_dir(device_slug(args.device))).resolve()
    out.mkdir(parents=True, exist_ok=True)
    suite = load_suite(out)
    print(f"[atari100k] results directory: {out}", flush=True)
    code = 0
    if args.phase and not args.analyze:
        settings = resolved_config(args.config, args.extra, steps)
        check_settings(suite, settings)
        suite.setdefault("started", dt.datetime.now().astimezone().isoformat(timespec="seconds"))
        suite.update(config=args.config, settings=settings, jobs=args.jobs)
        specs = phase_specs(args, suite, out)
        merge_plan(suite, specs)
        command = shlex.join(
            ["python", "benchmarks/atari100k.py", *(argv if argv is not None else sys.argv[1:])]
        )
        if command not in suite.setdefault("commands", []):
            suite["commands"].append(command)
        extra = [*args.extra, f"ppo.total_steps={steps}"]
        runnable = check_variants(args.config, extra, specs)
        if args.dry_run:
            for s in specs:
                status = run_status(out / "runs" / s.name, steps) if s in runnable else "skipped"
                print(f"  {s.phase:6} {s.name:32} {status}")
            return 0
        write_json(out / "suite.json", suite)
        runner = Runner(out, args.config, extra, steps, args.device, args.jobs, args.threads)
        code = runner.run(runnable)
        if code == 130:
            return code
    if not suite:
        raise SystemExit(f"[atari100k] {out} has no suite.json: nothing was run there yet.")
    results = analyze(out, suite, args.device, args.reps, plots=not args.no_plots)
    print(f"[atari100k] wrote {results}", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
