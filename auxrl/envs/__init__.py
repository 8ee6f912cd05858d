"""Environments: ``make_envs(cfg)`` returns one :class:`VecEnv` interface for the learner."""

from __future__ import annotations

import dataclasses

from auxrl.config import EnvConfig
from auxrl.envs.atari import AtariVecEnv, is_atari_id
from auxrl.envs.base import Step, VecEnv
from auxrl.envs.gym import GymVecEnv
from auxrl.envs.normalize import NormStats


def make_envs(
    cfg: EnvConfig, *, training: bool = True, stats: NormStats | None = None, render: bool = False
) -> VecEnv:
    """Atari ids (``ALE/<Game>-v5``) get the native C++ vector env, all others gymnasium.vector.

    Atari with ``env.mode`` / ``env.difficulty`` set uses gymnasium.vector instead (see
    ``atari_modes``). ``training=False`` turns off the training-only settings (episodic life, reward
    clipping and scaling, updates of the observation statistics) so evaluation plays whole games.
    ``stats``: the run's normalisation statistics (gymnasium path; a fresh set when None).
    ``render=True``: :meth:`VecEnv.render` returns the game screen; Atari then runs through
    gymnasium's ALE env, since the native vector env cannot render. So does Atari with
    ``env.labels`` when training (each step's labels are in :attr:`Step.labels`).
    """
    if cfg.tasks:  # multi-task: one vector env per task, side by side
        from auxrl.envs.multitask import MultiTaskVecEnv, task_env_configs

        envs: list[VecEnv] = []
        try:
            for task_cfg in task_env_configs(cfg):
                envs.append(make_envs(task_cfg, training=training, stats=stats, render=render))
            return MultiTaskVecEnv(envs, list(cfg.tasks))
        except BaseException:
            for env in envs:
                env.close()
            raise
    if is_atari_id(cfg.id):
        # env.labels (training only) read each env's RAM or info: the native vector env has neither.
        if cfg.mode is not None or cfg.difficulty is not None or render or (training and cfg.labels):
            from auxrl.envs.atari_modes import AtariModesVecEnv  # the native env has no modes

            return AtariModesVecEnv(cfg, training=training, render=render)
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
    return GymVecEnv(cfg, training=training, stats=stats, render=render)


__all__ = ["NormStats", "Step", "VecEnv", "make_envs", "is_atari_id"]
