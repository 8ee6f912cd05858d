"""``CrashCue-v0``: a cue env (tests/cue_envs.py) whose async worker number ``crash_worker`` dies
at once (``os._exit``, as a crash in an env's native code ends a process) at its reset or after
``crash_step`` steps. Registered on import, so ``env.id=crash_envs:CrashCue-v0`` finds it."""

from __future__ import annotations

import multiprocessing
import os

import gymnasium as gym
from cue_envs import CueEnv


class CrashCueEnv(CueEnv):
    def __init__(self, crash_worker: int = 1, crash_step: int = 0) -> None:
        super().__init__()
        # gymnasium names its async workers "Worker<AsyncVectorEnv>-<index>"
        self.doomed = multiprocessing.current_process().name.endswith(f">-{crash_worker}")
        self.crash_step, self.steps = crash_step, 0

    def reset(self, *, seed=None, options=None):
        if self.doomed and self.crash_step == 0:
            os._exit(3)
        return super().reset(seed=seed, options=options)

    def step(self, action):
        self.steps += 1
        if self.doomed and self.steps == self.crash_step:
            os._exit(3)
        return super().step(action)


if "CrashCue-v0" not in gym.registry:
    gym.register("CrashCue-v0", entry_point=CrashCueEnv)
