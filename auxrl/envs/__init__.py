"""Environments: ``make_envs(cfg)`` returns one :class:`VecEnv` interface for the learner."""

from __future__ import annotations

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
        return AtariVecEnv(cfg, training=training)
    return GymVecEnv(cfg, training=training)


__all__ = ["Step", "VecEnv", "make_envs", "is_atari_id"]
