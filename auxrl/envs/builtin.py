"""The built-in env families (auxrl/envs/family.py): ``atari`` and ``gymnasium``."""

from __future__ import annotations

from typing import Any

from auxrl.config import ATARI_ENV_KEYS, GYM_ENV_KEYS, EnvConfig
from auxrl.envs.atari import AtariVecEnv, is_atari_id
from auxrl.envs.base import VecEnv
from auxrl.envs.family import EnvFamily
from auxrl.envs.gym import GymVecEnv
from auxrl.envs.image import ImageOptions
from auxrl.envs.normalize import NormStats


class AtariFamily(EnvFamily):
    """Atari 2600 games, ALE/<Game>-v5: ale-py's native C++ vector env (gymnasium's ALE env with
    modes, labels or rendering)."""

    name = "atari"
    keys = ATARI_ENV_KEYS

    def handles(self, env_id: str) -> bool:
        return is_atari_id(env_id)

    def make(
        self, cfg: EnvConfig, options: Any, *, training: bool, stats: NormStats | None, render: bool
    ) -> VecEnv:
        # env.labels (training only) read each env's RAM or info: the native vector env has neither.
        if cfg.mode is not None or cfg.difficulty is not None or render or (training and cfg.labels):
            from auxrl.envs.atari_modes import AtariModesVecEnv  # the native env has no modes

            return AtariModesVecEnv(cfg, training=training, render=render)
        if cfg.groups > 1:
            from auxrl.envs.grouped import GroupedVecEnv

            # Groups run in turn, so each may use every core while it steps.
            share = cfg.model_copy(update={"num_envs": cfg.num_envs // cfg.groups})
            return GroupedVecEnv([AtariVecEnv(share, training=training) for _ in range(cfg.groups)])
        return AtariVecEnv(cfg, training=training)


class GymFamily(EnvFamily):
    """Any registered gymnasium id, through gymnasium.vector (sync or async), with optional
    observation and reward normalisation and, for pixel envs, grey / resize / frame stack
    (``env.options``, auxrl/envs/image.py); it takes every id no other family takes."""

    name = "gymnasium"
    keys = GYM_ENV_KEYS
    Options = ImageOptions

    def handles(self, env_id: str) -> bool:
        return True

    def make(
        self, cfg: EnvConfig, options: Any, *, training: bool, stats: NormStats | None, render: bool
    ) -> VecEnv:
        if cfg.groups > 1:
            raise ValueError(
                f"env.groups={cfg.groups} needs an Atari id (ALE/<Game>-v5); {cfg.id} steps synchronously."
            )
        return GymVecEnv(cfg, training=training, stats=stats, render=render, image=options)
