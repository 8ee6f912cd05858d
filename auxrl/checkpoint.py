"""Atomic, verified checkpoints: save, find the latest, load (falling back past broken files).

A checkpoint is written to a temporary file in the same directory and renamed over its final
name (``os.replace`` is atomic on POSIX and Windows), so a kill at any moment leaves either the
previous checkpoint or the new one, never a torn file; a kill mid-write can leave a
``.step_*.pt.*.tmp`` file, which the next ``auxrl train`` in that directory removes
(:func:`remove_stale_tmp`). ``latest`` is a one-line pointer written the same way.

Nothing non-finite is ever saved: :func:`save` refuses NaN/inf weights or optimizer state, so
a diverged run keeps its last good checkpoint as ``latest``. :func:`load` reads the newest
checkpoint that is intact; a truncated or corrupt one is reported, moved aside (renamed to
``<name>.corrupt``) and skipped.

Loading never runs code: a checkpoint holds tensors and plain Python values only (gym spaces and
RNG states are stored as data), and is read with ``torch.load(weights_only=True)``. A file that
needs full unpickling (auxrl's checkpoints before format 2, or a crafted file) is refused with
:class:`UnsafeCheckpoint`; :func:`convert` rewrites one the user trusts (``auxrl convert --trust``).

Each checkpoint carries its run's id (``run_id``, kept in the run directory's marker, see
auxrl/rundir.py): loading a run directory skips, with a warning, a checkpoint of another run that
was copied in, and pruning counts and deletes the run's own checkpoints only.
"""

from __future__ import annotations

import math
import os
import pickle
import random
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

CHECKPOINT_DIR = "checkpoints"
LATEST = "latest"
CORRUPT_SUFFIX = ".corrupt"
FORMAT = 2  # 2: loads with weights_only=True and names its run (1: pickled gym spaces and RNG states)
# Entries that hold no training numbers (gym spaces have infinite bounds; configs are validated).
_NOT_CHECKED = ("config", "spaces", "rng")


def atomic_write(path: Path, write: Any) -> None:
    """Call ``write(file_object)`` on a temp file beside ``path``, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # Not mkstemp: its files are private (0600). Mode 0666 less the umask (0644 usually), as any
    # other file the run writes, lets teammates evaluate or resume a run on shared storage.
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_stale_tmp(run_dir: str | Path) -> list[Path]:
    """Delete temp files left by a process killed mid-write (call only while holding the run)."""
    stale = sorted((Path(run_dir) / CHECKPOINT_DIR).glob(".*.tmp"))
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def rng_state(device: torch.device | None = None) -> dict[str, Any]:
    """Every RNG a run draws from, as tensors and plain values; on CUDA (``device``) only the
    training device's generator, so a run saved on an 8-GPU node resumes where fewer GPUs are
    visible. Without ``device``, no CUDA state is saved (or, in :func:`set_rng_state`, restored)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return plain_rng(state)


def plain_rng(state: dict[str, Any]) -> dict[str, Any]:
    """RNG states as :func:`torch.load` with ``weights_only=True`` reads them: numpy's state
    tuple (which holds an ndarray) becomes a dict with its keys as a tensor."""
    out = dict(state)
    numpy_state = state["numpy"]
    if isinstance(numpy_state, tuple):
        name, keys, pos, has_gauss, gauss = numpy_state
        out["numpy"] = {
            "name": str(name),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(gauss),
        }
    version, internal, gauss_next = state["python"]
    out["python"] = (int(version), tuple(int(x) for x in internal), gauss_next)
    return out


def set_rng_state(state: dict[str, Any], device: torch.device | None = None) -> None:
    # The setters take CPU ByteTensors only; .cpu() also rescues states mapped onto a device.
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    numpy_state = state["numpy"]
    if isinstance(numpy_state, dict):
        numpy_state = (
            numpy_state["name"],
            numpy_state["keys"].cpu().numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    np.random.set_state(numpy_state)
    torch.set_rng_state(torch.as_tensor(state["torch"]).cpu())
    if device is None or device.type != "cuda" or "cuda" not in state:
        return  # a CPU run, or a CPU checkpoint resumed on CUDA: the CUDA generator keeps its seed
    saved = state["cuda"]
    if isinstance(saved, (list, tuple)):  # older checkpoints: one state per visible GPU
        index = torch.cuda.current_device() if device.index is None else device.index
        if index >= len(saved):
            return
        saved = saved[index]
    torch.cuda.set_rng_state(torch.as_tensor(saved).cpu(), device)


def _numbers(obj: Any, where: str) -> Iterator[tuple[str, torch.Tensor | float]]:
    """Every floating-point tensor and Python float inside nested dicts/lists, with its path."""
    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point() or obj.is_complex():
            yield where, obj
    elif isinstance(obj, float):
        yield where, obj
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield from _numbers(value, f"{where}[{key!r}]" if where else str(key))
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            yield from _numbers(value, f"{where}[{i}]")


def first_non_finite(state: dict[str, Any]) -> str | None:
    """The path of the first NaN/inf value in ``state`` (weights, optimizer, counters), or None."""
    found = [(w, v) for k, v in state.items() if k not in _NOT_CHECKED for w, v in _numbers(v, k)]
    floats = [w for w, v in found if isinstance(v, float) and not math.isfinite(v)]
    tensors = [(w, v) for w, v in found if isinstance(v, torch.Tensor) and v.numel()]
    if tensors:
        # One flag per tensor, stacked on its device: one host copy per device (the training
        # device, and the CPU for the step counters and buffers kept there), not one per tensor.
        by_device: dict[torch.device, list[int]] = {}
        for i, (_, v) in enumerate(tensors):
            by_device.setdefault(v.device, []).append(i)
        ok = [True] * len(tensors)
        for indices in by_device.values():
            flags = torch.stack([torch.isfinite(tensors[i][1]).all() for i in indices]).cpu().tolist()
            for i, good in zip(indices, flags, strict=True):
                ok[i] = bool(good)
        floats += [w for (w, _), good in zip(tensors, ok, strict=True) if not good]
    return floats[0] if floats else None


def save(run_dir: Path, state: dict[str, Any], step: int, keep: int = 3, run_id: str | None = None) -> Path:
    """Write ``state`` as ``checkpoints/step_<step>.pt``, point ``latest`` at it, prune old ones.

    The file also records :data:`FORMAT` and ``run_id`` (the run it belongs to). Pruning keeps the
    newest ``keep`` checkpoints of that run: another run's checkpoint copied into the directory is
    neither counted nor deleted. Raises ValueError, writing nothing, when ``state`` holds a NaN or
    infinite number.
    """
    ckpt_dir = Path(run_dir) / CHECKPOINT_DIR
    bad = first_non_finite(state)
    if bad is not None:
        try:
            kept = f"{find(run_dir).name} stays the latest checkpoint"
        except FileNotFoundError:
            kept = "no checkpoint exists yet"
        raise ValueError(
            f"Refusing to save a checkpoint at step {step:,}: {bad} holds NaN or infinite values "
            f"(training diverged). Nothing was written; {kept}. Likely causes: too high a "
            f"learning rate (ppo.lr) or an auxiliary task's weight (aux.tasks.<name>.weight)."
        )
    path = ckpt_dir / f"step_{step:012d}.pt"
    payload = {**state, "format": FORMAT, "run_id": run_id}
    try:
        atomic_write(path, lambda f: torch.save(payload, f))
    except OSError as err:  # e.g. a full disk: say which file could not be written
        err.filename = err.filename or str(path)
        raise
    atomic_write(ckpt_dir / LATEST, lambda f: f.write(path.name.encode()))
    if keep > 0:
        own = [p for p in sorted(ckpt_dir.glob("step_*.pt")) if p == path or owner(p) == run_id]
        for stale in own[:-keep]:
            if stale != path:
                stale.unlink(missing_ok=True)
    return path


_owners: dict[tuple[str, int, int], str | None] = {}


def owner(path: Path) -> str | None:
    """The ``run_id`` a checkpoint file records; None when it has none or cannot be read safely.

    Reads only the file's small pickled part (tensors are memory-mapped, not read), once per
    version of the file.
    """
    try:
        stat = path.stat()
    except OSError:
        return None
    key = (str(path), stat.st_mtime_ns, stat.st_size)
    if key not in _owners:
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            _owners[key] = saved.get("run_id") if isinstance(saved, dict) else None
        except Exception:  # unreadable, old format or crafted: not this run's
            _owners[key] = None
    return _owners[key]


def candidates(run_dir: str | Path) -> list[Path]:
    """A run's checkpoint files, the one ``latest`` names first, then newest to oldest."""
    ckpt_dir = Path(run_dir) / CHECKPOINT_DIR
    found = sorted(ckpt_dir.glob("step_*.pt"), reverse=True)
    pointer = ckpt_dir / LATEST
    if pointer.is_file():
        target = ckpt_dir / pointer.read_text().strip()
        if target in found:
            found.remove(target)
            found.insert(0, target)
    return found


def find(run_dir_or_file: str | Path) -> Path:
    """A checkpoint file, or the latest checkpoint of a run directory (not read)."""
    path = Path(run_dir_or_file)
    if path.is_file():
        return path
    found = candidates(path)
    if found:
        return found[0]
    raise FileNotFoundError(
        f"No checkpoint in {path}: expected a .pt file or a run directory with "
        f"{CHECKPOINT_DIR}/step_*.pt (written by `auxrl train`)."
    )


class UnreadableCheckpoint(ValueError):
    """A truncated or corrupt checkpoint file (a run directory's are moved aside and skipped)."""


class UnsafeCheckpoint(ValueError):
    """A file that only full unpickling could load, which may run code: never loaded."""


def _convert_hint(path: Path) -> str:
    return (
        f"{path} cannot be loaded safely: it holds Python objects whose unpickling may run code (a "
        f"checkpoint written by auxrl before checkpoint format {FORMAT}, or a file not written by "
        f"auxrl). It was not loaded. If you trust where it came from, convert it once with "
        f"`auxrl convert --trust {path}`."
    )


def _read(path: Path) -> dict[str, Any]:
    # weights_only=True: tensors and plain Python values only; nothing in the file can run code.
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights only load failed" in str(err).lower():
            raise UnsafeCheckpoint(_convert_hint(path)) from None
        raise UnreadableCheckpoint(
            f"{path} is not a readable checkpoint (corrupt: {_first_line(err)})"
        ) from None
    except MemoryError:
        raise
    except Exception as err:  # truncated zip, bad pickle, ...: all mean "not a usable file"
        raise UnreadableCheckpoint(
            f"{path} is not a readable checkpoint (truncated or corrupt: {_first_line(err)})"
        ) from None
    if not isinstance(saved, dict):
        raise ValueError(f"{path} is not an auxrl checkpoint (it holds a {type(saved).__name__})")
    return saved


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _move_aside(path: Path) -> str:
    try:
        path.rename(path.with_name(path.name + CORRUPT_SUFFIX))
        return f"moved aside to {path.name}{CORRUPT_SUFFIX}"
    except OSError:  # a read-only run directory: leave it, it is skipped every time
        return "left in place"


def load(
    run_dir_or_file: str | Path,
    device: torch.device | str = "cpu",
    repair: bool = True,
    run_id: str | None = None,
) -> dict[str, Any]:
    """A checkpoint file, or the newest intact checkpoint of a run directory.

    Broken files of a run directory are skipped with a warning naming them (and renamed to
    ``<name>.corrupt`` so they are not tried again); a broken file given by path is an error.
    With ``run_id`` (the run directory's id), a checkpoint of another run is skipped with a
    warning and left in place. A file that could only be loaded by running code raises
    :class:`UnsafeCheckpoint`. ``repair=False`` only reads: no warning, no rename.
    The model's weights are placed on ``device``; everything else (optimizer state, RNG states)
    stays on the CPU: ``optimizer.load_state_dict`` moves its state to the parameters' device,
    and RNG setters only take CPU tensors.
    """
    path = Path(run_dir_or_file)
    if path.is_file():
        return _on_device(_read(path), device)
    broken, foreign = [], []
    for candidate in candidates(path):
        try:
            saved = _read(candidate)
        except UnreadableCheckpoint as err:
            broken.append(candidate.name)
            if repair:
                _warn(f"{err}; {_move_aside(candidate)}, trying an older one.")
            continue
        if run_id is not None and saved.get("run_id") != run_id:
            foreign.append(candidate.name)
            if repair:
                _warn(
                    f"ignoring {candidate}: it belongs to another run (run id {saved.get('run_id')}, env "
                    f"{_env_id(saved)}), not to {path} (run id {run_id}); left in place, trying an older one."
                )
            continue
        if (broken or foreign) and repair:
            _warn(f"using {candidate} instead of {', '.join(broken + foreign)}.")
        return _on_device(saved, device)
    if broken or foreign:
        what = [f"{', '.join(broken)} cannot be read"] if broken else []
        what += [f"{', '.join(foreign)} belong(s) to another run (left in place)"] if foreign else []
        move = ", after moving the other run's files out" if foreign else ""
        raise ValueError(
            f"No intact checkpoint of this run in {path}: {'; '.join(what)}. Start the run again in a "
            f"new --run-dir (or with --overwrite{move})."
        )
    return _on_device(_read(find(path)), device)  # raises FileNotFoundError: no checkpoint at all


_warned: set[str] = set()


def _warn(message: str) -> None:
    """A warning on stderr, once per process (resuming reads the run's checkpoints twice)."""
    if message not in _warned:
        _warned.add(message)
        print(f"auxrl: warning: {message}", file=sys.stderr)


def _env_id(saved: dict[str, Any]) -> str:
    config = saved.get("config")
    env = config.get("env") if isinstance(config, dict) else None
    return str(env.get("id")) if isinstance(env, dict) else "unknown"


def convert(path: Path, run_id: str | None) -> bool:
    """Rewrite a checkpoint the user trusts in the current format (``auxrl convert --trust``).

    Unpickles ``path`` fully, which runs any code it holds: only for files from a trusted source.
    Gym spaces and RNG states become plain data; the file records ``run_id`` (its run directory's,
    or a new one for a file outside a run). Written atomically over ``path``; nothing is lost.
    Returns False when the file was already in the current format (left as it is).
    """
    try:
        _read(path)
        return False
    except UnsafeCheckpoint:
        pass
    try:
        saved = torch.load(path, map_location="cpu", weights_only=False)
    except ModuleNotFoundError as err:  # pickled by another install: keep it, say what it needs
        raise ValueError(
            f"{path} needs the Python module {err.name!r}, which this installation lacks (written "
            f"with other versions of auxrl's dependencies, or damaged): install it, then convert again."
        ) from None
    if not isinstance(saved, dict) or not isinstance(saved.get("model"), dict):
        raise ValueError(f"{path} is not an auxrl checkpoint (no 'model' weights): nothing converted.")
    from auxrl.envs.spaces import to_plain

    if "spaces" in saved:
        saved["spaces"] = [s if isinstance(s, dict) else to_plain(s) for s in saved["spaces"]]
    if "rng" in saved:
        saved["rng"] = plain_rng(saved["rng"])
    saved["format"], saved["run_id"] = FORMAT, run_id
    atomic_write(path, lambda f: torch.save(saved, f))
    _read(path)  # the rewritten file loads safely, or this raises
    return True


def _on_device(saved: dict[str, Any], device: torch.device | str) -> dict[str, Any]:
    if isinstance(saved.get("model"), dict) and torch.device(device) != torch.device("cpu"):
        model = saved["model"]
        saved["model"] = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in model.items()}
    return saved
