"""Environments: ``make_envs(cfg)`` returns one :class:`VecEnv` interface for the learner."""

from __future__ import annotations

import dataclasses

from auxrl.config import EnvConfig
from auxrl.envs.atari import AtariVecEnv, is_atari_id
from auxrl.envs.base import Step, VecEnv
from auxrl.envs.gym import GymVecEnv


def make_envs(cfg: EnvConfig, *, training: bool = True) -> VecEnv:
    """Atari ids (``ALE/<Game>-v5``) get the native C++ vector env, all others gymnasium.vector.

    Atari with ``env.mode`` / ``env.difficulty`` set uses gymnasium.vector instead (see
    ``atari_modes``). ``training=False`` turns off the training-only Atari settings (episodic life, reward
    clipping) so evaluation plays whole games.
    """
    if is_atari_id(cfg.id):
        if cfg.mode is not None or cfg.difficulty is not None:
            from auxrl.envs.atari_modes import AtariModesVecEnv  # the native env has no modes

            return AtariModesVecEnv(cfg, training=training)
        if cfg.groups > 1:
            from auxrl.envs.grouped import GroupedVecEnv

            # Groups run in turn, so each may use every core while it steps.
            share = dataclasses.replace(cfg, num_envs=cfg.num_envs // cfg.groups)
            return GroupedVecEnv([AtariVecEnv(share, training=training) for _ in range(cfg.groups)])
        return AtariVecEnv(cfg, training=training)
    if cfg.groups > 1:
        raise ValueError(
            f"env.groups={cfg.groups} needs an Atari id (ALE/<Game>-v5); {cfg.id} steps synchronously."
        )
    return GymVecEnv(cfg, training=training)


__all__ = ["Step", "VecEnv", "make_envs", "is_atari_id"]
