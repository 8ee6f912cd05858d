"""Any other Gymnasium id, through ``gymnasium.vector`` (sync or async) with NEXT_STEP autoreset."""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from auxrl.config import EnvConfig
from auxrl.envs.base import EpisodeTracker, Step, VecEnv


class GymVecEnv(VecEnv):
    def __init__(self, cfg: EnvConfig, *, training: bool = True) -> None:
        try:
            gym.spec(cfg.id)
        except gym.error.Error as err:
            raise ValueError(
                f"env.id {cfg.id!r} is not a registered Gymnasium environment ({err}). Atari "
                f"games are named ALE/<Game>-v5; other ids must be importable by gymnasium."
            ) from None
        self.env = gym.make_vec(
            cfg.id,
            num_envs=cfg.num_envs,
            vectorization_mode=cfg.vector_mode,
            vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.NEXT_STEP},
            **cfg.kwargs,
        )
        self.num_envs = cfg.num_envs
        self.single_observation_space = self.env.single_observation_space
        self.single_action_space = self.env.single_action_space
        self.tracker = EpisodeTracker(cfg.num_envs)
        self._done = np.zeros(cfg.num_envs, dtype=bool)
        space = self.single_action_space
        self._clip = (space.low, space.high) if isinstance(space, gym.spaces.Box) else None

    def reset(self, seed: int | None = None) -> np.ndarray:
        obs, _ = self.env.reset(seed=seed)
        self.tracker = EpisodeTracker(self.num_envs)
        self._done[:] = False
        return obs

    def step(self, actions: np.ndarray) -> Step:
        if self._clip is not None:  # the Gaussian policy is unbounded; the env is not
            actions = np.clip(actions, *self._clip)
        obs, reward, terminated, truncated, _ = self.env.step(actions)
        reset = self._done  # NEXT_STEP: the step after a done only resets
        self._done = terminated | truncated
        return self.tracker.step(obs, reward, terminated, truncated, reset)

    def close(self) -> None:
        self.env.close()
