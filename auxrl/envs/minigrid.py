"""MiniGrid and BabyAI (Chevalier-Boisvert et al. 2023; ``pip install "auxrl[minigrid]"``): ids
``MiniGrid-*`` and ``BabyAI-*``.

Observations are a dict: ``image``, the agent's 7x7 partial view as (object, colour, state)
codes, and ``direction`` (0-3); the text ``mission`` is dropped. ``env.options.rgb=true`` gives
the same view as pixels instead (``RGBImgPartialObsWrapper``, ``tile_size`` pixels per cell), for
the conv torsos and the pixel tasks. Rewards are sparse: 1 - 0.9 * steps / max_steps on success,
0 otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gymnasium as gym

from auxrl.config import GYM_ENV_KEYS, EnvConfig
from auxrl.envs.base import VecEnv
from auxrl.envs.family import EnvFamily
from auxrl.envs.gym import GymVecEnv
from auxrl.envs.normalize import NormStats


@dataclass
class MiniGridOptions:
    # The partial view as RGB pixels (7 * tile_size a side) instead of symbolic codes.
    rgb: bool = False
    tile_size: int = 8

    def __post_init__(self) -> None:
        if self.tile_size < 1:
            raise ValueError(f"env.options.tile_size={self.tile_size} must be >= 1")


def _import_minigrid() -> Any:
    try:
        import minigrid  # registers the MiniGrid-* and BabyAI-* ids
    except ImportError:
        raise ImportError('MiniGrid envs need the minigrid package: pip install "auxrl[minigrid]".') from None
    return minigrid


class MiniGridFamily(EnvFamily):
    """MiniGrid / BabyAI grid worlds (MiniGrid-*, BabyAI-*): dict observations (image, direction)."""

    name = "minigrid"
    keys = GYM_ENV_KEYS  # gymnasium.vector's settings (kwargs, normalisation) apply
    Options = MiniGridOptions

    def handles(self, env_id: str) -> bool:
        return env_id.startswith(("MiniGrid-", "BabyAI-"))

    def make(
        self,
        cfg: EnvConfig,
        options: MiniGridOptions,
        *,
        training: bool,
        stats: NormStats | None,
        render: bool,
    ) -> VecEnv:
        _import_minigrid()
        from minigrid.wrappers import RGBImgPartialObsWrapper

        def make_env(**kwargs: Any) -> gym.Env:
            env = gym.make(cfg.id, **kwargs)
            if options.rgb:
                env = RGBImgPartialObsWrapper(env, tile_size=options.tile_size)
            return gym.wrappers.FilterObservation(env, ["image", "direction"])

        return GymVecEnv(cfg, training=training, stats=stats, render=render, make_env=make_env)
