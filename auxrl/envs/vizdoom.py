"""VizDoom (Wydmuch et al. 2019; ``pip install "auxrl[vizdoom]"``): the ``Vizdoom*-v1`` ids of
the ``vizdoom`` package's gymnasium envs (HealthGathering, DefendCenter, MyWayHome, ...).

Observations are a dict: ``screen``, the frame made grey, resized and stacked as the Atari
preprocessing does (``env.options``: ``grayscale`` true, ``resize`` [84, 84], ``frame_stack`` 4;
the resize needs OpenCV), and, where the scenario has game variables, ``gamevariables`` (e.g.
health, ammo). The game variables are also in each step's ``info`` under their lower-case names
(``health``, ``ammo2``, ...), for ``env.labels=[info:health]`` (the ``state_prediction`` task and
``auxrl probe``), as Lample & Chaplot (2017) predicted game features. ``frame_skip`` (4) repeats
each action for that many tics.
"""

from __future__ import annotations

import collections
from typing import Any

import gymnasium as gym
import numpy as np
from pydantic import Field

from auxrl.config import GYM_ENV_KEYS, EnvConfig, config_dataclass
from auxrl.envs.base import VecEnv
from auxrl.envs.family import EnvFamily
from auxrl.envs.gym import GymVecEnv
from auxrl.envs.normalize import NormStats


@config_dataclass
class VizdoomOptions:
    frame_skip: int = Field(4, ge=1)
    """Game tics per agent step (the action repeated)."""
    grayscale: bool = True
    """The screen as one grey channel."""
    resize: list[int] | None = None
    """[height, width] of the screen. null: [84, 84]."""
    frame_stack: int = Field(4, ge=1)
    """Screens stacked as channels."""

    def __post_init__(self) -> None:
        if self.resize is None:
            self.resize = [84, 84]
        if len(self.resize) != 2 or min(self.resize) < 8:
            raise ValueError(f"env.options.resize={self.resize}: give [height, width], e.g. [84, 84]")


def _import_vizdoom() -> Any:
    try:
        from vizdoom import gymnasium_wrapper  # registers the Vizdoom*-v1 ids
    except ImportError:
        raise ImportError('VizDoom needs the vizdoom package: pip install "auxrl[vizdoom]".') from None
    return gymnasium_wrapper


class DoomFrames(gym.Wrapper):
    """``screen`` grey / resized / stacked as (k * C, H, W) uint8; game variables kept as they are
    and copied into ``info`` by name."""

    def __init__(self, env: gym.Env, options: VizdoomOptions) -> None:
        super().__init__(env)
        try:
            import cv2
        except ImportError:
            raise ImportError(
                'VizDoom frames are resized with OpenCV: pip install "auxrl[vizdoom]".'
            ) from None
        self._cv2 = cv2
        self.options = options
        height, width = options.resize
        channels = 1 if options.grayscale else 3
        self._frames: collections.deque[np.ndarray] = collections.deque(maxlen=options.frame_stack)
        spaces = {"screen": gym.spaces.Box(0, 255, (options.frame_stack * channels, height, width), np.uint8)}
        inner = env.observation_space
        if "gamevariables" in inner.spaces:
            spaces["gamevariables"] = inner["gamevariables"]
        self.observation_space = gym.spaces.Dict(spaces)
        game = env.unwrapped.game
        self.variable_names = [str(v).rsplit(".", 1)[-1].lower() for v in game.get_available_game_variables()]

    def _frame(self, screen: np.ndarray) -> np.ndarray:
        height, width = self.options.resize
        frame = self._cv2.resize(screen, (width, height), interpolation=self._cv2.INTER_AREA)
        if self.options.grayscale:
            return self._cv2.cvtColor(frame, self._cv2.COLOR_RGB2GRAY)[None]
        return np.moveaxis(frame, -1, 0)

    def _obs(self, obs: dict[str, np.ndarray], info: dict[str, Any]) -> dict[str, np.ndarray]:
        out = {"screen": np.concatenate(list(self._frames))}
        if "gamevariables" in self.observation_space.spaces:
            variables = np.asarray(obs["gamevariables"], dtype=np.float32)
            out["gamevariables"] = variables
            info.update({name: float(v) for name, v in zip(self.variable_names, variables, strict=False)})
        return out

    def reset(self, **kwargs: Any) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        obs, info = self.env.reset(**kwargs)
        info = dict(info)
        frame = self._frame(obs["screen"])
        for _ in range(self.options.frame_stack):  # the first frame fills the stack
            self._frames.append(frame)
        return self._obs(obs, info), info

    def step(self, action: Any) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        info = dict(info)
        if "screen" in obs and obs["screen"] is not None:
            self._frames.append(self._frame(obs["screen"]))
        return self._obs(obs, info), float(reward), terminated, truncated, info


class VizdoomFamily(EnvFamily):
    """VizDoom scenarios (Vizdoom*-v1): a dict of the stacked screen and the game variables."""

    name = "vizdoom"
    keys = GYM_ENV_KEYS  # gymnasium.vector's settings (kwargs, normalisation) apply
    Options = VizdoomOptions

    def handles(self, env_id: str) -> bool:
        return env_id.startswith("Vizdoom")

    def make(
        self,
        cfg: EnvConfig,
        options: VizdoomOptions,
        *,
        training: bool,
        stats: NormStats | None,
        render: bool,
    ) -> VecEnv:
        _import_vizdoom()

        def make_env(**kwargs: Any) -> gym.Env:
            return DoomFrames(gym.make(cfg.id, frame_skip=options.frame_skip, **kwargs), options)

        return GymVecEnv(cfg, training=training, stats=stats, render=render, make_env=make_env)
