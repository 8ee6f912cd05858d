"""Crafter (Hafner 2021; ``pip install "auxrl[crafter]"``): ids ``CrafterReward-v1`` and
``CrafterNoReward-v1``, the names the ``crafter`` package gives them.

A gymnasium adapter of crafter's own gym-style env: (64, 64, 3) RGB frames (given to the torso
as (3, 64, 64)), 17 actions; ``terminated`` when the player dies, ``truncated`` at the episode
length (10,000 steps). Each episode's 22 achievements come out as per-episode metrics
``achievement_<name>`` (1: unlocked at least once in it), so their means are the success rates
the Crafter paper reports, and the family turns them into the **Crafter score**: the geometric
mean ``exp(mean_i ln(1 + s_i)) - 1`` of the success rates ``s_i`` in percent, logged as
``crafter/score`` (over every training episode so far) and printed by ``auxrl eval``. The
inventory is in each step's ``info`` as ``inventory_<item>``, for ``env.labels=[info:...]``.
"""

from __future__ import annotations

import math
from typing import Any

import gymnasium as gym
import numpy as np
from pydantic import Field

from auxrl.config import GYM_ENV_KEYS, EnvConfig, config_dataclass
from auxrl.envs.base import VecEnv
from auxrl.envs.family import EnvFamily
from auxrl.envs.gym import METRIC_PREFIX, GymVecEnv
from auxrl.envs.image import ImageOptions
from auxrl.envs.normalize import NormStats

IDS = {"CrafterReward-v1": True, "CrafterNoReward-v1": False}  # id -> reward


@config_dataclass
class CrafterOptions:
    size: int = Field(64, ge=8)
    """Frame side in pixels."""
    length: int = Field(10_000, ge=1)
    """Steps per episode at most."""
    area: int = Field(64, ge=9)
    """World side in cells (the benchmark's 64; at least the 9x9 view; smaller worlds generate
    faster)."""


def _crafter() -> Any:
    try:
        import crafter
    except ImportError:
        raise ImportError('Crafter needs the crafter package: pip install "auxrl[crafter]".') from None
    return crafter


class CrafterEnv(gym.Env):
    """crafter.Env behind gymnasium's API (see the module docstring)."""

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(
        self,
        reward: bool = True,
        size: int = 64,
        length: int = 10_000,
        area: int = 64,
        render_mode: str | None = None,
    ):
        crafter = _crafter()
        self._env = crafter.Env(area=(area, area), size=(size, size), reward=reward, length=length)
        self.achievements = list(crafter.constants.achievements)
        self.observation_space = gym.spaces.Box(0, 255, (size, size, 3), np.uint8)
        self.action_space = gym.spaces.Discrete(self._env.action_space.n)
        self.render_mode = render_mode
        self._last: np.ndarray | None = None

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        if seed is not None:  # crafter draws each world from (its seed, its episode count)
            self._env._seed = int(seed)
        self._last = self._env.reset()
        return self._last, {}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        obs, reward, done, info = self._env.step(int(action))
        self._last = obs
        dead = self._env._player.health <= 0
        out = {f"inventory_{k}": float(v) for k, v in info["inventory"].items()}
        if done:
            for name in self.achievements:
                out[f"{METRIC_PREFIX}achievement_{name}"] = float(info["achievements"][name] > 0)
        return obs, float(reward), bool(done and dead), bool(done and not dead), out

    def render(self) -> np.ndarray | None:
        return self._last


def crafter_score(means: dict[str, float]) -> dict[str, float]:
    """Crafter's score from the achievements' success rates (fractions -> percent)."""
    rates = [100.0 * v for k, v in means.items() if k.startswith("achievement_")]
    if not rates:
        return {}
    return {"crafter/score": math.exp(float(np.mean(np.log1p(rates)))) - 1.0}


class CrafterFamily(EnvFamily):
    """Crafter (CrafterReward-v1, CrafterNoReward-v1): 22 achievements and the Crafter score."""

    name = "crafter"
    keys = GYM_ENV_KEYS  # gymnasium.vector's settings (kwargs, normalisation) apply
    Options = CrafterOptions
    scores = ("crafter/score",)

    def handles(self, env_id: str) -> bool:
        return env_id in IDS

    def make(
        self,
        cfg: EnvConfig,
        options: CrafterOptions,
        *,
        training: bool,
        stats: NormStats | None,
        render: bool,
    ) -> VecEnv:
        _crafter()

        def make_env(**kwargs: Any) -> gym.Env:
            return CrafterEnv(IDS[cfg.id], options.size, options.length, options.area, **kwargs)

        return GymVecEnv(
            cfg,
            training=training,
            stats=stats,
            render=render,
            make_env=make_env,
            image=ImageOptions(channels_first=True),
            summarize=crafter_score,
        )
