"""The vector-env interface the learner sees, and real-episode bookkeeping.

Both backends use gymnasium 1.x's NEXT_STEP autoreset: the step after an episode ends returns the
reset observation and ignores its action. That step is not a transition of any episode, so each
:class:`Step` says so (``reset``) and the learner masks it out of every loss. As a consequence the
final observation of a truncated episode is the observation the learner acts on next, so its
value is available for bootstrapping without any ``final_obs`` bookkeeping.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np


@dataclass
class Step:
    """One vectorized step, every array of length ``num_envs``."""

    obs: np.ndarray
    reward: np.ndarray  # float32: the training reward (clipped where configured)
    terminated: np.ndarray  # bool: no bootstrap (game over, or a lost life with episodic life)
    truncated: np.ndarray  # bool: time limit; bootstrap from the final observation's value
    # bool: not a real transition: this step only reset the env (NEXT_STEP), or (Atari, episodic
    # life, training only) it is one of the FIRE / no-op steps forced after a lost life.
    reset: np.ndarray
    # Real episodes (unclipped score over all lives) that ended and were reset at this step.
    episode_returns: np.ndarray = field(default_factory=lambda: np.zeros(0))
    episode_lengths: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    # float32 [num_envs, K]: the state labels (env.labels) of ``obs``; None without labels.
    labels: np.ndarray | None = None
    # Per-episode metrics of the episodes in ``episode_returns`` (same order), e.g. Crafter's
    # achievements: name -> float array (NaN where an episode has none). Empty: none.
    episode_metrics: dict[str, np.ndarray] = field(default_factory=dict)


class EpisodeTracker:
    """Sums raw rewards per env and reports whole games when their env resets (vectorized)."""

    def __init__(self, num_envs: int) -> None:
        self.returns = np.zeros(num_envs, dtype=np.float64)
        self.lengths = np.zeros(num_envs, dtype=np.int64)

    def step(
        self,
        obs: np.ndarray,
        raw_reward: np.ndarray,
        terminated: np.ndarray,
        truncated: np.ndarray,
        reset: np.ndarray,
        clip_reward: bool = False,
        masked: np.ndarray | None = None,
    ) -> Step:
        """Book one vectorized step and package it (reward clipped to its sign if asked).

        ``reset``: the env's game was reset at this step (the finished game is reported);
        ``masked``: steps that are no transition but end no game either (not counted).
        """
        raw = np.asarray(raw_reward, dtype=np.float64)
        returns, lengths = self.update(raw, reset, masked)
        return Step(
            obs=obs,
            reward=(np.sign(raw) if clip_reward else raw).astype(np.float32),
            terminated=np.asarray(terminated, dtype=bool),
            truncated=np.asarray(truncated, dtype=bool),
            reset=np.array(reset if masked is None else reset | masked, dtype=bool),
            episode_returns=returns,
            episode_lengths=lengths,
        )

    def update(
        self, raw_reward: np.ndarray, reset: np.ndarray, masked: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        done_returns = self.returns[reset].copy()
        done_lengths = self.lengths[reset].copy()
        self.returns[reset] = 0.0
        self.lengths[reset] = 0
        live = ~reset if masked is None else ~(reset | masked)
        self.returns[live] += raw_reward[live]
        self.lengths[live] += 1
        return done_returns, done_lengths


class VecEnv:
    """What the learner needs from a batch of environments."""

    num_envs: int
    single_observation_space: gym.Space
    single_action_space: gym.Space
    # env.labels (auxrl/envs/labels.py): the labels' names, and those of the observations the
    # last reset() returned (float32 [num_envs, K]; None without labels). Each Step has its own.
    label_names: tuple[str, ...] = ()
    reset_labels: np.ndarray | None = None

    def reset(self, seed: int | None = None) -> np.ndarray:
        raise NotImplementedError

    def step(self, actions: np.ndarray) -> Step:
        raise NotImplementedError

    # Split-phase stepping: ``send`` starts a step, ``recv`` waits for it. Envs that can step in
    # the background (ale-py's C++ threads) override both, so the learner can act for one group
    # of envs while another group's emulators run; the default is a plain synchronous step.
    def send(self, actions: np.ndarray) -> None:
        self._pending_actions = actions

    def recv(self) -> Step:
        return self.step(self._pending_actions)

    @property
    def groups(self) -> list[tuple[slice, VecEnv]]:
        """Env groups stepped in turn, with the slice of the batch each one covers."""
        return [(slice(0, self.num_envs), self)]

    def render(self) -> np.ndarray | None:
        """The RGB screen of env 0 as it is now (envs made with ``render=True``), else None."""
        return None

    def summarize_metrics(self, means: dict[str, float]) -> dict[str, float]:
        """Scores derived from the mean episode metrics (e.g. Crafter's score from its success
        rates), logged and reported beside them; none by default."""
        return {}

    def close(self) -> None:
        pass

    def __enter__(self) -> VecEnv:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
