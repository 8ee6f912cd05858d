"""Atomic checkpoints: save, find the latest, load.

A checkpoint is written to a temporary file in the same directory and renamed over its final
name (``os.replace`` is atomic on POSIX and Windows), so a kill at any moment leaves either the
previous checkpoint or the new one, never a torn file. ``latest`` is a one-line pointer written
the same way.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

CHECKPOINT_DIR = "checkpoints"
LATEST = "latest"


def atomic_write(path: Path, write: Any) -> None:
    """Call ``write(file_object)`` on a temp file beside ``path``, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(run_dir: Path, state: dict[str, Any], step: int, keep: int = 3) -> Path:
    """Write ``state`` as ``checkpoints/step_<step>.pt``, point ``latest`` at it, prune old ones."""
    ckpt_dir = Path(run_dir) / CHECKPOINT_DIR
    path = ckpt_dir / f"step_{step:012d}.pt"
    atomic_write(path, lambda f: torch.save(state, f))
    atomic_write(ckpt_dir / LATEST, lambda f: f.write(path.name.encode()))
    old = sorted(ckpt_dir.glob("step_*.pt"))[:-keep] if keep > 0 else []
    for stale in old:
        if stale != path:
            stale.unlink(missing_ok=True)
    return path


def find(run_dir_or_file: str | Path) -> Path:
    """A checkpoint file, or the latest checkpoint of a run directory."""
    path = Path(run_dir_or_file)
    if path.is_file():
        return path
    ckpt_dir = path / CHECKPOINT_DIR
    pointer = ckpt_dir / LATEST
    if pointer.is_file():
        target = ckpt_dir / pointer.read_text().strip()
        if target.is_file():
            return target
    found = sorted(ckpt_dir.glob("step_*.pt"))
    if found:
        return found[-1]
    raise FileNotFoundError(
        f"No checkpoint in {path}: expected a .pt file or a run directory with "
        f"{CHECKPOINT_DIR}/step_*.pt (written by `auxrl train`)."
    )


def load(run_dir_or_file: str | Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    # Checkpoints hold numpy RNG state and plain config dicts, so full unpickling is needed;
    # only load checkpoints you trust (as with any torch.load of a pickle).
    return torch.load(find(run_dir_or_file), map_location=device, weights_only=False)
