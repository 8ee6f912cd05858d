"""Environments: ``make_envs(cfg)`` returns one :class:`VecEnv` interface for the learner."""

from __future__ import annotations

from auxrl.config import EnvConfig, family_options
from auxrl.envs.atari import is_atari_id
from auxrl.envs.base import Step, VecEnv
from auxrl.envs.family import EnvFamily, family_for
from auxrl.envs.normalize import NormStats


def make_envs(
    cfg: EnvConfig, *, training: bool = True, stats: NormStats | None = None, render: bool = False
) -> VecEnv:
    """The envs of ``cfg`` from their family (auxrl/envs/family.py): Atari ids (``ALE/<Game>-v5``)
    get the native C++ vector env, a plugin family's ids its own, all others gymnasium.vector.

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
    family = family_for(cfg.id, cfg.family)
    return family.make(cfg, family_options(family, cfg), training=training, stats=stats, render=render)


__all__ = ["EnvFamily", "NormStats", "Step", "VecEnv", "make_envs", "is_atari_id"]
