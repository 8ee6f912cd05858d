"""Run directories: one run per directory, never two mixed, and one process training it at a time.

``auxrl train`` starts a run in a directory in one of four ways (:func:`plan`):

* ``fresh``: the directory does not exist or is empty of runs;
* ``resume``: ``--resume`` and the run has a checkpoint: continue from it;
* ``restart``: the run there stopped before its first checkpoint (a crash or a kill), with or
  without ``--resume``: there is nothing to continue, so it starts again from step 0 and the
  dead process's config.yaml and TensorBoard files are deleted (their steps would be mixed in);
* ``overwrite``: ``--overwrite``: the run there is deleted and a new one started.

A directory holding a run with a checkpoint is refused without ``--resume`` or ``--overwrite``,
and so is one holding a config.yaml or TensorBoard files that no auxrl run wrote (a run marks
its directory with ``.auxrl-run``: a user's own config.yaml is never taken for a dead run and
deleted), and one inside another run's directory or holding runs itself (TensorBoard would
mix them).
Nothing is created or deleted until the run has started up (config, envs, model and checkpoint
all fine, see :func:`claim`), so a start-up error leaves the directory as it was, or absent.
While a run trains it holds an advisory lock on its directory (``flock``, released by the OS
even on ``kill -9``), so a second ``auxrl train`` there is refused instead of mixing in.
The marker holds the run's id, which every checkpoint of the run records (auxrl/checkpoint.py):
a checkpoint of another run copied into the directory is never resumed from nor counted.
"""

from __future__ import annotations

import itertools
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from auxrl import checkpoint

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; runs are still checked, not locked
    fcntl = None  # type: ignore[assignment]

CONFIG_FILE = "config.yaml"
EVENTS_GLOB = "events.out.tfevents.*"
MARKER = ".auxrl-run"  # written when a run claims its directory
Start = Literal["fresh", "resume", "restart", "overwrite"]


@dataclass
class Contents:
    """What of a run a directory holds."""

    config: bool
    events: list[Path]
    checkpoints: list[Path]
    broken: list[Path]  # checkpoints moved aside as unreadable (*.corrupt)
    marked: bool  # an auxrl run claimed this directory
    older_run: bool  # events beside a config.yaml as auxrl writes it: a run from before the marker

    @property
    def holds_run(self) -> bool:
        return self.marked or bool(self.checkpoints or self.broken) or self.older_run

    @property
    def foreign(self) -> list[str]:
        """Files a run would replace that no auxrl run wrote (e.g. the user's own config.yaml)."""
        found = []
        if not self.holds_run and self.config:
            found.append(CONFIG_FILE)
        if not self.holds_run and self.events:
            found.append(f"{len(self.events)} TensorBoard file(s)")
        return found


def contents(run_dir: Path) -> Contents:
    config = (run_dir / CONFIG_FILE).is_file()
    events = sorted(run_dir.glob(EVENTS_GLOB))
    return Contents(
        config=config,
        events=events,
        checkpoints=checkpoint.candidates(run_dir),
        broken=sorted((run_dir / checkpoint.CHECKPOINT_DIR).glob(f"*{checkpoint.CORRUPT_SUFFIX}")),
        marked=_is_run(run_dir),
        older_run=config and bool(events) and _written_by_auxrl(run_dir / CONFIG_FILE),
    )


def _written_by_auxrl(config: Path) -> bool:
    """A fully resolved auxrl config (every section, as ``save_config`` writes it), not a user's
    own file: only then may an unmarked directory's config and events be taken for a dead run."""
    import yaml

    try:
        data = yaml.safe_load(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    sections = {"name", "seed", "env", "model", "ppo", "aux", "curriculum", "log"}
    return isinstance(data, dict) and sections <= set(data)


def run_id(run_dir: str | Path) -> str | None:
    """The id in a run directory's marker; None for no marker, or a marker written before ids."""
    try:
        text = (Path(run_dir) / MARKER).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "run_id" and value.strip():
            return value.strip()
    return None


def write_marker(run_dir: Path, run: str) -> None:
    (run_dir / MARKER).write_text(
        f"auxrl run directory (config.yaml, TensorBoard events, checkpoints/)\nrun_id: {run}\n",
        encoding="utf-8",
    )


def _is_run(path: Path) -> bool:
    return os.path.isfile(path / MARKER)  # False, not PermissionError, in a folder we cannot read


def _check_not_nested(run_dir: Path) -> None:
    """A run inside another run's directory, or around other runs, mixes in their TensorBoard."""
    resolved = run_dir.resolve()
    outer = next((p for p in resolved.parents if _is_run(p)), None)
    if outer is not None:
        raise ValueError(
            f"{run_dir} is inside the run directory {outer}: TensorBoard would mix the two runs. "
            f"Give a --run-dir outside it."
        )
    if run_dir.is_dir() and not _is_run(run_dir):
        inner = _run_below(run_dir)
        if inner is not None:
            raise ValueError(
                f"{run_dir} holds other runs ({inner.relative_to(run_dir)}, ...): a run written around "
                f"them would mix into their TensorBoard view. Give a --run-dir of its own, e.g. "
                f"{run_dir / 'new_run'}."
            )


def _run_below(folder: Path, depth: int = 3, budget: int = 10_000) -> Path | None:
    """A run directory up to ``depth`` levels below ``folder`` (``runs/<run>`` is two), looking
    at no more than ``budget`` folders (``--run-dir ~`` must not walk the whole home)."""
    level = [folder]
    for _ in range(depth):
        below = []
        for parent in level:
            try:
                children = sorted(e.path for e in os.scandir(parent) if e.is_dir(follow_symlinks=False))
            except OSError:
                continue
            for child in map(Path, children):
                if _is_run(child):
                    return child
                below.append(child)
                budget -= 1
                if budget <= 0:
                    return None
        level = below
    return None


def new_default(name: str, seed: int, root: str | Path = "runs") -> Path:
    """``runs/<name>__<seed>__<time>``, created now so that a run started in the same second
    (a shell loop with ``&``) gets ``-2`` (``-3``, ...) instead of the same directory (see
    :func:`default_run_dir`, which removes it again should the run not start)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    base = f"{name}__{seed}__{time.strftime('%Y%m%d-%H%M%S')}"
    for i in itertools.count(1):
        path = root / (base if i == 1 else f"{base}-{i}")
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path
    raise AssertionError("unreachable")


def remove_if_empty(path: str | Path) -> None:
    try:
        Path(path).rmdir()
    except OSError:  # not empty (the run started), or already gone
        pass


@contextmanager
def default_run_dir(name: str, seed: int) -> Iterator[Path]:
    """:func:`new_default`, removed again on leaving if the run never wrote to it."""
    path = new_default(name, seed)
    try:
        yield path
    finally:
        remove_if_empty(path)


def plan(run_dir: str | Path, *, resume: bool, overwrite: bool = False) -> Start:
    """How a run starts in ``run_dir``; a ValueError with the ways forward when it must not."""
    run_dir = Path(run_dir)
    if resume and overwrite:
        raise ValueError("--resume continues the run in a directory and --overwrite deletes it: give one.")
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"Run directory {run_dir} is a file. Give a directory with --run-dir.")
    if not resume:  # a run nested before the check existed still resumes
        _check_not_nested(run_dir)
    found = contents(run_dir)
    if found.broken and not found.checkpoints and not overwrite:
        names = ", ".join(p.name for p in found.broken)
        raise ValueError(
            f"Every checkpoint in {run_dir} is unreadable (moved aside: {names}): there is nothing to "
            f"continue. Start again in a new --run-dir, or add --overwrite to delete this run."
        )
    if resume:
        if found.checkpoints:
            return "resume"
        if found.holds_run and found.config:
            return "restart"
        replace = f" --overwrite (it replaces {' and '.join(found.foreign)})" if found.foreign else ""
        raise FileNotFoundError(
            f"Nothing to resume in {run_dir}: no checkpoint and no config.yaml of a run. Start one "
            f"with `auxrl train CONFIG --run-dir {run_dir}{replace}`."
        )
    if overwrite and (found.holds_run or found.foreign):
        return "overwrite"
    if found.foreign:
        raise ValueError(
            f"{run_dir} holds {' and '.join(found.foreign)} that no auxrl run wrote; a run there "
            f"would replace them. Train in another --run-dir, or add --overwrite to delete them."
        )
    if not found.holds_run:
        return "fresh"
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
    run_id: str = ""  # written into every checkpoint of the run

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor drops the flock
            self.fd = None

    def abandon(self, start: Start) -> None:
        """The run failed before it started: release the directory, and after a ``fresh`` start
        remove what it wrote (the directory held no run before), so nothing is left behind."""
        if start == "fresh":
            for path in [self.path / MARKER, self.path / CONFIG_FILE, *self.path.glob(EVENTS_GLOB)]:
                path.unlink(missing_ok=True)
        self.release()


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


def claim(run_dir: str | Path, start: Start, resumed_id: str | None = None) -> tuple[Claim, list[str]]:
    """Create and lock ``run_dir``, then clear what ``start`` replaces; returns notes for the user.

    A new run gets a new id; a resumed one keeps the marker's, or (a run from before ids, or a
    lost marker) takes ``resumed_id``, the id of the checkpoint it resumes from.
    Stale checkpoint temp files (a kill during a write) are removed in every case.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    held = Claim(run_dir, _lock(run_dir))
    notes = []
    try:
        found = contents(run_dir)  # again, now that no other process can change it
        if start == "fresh" and (found.holds_run or found.foreign):  # another process got here meanwhile
            raise ValueError(f"{run_dir} now holds a run: continue it with --resume {run_dir}.")
        if start in ("restart", "overwrite"):
            if start == "restart" and found.checkpoints:  # another process got one in meanwhile
                raise ValueError(
                    f"{run_dir}: another auxrl train wrote a checkpoint there while this one was starting; "
                    f"continue from it with `auxrl train --resume {run_dir}` (run it again if you did)."
                )
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
        if start == "resume":
            held.run_id = run_id(run_dir) or resumed_id or uuid.uuid4().hex
        else:
            held.run_id = uuid.uuid4().hex
        write_marker(run_dir, held.run_id)
        stale = checkpoint.remove_stale_tmp(run_dir)
        if stale:
            notes.append(f"Removed {len(stale)} unfinished checkpoint write(s) of a killed process.")
    except BaseException:
        held.release()
        raise
    return held, notes


def read_checkpoint(run_dir_or_checkpoint: str | Path, *keys: str) -> dict[str, Any]:
    """``checkpoint.load``, refusing a file that lacks the entries ``keys`` (a .pt not written by
    ``auxrl train``)."""
    path = Path(run_dir_or_checkpoint)
    # A run directory: its own newest checkpoint (not one copied in from another run).
    saved = checkpoint.load(path, run_id=None if path.is_file() else run_id(path))
    missing = [
        key
        for key in keys
        if key not in saved or key in ("config", "model") and not isinstance(saved[key], dict)
    ]
    if missing:
        name = path if path.is_file() else checkpoint.find(path)
        raise ValueError(
            f"{name} is not an auxrl checkpoint (it lacks {', '.join(map(repr, missing))}): give a run "
            f"directory or a checkpoints/step_*.pt file written by `auxrl train`."
        )
    return saved
