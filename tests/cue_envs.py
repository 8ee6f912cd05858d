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


class DictCueEnv(gym.Env):
    """Dict observations: ``screen``, a (12, 12, 3) uint8 image, channel-last, bright on the left
    or right half, and ``pos``, a 2-vector; the action naming the bright half pays 1 (the image
    carries the cue, the vector only noise). ``with_image=False``: the cue is in ``pos`` instead
    and there is no image key."""

    def __init__(self, with_image: bool = True, length: int = 16, render_mode=None) -> None:
        spaces = {"pos": gym.spaces.Box(-1.0, 1.0, (2,), np.float32)}
        if with_image:
            spaces["screen"] = gym.spaces.Box(0, 255, (12, 12, 3), np.uint8)
        self.observation_space = gym.spaces.Dict(spaces)
        self.action_space = gym.spaces.Discrete(2)
        self.with_image, self.length = with_image, length

    def _obs(self):
        noise = self.np_random.uniform(-1, 1, 2).astype(np.float32)
        if not self.with_image:
            noise[0] = 1.0 if self.cue else -1.0
            return {"pos": noise}
        screen = np.zeros((12, 12, 3), np.uint8)
        (screen[:, 6:] if self.cue else screen[:, :6])[:] = 255
        return {"pos": noise, "screen": screen}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t, self.cue = 0, int(self.np_random.integers(2))
        return self._obs(), {}

    def step(self, action):
        reward = float(int(action) == self.cue)
        self.t += 1
        self.cue = int(self.np_random.integers(2))
        return self._obs(), reward, False, self.t >= self.length, {}


def register_dict() -> None:
    if "DictCue-v0" not in gym.registry:
        gym.register("DictCue-v0", entry_point=DictCueEnv)
        gym.register("DictVector-v0", entry_point=DictCueEnv, kwargs={"with_image": False})
