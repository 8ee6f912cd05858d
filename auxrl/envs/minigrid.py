"""MiniGrid and BabyAI (Chevalier-Boisvert et al. 2023; ``pip install "auxrl[minigrid]"``): ids
``MiniGrid-*`` and ``BabyAI-*``.

Observations are a dict: ``image``, the agent's 7x7 partial view as (object, colour, state)
codes, and ``direction`` (0-3); the text ``mission`` is dropped. ``env.options.rgb=true`` gives
the same view as pixels instead (``RGBImgPartialObsWrapper``, ``tile_size`` pixels per cell), for
the conv torsos and the pixel tasks. Rewards are sparse: 1 - 0.9 * steps / max_steps on success,
0 otherwise.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
from pydantic import Field

from auxrl.config import GYM_ENV_KEYS, EnvConfig, config_dataclass
from auxrl.envs.base import VecEnv
from auxrl.envs.family import EnvFamily
from auxrl.envs.gym import GymVecEnv
from auxrl.envs.normalize import NormStats


@config_dataclass
class MiniGridOptions:
    rgb: bool = False
    """The partial view as RGB pixels (7 x tile_size a side) instead of symbolic codes."""
    tile_size: int = Field(8, ge=1)
    """Pixels per grid cell with rgb."""


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
