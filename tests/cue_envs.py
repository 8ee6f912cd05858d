"""Two small envs for multi-task tests: a cue in the observation says which action pays.

``CueA-v0``: 2 actions, reward 1 for the cued one; ``CueB-v0``: 3 actions, reward 100 for the cued
one (a reward scale 100x larger, which PopArt is there to absorb). Episodes of 16 steps; the
observation (4 floats) is the cue one-hot in its first 3 entries, and 1 in the last for CueB.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np


class CueEnv(gym.Env):
    def __init__(self, actions: int = 2, reward: float = 1.0, flag: float = 0.0, length: int = 16) -> None:
        self.observation_space = gym.spaces.Box(0.0, 1.0, (4,), np.float32)
        self.action_space = gym.spaces.Discrete(actions)
        self.actions, self.reward, self.flag, self.length = actions, reward, flag, length

    def _obs(self) -> np.ndarray:
        obs = np.zeros(4, np.float32)
        obs[self.cue] = 1.0
        obs[3] = self.flag
        return obs

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        self.cue = int(self.np_random.integers(self.actions))
        return self._obs(), {}

    def step(self, action):
        reward = self.reward if int(action) == self.cue else 0.0
        self.t += 1
        self.cue = int(self.np_random.integers(self.actions))
        return self._obs(), reward, False, self.t >= self.length, {}


def register() -> None:
    if "CueA-v0" not in gym.registry:
        gym.register("CueA-v0", entry_point=CueEnv, kwargs={"actions": 2, "reward": 1.0, "flag": 0.0})
        gym.register("CueB-v0", entry_point=CueEnv, kwargs={"actions": 3, "reward": 100.0, "flag": 1.0})
