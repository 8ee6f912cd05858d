"""An env and a task for tests/test_task_check.py, imported by path as ``taskcheck_tasks:...``
(tests/ itself is on the path: a package installed with crafter, opensimplex, ships a top-level
``tests`` that would shadow this folder as ``tests.``).

``Signal-v0``: each observation shows a cue (one-hot of 3) that decides the sign of the reward
the next step pays, whatever the action: reward prediction can learn it exactly.
``NoiseTask``: a temporal-distance head (8 classes from a pair of observations) whose target is
drawn at random at every call: nothing can predict it, as in the issue that asked for the check.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from auxrl import AuxOutput, AuxTask, Needs, TaskContext
from auxrl.tasks.base import Pairs

CLASSES = 8


class SignalEnv(gym.Env):
    """Cue 0: the next reward is 0, cue 1: +1, cue 2: -1; a fresh cue every step; 32-step episodes."""

    observation_space = gym.spaces.Box(0.0, 1.0, (4,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def _obs(self) -> np.ndarray:
        obs = np.zeros(4, np.float32)
        obs[self.cue] = 1.0
        obs[3] = self.np_random.uniform()  # a distractor
        return obs

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t, self.cue = 0, int(self.np_random.integers(3))
        return self._obs(), {}

    def step(self, action):
        reward = (0.0, 1.0, -1.0)[self.cue]
        self.t += 1
        self.cue = int(self.np_random.integers(3))
        return self._obs(), reward, False, self.t >= 32, {}


if "Signal-v0" not in gym.registry:
    gym.register("Signal-v0", entry_point=SignalEnv)


class NoiseTask(AuxTask):
    """Predict one of 8 classes from two observations up to 8 steps apart; the class is noise."""

    name = "noise"
    description = "a temporal-distance head whose target is random"

    def __init__(self, cfg: object, ctx: TaskContext) -> None:
        super().__init__(cfg, ctx)
        self.needs = Needs(gap=(1, CLASSES))
        self.head = nn.Sequential(nn.Linear(2 * ctx.feature_dim, 64), nn.ReLU(), nn.Linear(64, CLASSES))

    def loss(self, seq: Pairs, encode) -> AuxOutput:
        batch = seq.obs.shape[0]
        features = encode(seq.obs.flatten(0, 1)).reshape(batch, -1)
        target = torch.randint(CLASSES, (batch,), device=seq.obs.device, generator=seq.generator)
        return AuxOutput(F.cross_entropy(self.head(features), target))
