"""Run directories: one run per directory, never two mixed, and one process training it at a time.

``auxrl train`` starts a run in a directory in one of four ways (:func:`plan`):

* ``fresh``: the directory does not exist or holds no run;
* ``resume``: ``--resume`` and the run has a checkpoint: continue from it;
* ``restart``: the run there stopped before its first checkpoint (a crash or a kill), with or
  without ``--resume``: there is nothing to continue, so it starts again from step 0 and the
  dead process's config.yaml and TensorBoard files are deleted (their steps would be mixed in);
* ``overwrite``: ``--overwrite``: the run there is deleted and a new one started.

A directory holding a run with a checkpoint is refused without ``--resume`` or ``--overwrite``.
Nothing is created or deleted until the run has started up (config, envs, model and checkpoint
all fine, see :func:`claim`), so a start-up error leaves the directory as it was, or absent.
While a run trains it holds an advisory lock on its directory (``flock``, released by the OS
even on ``kill -9``), so a second ``auxrl train`` there is refused instead of mixing in.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from auxrl import checkpoint

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; runs are still checked, not locked
    fcntl = None  # type: ignore[assignment]

CONFIG_FILE = "config.yaml"
EVENTS_GLOB = "events.out.tfevents.*"
Start = Literal["fresh", "resume", "restart", "overwrite"]


@dataclass
class Contents:
    """What of a run a directory holds."""

    config: bool
    events: list[Path]
    checkpoints: list[Path]

    @property
    def holds_run(self) -> bool:
        return self.config or bool(self.events) or bool(self.checkpoints)


def contents(run_dir: Path) -> Contents:
    return Contents(
        config=(run_dir / CONFIG_FILE).is_file(),
        events=sorted(run_dir.glob(EVENTS_GLOB)),
        checkpoints=checkpoint.candidates(run_dir),
    )


def plan(run_dir: str | Path, *, resume: bool, overwrite: bool = False) -> Start:
    """How a run starts in ``run_dir``; a ValueError with the ways forward when it must not."""
    run_dir = Path(run_dir)
    if resume and overwrite:
        raise ValueError("--resume continues the run in a directory and --overwrite deletes it: give one.")
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"Run directory {run_dir} is a file. Give a directory with --run-dir.")
    found = contents(run_dir)
    if resume:
        if found.checkpoints:
            return "resume"
        if found.config:
            return "restart"
        raise FileNotFoundError(
            f"Nothing to resume in {run_dir}: no checkpoint and no config.yaml of a run. Start one "
            f"with `auxrl train CONFIG --run-dir {run_dir}`."
        )
    if not found.holds_run:
        return "fresh"
    if overwrite:
        return "overwrite"
    if found.checkpoints:
        raise ValueError(
            f"{run_dir} already holds a run (checkpoint {found.checkpoints[0].name}). Continue it "
            f"with `auxrl train --resume {run_dir}`, train in another --run-dir, or add --overwrite "
            f"to delete that run and start again."
        )
    return "restart"  # died before its first checkpoint: nothing to keep


@dataclass
class Claim:
    """A run directory held by this process until :meth:`release`."""

    path: Path
    fd: int | None

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor drops the flock
            self.fd = None


def _lock(run_dir: Path) -> int | None:
    if fcntl is None:
        return None
    fd = os.open(run_dir, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ValueError(
            f"{run_dir} is in use: another `auxrl train` is running there. Wait for it to finish "
            f"(or stop it), or train in another --run-dir."
        ) from None
    return fd


def claim(run_dir: str | Path, start: Start) -> tuple[Claim, list[str]]:
    """Create and lock ``run_dir``, then clear what ``start`` replaces; returns notes for the user.

    Stale checkpoint temp files (a kill during a write) are removed in every case.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    held = Claim(run_dir, _lock(run_dir))
    notes = []
    try:
        found = contents(run_dir)  # again, now that no other process can change it
        if start == "fresh" and found.holds_run:  # another process started a run here meanwhile
            raise ValueError(f"{run_dir} now holds a run: continue it with --resume {run_dir}.")
        if start in ("restart", "overwrite"):
            if start == "restart" and found.checkpoints:  # another process got one in meanwhile
                raise ValueError(f"{run_dir} now holds a checkpoint: continue it with --resume {run_dir}.")
            for path in found.events:
                path.unlink()
            (run_dir / CONFIG_FILE).unlink(missing_ok=True)
            if start == "overwrite":
                shutil.rmtree(run_dir / checkpoint.CHECKPOINT_DIR, ignore_errors=True)
            what = "stopped before its first checkpoint" if start == "restart" else "is overwritten"
            notes.append(
                f"The run in {run_dir} {what}: starting again from step 0 (removed its config.yaml"
                f"{' and checkpoints' if start == 'overwrite' else ''} and {len(found.events)} "
                f"TensorBoard file(s))."
            )
        stale = checkpoint.remove_stale_tmp(run_dir)
        if stale:
            notes.append(f"Removed {len(stale)} unfinished checkpoint write(s) of a killed process.")
    except BaseException:
        held.release()
        raise
    return held, notes
