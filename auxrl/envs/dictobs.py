"""Dict observations (e.g. VizDoom's ``screen`` + game variables, MiniGrid's ``image`` +
``direction``) travel as one flat uint8 row per observation.

The env's Dict space stays the truth (checkpoints, ``predict``, the torso); on the way from the
env to the rollout storage, the replay and the device, each observation is packed by its
:class:`DictLayout`: vector keys first, as float32 bytes, then image keys as uint8 (channels,
height, width). So the storage, the minibatches and the host-to-device copies need no change,
images still cross as uint8, and the torso unpacks on the device (a slice and a view).

Keys: a ``uint8`` Box of 3 dims is an image, (C, H, W) or channel-last (H, W, C) (moved to
channels first when packed), a 2-dim uint8 Box a one-channel image; every other Box (and
Discrete, as its index) is a vector key, flattened to float32. Other spaces (Text, ...) are
refused: filter them out of the env first (``gymnasium.wrappers.FilterObservation``).
"""

from __future__ import annotations

import dataclasses
import math

import gymnasium as gym
import numpy as np
import torch


@dataclasses.dataclass(frozen=True)
class Key:
    """One key of a packed observation."""

    name: str
    shape: tuple[int, ...]  # as the torso sees it: images (C, H, W), vectors (n,)
    image: bool
    offset: int  # in bytes
    nbytes: int
    channel_last: bool = False  # an image the env gives as (H, W, C)


def _is_image(space: gym.Space) -> bool:
    return isinstance(space, gym.spaces.Box) and space.dtype == np.uint8 and len(space.shape) in (2, 3)


class DictLayout:
    """How the keys of a Dict observation space sit in one packed uint8 row."""

    def __init__(self, space: gym.spaces.Dict) -> None:
        keys: list[Key] = []
        offset = 0
        bad = [k for k, s in space.spaces.items() if not isinstance(s, gym.spaces.Box | gym.spaces.Discrete)]
        if bad:
            raise ValueError(
                f"observation keys {bad} are {[type(space.spaces[k]).__name__ for k in bad]} spaces; auxrl "
                f"takes Box (images, vectors) and Discrete keys. Drop them from the env "
                f"(gymnasium.wrappers.FilterObservation)."
            )
        # Vectors first: float32 fields at offsets that are multiples of 4.
        for name, sub in space.spaces.items():
            if not _is_image(sub):
                size = 1 if isinstance(sub, gym.spaces.Discrete) else math.prod(sub.shape)
                keys.append(Key(name, (size,), False, offset, 4 * size))
                offset += 4 * size
        for name, sub in space.spaces.items():
            if _is_image(sub):
                shape = tuple(sub.shape)
                last = len(shape) == 3 and shape[-1] in (1, 3, 4) and shape[0] not in (1, 3, 4)
                chw = (shape[2], shape[0], shape[1]) if last else shape if len(shape) == 3 else (1, *shape)
                keys.append(Key(name, chw, True, offset, math.prod(chw), last))
                offset += math.prod(chw)
        self.keys = keys
        self.nbytes = offset

    @property
    def image_keys(self) -> list[str]:
        return [k.name for k in self.keys if k.image]

    @property
    def vector_size(self) -> int:
        return sum(k.shape[0] for k in self.keys if not k.image)

    def packed_space(self) -> gym.spaces.Box:
        return gym.spaces.Box(0, 255, (self.nbytes,), np.uint8)

    def pack(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """A batch of dict observations (each value ``[N, ...]``) -> ``[N, nbytes]`` uint8."""
        n = len(next(iter(obs.values())))
        out = np.empty((n, self.nbytes), np.uint8)
        for k in self.keys:
            value = np.asarray(obs[k.name])
            if k.image:
                frames = np.moveaxis(value, -1, 1) if k.channel_last else value
                out[:, k.offset : k.offset + k.nbytes] = frames.reshape(n, -1)
            else:
                flat = value.reshape(n, -1).astype(np.float32)
                out[:, k.offset : k.offset + k.nbytes] = flat.view(np.uint8)
        return out

    def unpack(self, packed: torch.Tensor) -> dict[str, torch.Tensor]:
        """``[B, nbytes]`` uint8 (any leading dims) -> images uint8 ``[B, C, H, W]``, vectors
        float32 ``[B, n]``."""
        lead = packed.shape[:-1]
        out = {}
        for k in self.keys:
            part = packed[..., k.offset : k.offset + k.nbytes]
            if k.image:
                out[k.name] = part.reshape(*lead, *k.shape)
            else:
                out[k.name] = part.contiguous().view(torch.float32)
        return out

    def describe(self) -> str:
        return ", ".join(f"{k.name} {'image ' if k.image else ''}{k.shape}" for k in self.keys)


def sample_batch(space: gym.Space) -> np.ndarray:
    """One random observation of ``space`` as stored (a dict's packed row), with a batch dim."""
    if isinstance(space, gym.spaces.Dict):
        return DictLayout(space).pack({k: np.asarray(v)[None] for k, v in space.sample().items()})
    return np.asarray(space.sample())[None]


def transport_space(space: gym.Space) -> gym.Space:
    """The space observations have in the storage: ``space`` itself, or a Dict's packed row."""
    return DictLayout(space).packed_space() if isinstance(space, gym.spaces.Dict) else space


class ImageView:
    """The image frames that pixel tasks and augmentation work on: the observation itself (an
    image env), or one image key of a dict observation (``aux.image_key``; null: the only one).

    ``frames(obs)`` gives ``[..., C, H, W]`` uint8 from observations as stored; ``with_frames``
    puts (e.g. augmented) frames back, leaving a dict's other keys as they were.
    """

    def __init__(self, space: gym.Space, key: str | None = None) -> None:
        self.layout: DictLayout | None = None
        self.key: Key | None = None
        if not isinstance(space, gym.spaces.Dict):
            shape = tuple(space.shape or ())
            if len(shape) != 3 or np.dtype(space.dtype) != np.uint8:
                raise ValueError(
                    f"it needs uint8 image observations (stack, height, width), but this env's are {space}"
                )
            if key is not None:
                raise ValueError(
                    f"aux.image_key={key!r} names a key of dict observations, but this env's are {space}"
                )
            self.shape = shape
            return
        layout = DictLayout(space)
        images = layout.image_keys
        if not images:
            raise ValueError(f"this env's observations are a dict with no image key ({layout.describe()})")
        if key is None and len(images) > 1:
            raise ValueError(
                f"this env's dict observations have several image keys {images}; name one with aux.image_key"
            )
        name = key if key is not None else images[0]
        if name not in images:
            raise ValueError(f"aux.image_key={name!r} is not one of this env's image keys {images}")
        self.layout = layout
        self.key = next(k for k in layout.keys if k.name == name)
        self.shape = self.key.shape

    def frames(self, obs: torch.Tensor) -> torch.Tensor:
        if self.key is None:
            return obs
        k = self.key
        return obs[..., k.offset : k.offset + k.nbytes].reshape(*obs.shape[:-1], *k.shape)

    def with_frames(self, obs: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        if self.key is None:
            return frames
        k = self.key
        out = obs.clone()
        out[..., k.offset : k.offset + k.nbytes] = frames.reshape(*obs.shape[:-1], k.nbytes)
        return out
