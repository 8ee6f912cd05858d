"""Several games at once (``env.tasks``): one vector env per task, stepped in turn.

Each task gets ``env.num_envs`` envs of its own (its own ``make_envs``, with every other env
setting shared); the batch is their concatenation, task after task, and :attr:`task_ids` says
which task each env column plays. Stepping per task as groups (auxrl/envs/grouped.py) lets the
policy act for one game while another's emulators run.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from auxrl.config import EnvConfig
from auxrl.envs.base import VecEnv
from auxrl.envs.grouped import GroupedVecEnv


def task_env_configs(cfg: EnvConfig) -> list[EnvConfig]:
    """One single-task env config per entry of ``env.tasks``."""
    return [cfg.model_copy(update=dict(id=env_id, tasks=[])) for env_id in cfg.tasks]


class MultiTaskVecEnv(GroupedVecEnv):
    """The tasks' vector envs side by side; ``task_ids[j]``: the index in ``task_env_ids`` of env j."""

    def __init__(self, envs: list[VecEnv], env_ids: list[str]) -> None:
        shapes = {tuple(e.single_observation_space.shape) for e in envs}
        if len(shapes) > 1:
            described = ", ".join(
                f"{i} {tuple(e.single_observation_space.shape)}" for i, e in zip(env_ids, envs, strict=True)
            )
            raise ValueError(
                f"env.tasks: the tasks' observations differ in shape ({described}); one torso reads "
                f"them all, so they need the same shape (e.g. Atari games with the same frame settings)."
            )
        super().__init__(envs)
        self.task_env_ids = list(env_ids)
        self.task_action_spaces: list[gym.Space] = [e.single_action_space for e in envs]
        self.task_ids = np.concatenate([np.full(e.num_envs, i, dtype=np.int64) for i, e in enumerate(envs)])
