"""``CrashCue-v0``: a cue env (tests/cue_envs.py) whose async worker number ``crash_worker`` dies
at once (``os._exit(3)``, as a crash in an env's native code ends a process, or killed by signal
``crash_signal``) at its reset or after ``crash_step`` steps. Registered on import, so
``env.id=crash_envs:CrashCue-v0`` finds it."""

from __future__ import annotations

import multiprocessing
import os
import signal

import gymnasium as gym
from cue_envs import CueEnv


class CrashCueEnv(CueEnv):
    def __init__(self, crash_worker: int = 1, crash_step: int = 0, crash_signal: int = 0) -> None:
        super().__init__()
        self.crash_signal = crash_signal
        # gymnasium names its async workers "Worker<AsyncVectorEnv>-<index>"
        self.doomed = multiprocessing.current_process().name.endswith(f">-{crash_worker}")
        self.crash_step, self.steps = crash_step, 0

    def reset(self, *, seed=None, options=None):
        if self.doomed and self.crash_step == 0:
            self._die()
        return super().reset(seed=seed, options=options)

    def step(self, action):
        self.steps += 1
        if self.doomed and self.steps == self.crash_step:
            self._die()
        return super().step(action)

    def _die(self) -> None:
        if self.crash_signal:
            os.kill(os.getpid(), signal.Signals(self.crash_signal))
        os._exit(3)


if "CrashCue-v0" not in gym.registry:
    gym.register("CrashCue-v0", entry_point=CrashCueEnv)
