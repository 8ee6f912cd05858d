"""Image observations of any gymnasium env, made ready for the conv torsos: ``(channels, height,
width)`` uint8, optionally grey, resized and frame-stacked (``env.options`` of the gymnasium
family: ``grayscale``, ``resize``, ``frame_stack``, ``channels_first``).

Each step is done by gymnasium's own wrappers per env (GrayscaleObservation, ResizeObservation,
FrameStackObservation; the resize needs OpenCV, ``pip install "auxrl[atari-modes]"``), in the
order the Atari preprocessing uses: grey, resize, then stack; the stacked frames' channels are
merged, so a stack of k colour frames is ``(3k, H, W)``.
"""

from __future__ import annotations

from collections.abc import Callable

import gymnasium as gym
import numpy as np
from pydantic import Field

from auxrl.config import config_dataclass


@config_dataclass
class ImageOptions:
    """The gymnasium family's options (``env.options.*``) for pixel envs; all off by default."""

    grayscale: bool = False
    """RGB frames to one grey channel (luminance)."""
    resize: list[int] | None = None
    """[height, width] to resize frames to (e.g. [84, 84]). null: as the env renders them."""
    frame_stack: int = Field(1, ge=1)
    """Frames stacked as channels (the newest last). 1: no stacking."""
    channels_first: bool | None = None
    """Move a channel-last image (H, W, C) to (C, H, W). null: when the last axis is 1, 3 or 4 and
    the first is not; true / false to force it."""

    def __post_init__(self) -> None:
        if self.resize is not None and (len(self.resize) != 2 or min(self.resize) < 1):
            raise ValueError(f"env.options.resize={self.resize}: give [height, width], e.g. [84, 84]")
        if self.frame_stack < 1:
            raise ValueError(f"env.options.frame_stack={self.frame_stack} must be >= 1")

    @property
    def active(self) -> bool:
        return self.grayscale or self.resize is not None or self.frame_stack > 1 or bool(self.channels_first)


class _ChannelsFirst(gym.ObservationWrapper):
    """(H, W, C) -> (C, H, W)."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        space = env.observation_space
        self.observation_space = gym.spaces.Box(
            np.moveaxis(space.low, -1, 0), np.moveaxis(space.high, -1, 0), dtype=space.dtype
        )

    def observation(self, obs: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(np.moveaxis(obs, -1, 0))


class _MergeStack(gym.ObservationWrapper):
    """(k, C, H, W) stacked frames -> (k * C, H, W)."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        space = env.observation_space
        shape = (space.shape[0] * space.shape[1], *space.shape[2:])
        self.observation_space = gym.spaces.Box(
            space.low.reshape(shape), space.high.reshape(shape), dtype=space.dtype
        )

    def observation(self, obs: np.ndarray) -> np.ndarray:
        return obs.reshape(self.observation_space.shape)


def _channel_last(shape: tuple[int, ...]) -> bool:
    return len(shape) == 3 and shape[-1] in (1, 3, 4) and shape[0] not in (1, 3, 4)


def image_wrappers(options: ImageOptions) -> list[Callable[[gym.Env], gym.Env]]:
    """Per-env wrappers for ``options`` (empty when none is asked for)."""
    if not options.active:
        return []

    def apply(env: gym.Env) -> gym.Env:
        space = env.observation_space
        if not isinstance(space, gym.spaces.Box) or len(space.shape) not in (2, 3):
            raise ValueError(
                f"env.options (grayscale / resize / frame_stack) need image observations, but this env's "
                f"are {space}; drop those options for it."
            )
        last = options.channels_first if options.channels_first is not None else _channel_last(space.shape)
        if len(space.shape) == 3 and not last and (options.grayscale or options.resize):
            env = gym.wrappers.TransformObservation(
                env, lambda o: np.ascontiguousarray(np.moveaxis(o, 0, -1)), _moved(space, 0, -1)
            )  # gymnasium's grey and resize wrappers take (H, W, C)
            last = True
        if options.grayscale:
            env = gym.wrappers.GrayscaleObservation(env, keep_dim=False)  # (H, W)
        if options.resize is not None:
            try:
                env = gym.wrappers.ResizeObservation(env, tuple(options.resize))
            except gym.error.DependencyNotInstalled:
                raise ImportError(
                    'env.options.resize needs OpenCV: pip install "auxrl[atari-modes]" '
                    "(opencv-python-headless)."
                ) from None
        if len(env.observation_space.shape) == 3 and last:
            env = _ChannelsFirst(env)
        if options.frame_stack > 1:
            env = gym.wrappers.FrameStackObservation(env, options.frame_stack)
            if len(env.observation_space.shape) == 4:
                env = _MergeStack(env)
        elif len(env.observation_space.shape) == 2:  # one grey frame: a channel axis of 1
            env = gym.wrappers.ReshapeObservation(env, (1, *env.observation_space.shape))
        return env

    return [apply]


def _moved(space: gym.spaces.Box, src: int, dst: int) -> gym.spaces.Box:
    return gym.spaces.Box(
        np.moveaxis(space.low, src, dst), np.moveaxis(space.high, src, dst), dtype=space.dtype
    )
