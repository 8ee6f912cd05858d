"""Gymnasium spaces as tensors and plain Python values, and back.

Checkpoints store the spaces a model was built for; pickling the space objects would make
loading a checkpoint run arbitrary code (``torch.load(weights_only=False)``), so they are
stored as data that ``torch.load(weights_only=True)`` reads.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch


def to_plain(space: gym.Space) -> dict[str, Any]:
    """``space`` as a dict of tensors, ints and strings (see :func:`from_plain`)."""
    if isinstance(space, gym.spaces.Box):
        return {
            "type": "Box",
            "low": torch.from_numpy(np.array(space.low)),
            "high": torch.from_numpy(np.array(space.high)),
            "dtype": np.dtype(space.dtype).name,
        }
    if isinstance(space, gym.spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n), "start": int(space.start)}
    if isinstance(space, gym.spaces.MultiDiscrete):
        return {"type": "MultiDiscrete", "nvec": torch.from_numpy(np.array(space.nvec, dtype=np.int64))}
    if isinstance(space, gym.spaces.MultiBinary):
        return {"type": "MultiBinary", "n": [int(n) for n in np.atleast_1d(space.n)]}
    if isinstance(space, gym.spaces.Dict):
        return {"type": "Dict", "spaces": {k: to_plain(s) for k, s in space.spaces.items()}}
    if isinstance(space, gym.spaces.Tuple):
        return {"type": "Tuple", "spaces": [to_plain(s) for s in space.spaces]}
    raise TypeError(f"cannot store a {type(space).__name__} space in a checkpoint")


def from_plain(data: dict[str, Any]) -> gym.Space:
    """The space :func:`to_plain` stored."""
    kind = data["type"]
    if kind == "Box":
        dtype = np.dtype(data["dtype"])
        return gym.spaces.Box(
            data["low"].numpy().astype(dtype), data["high"].numpy().astype(dtype), dtype=dtype
        )
    if kind == "Discrete":
        return gym.spaces.Discrete(data["n"], start=data["start"])
    if kind == "MultiDiscrete":
        return gym.spaces.MultiDiscrete(data["nvec"].numpy())
    if kind == "MultiBinary":
        n = data["n"]
        return gym.spaces.MultiBinary(n[0] if len(n) == 1 else n)
    if kind == "Dict":
        return gym.spaces.Dict({k: from_plain(s) for k, s in data["spaces"].items()})
    if kind == "Tuple":
        return gym.spaces.Tuple([from_plain(s) for s in data["spaces"]])
    raise ValueError(f"unknown space type {kind!r} in the checkpoint")
