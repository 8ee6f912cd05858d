"""Several vector envs stepped in turn, to overlap emulation with inference.

With ``env.groups: k`` the envs are split into k groups (each its own ``AtariVectorEnv`` with
its share of threads). The rollout loop sends group 0's actions, then computes group 1's while
group 0's emulators run, and so on: the policy's forward pass and the host<->device copies hide
behind emulation instead of adding to it. Each group always holds the same envs, so the rollout
storage stays a plain ``[steps, envs]`` array.
"""

from __future__ import annotations

import numpy as np

from auxrl.envs.base import Step, VecEnv


class GroupedVecEnv(VecEnv):
    def __init__(self, envs: list[VecEnv]) -> None:
        self.envs = envs
        self.num_envs = sum(e.num_envs for e in envs)
        self.single_observation_space = envs[0].single_observation_space
        self.single_action_space = envs[0].single_action_space
        starts = np.cumsum([0] + [e.num_envs for e in envs])
        self._groups = [
            (slice(int(a), int(b)), e) for a, b, e in zip(starts[:-1], starts[1:], envs, strict=True)
        ]

    @property
    def groups(self) -> list[tuple[slice, VecEnv]]:
        return self._groups

    def reset(self, seed: int | None = None) -> np.ndarray:
        return np.concatenate(
            [env.reset(seed=None if seed is None else seed + sl.start) for sl, env in self._groups]
        )

    def step(self, actions: np.ndarray) -> Step:
        for sl, env in self._groups:
            env.send(actions[sl])
        steps = [env.recv() for _, env in self._groups]
        return Step(
            **{
                name: np.concatenate([getattr(s, name) for s in steps])
                for name in (
                    "obs",
                    "reward",
                    "terminated",
                    "truncated",
                    "reset",
                    "episode_returns",
                    "episode_lengths",
                )
            }
        )

    def close(self) -> None:
        for env in self.envs:
            env.close()
