"""Observation and reward normalisation for vector-observation envs (continuous control).

The recipe of CleanRL's ``ppo_continuous_action.py`` and SB3's ``VecNormalize``, built from
gymnasium's vector wrappers:

* ``ClipAction``: the Gaussian policy's sample is stored and trained on as drawn; the env gets it
  clipped to the action bounds (always on for Box actions);
* ``NormalizeObservation`` (``env.normalize_obs``): running mean / std per observation
  dimension, then clipped to ``+-env.clip_obs``;
* ``NormalizeReward`` (``env.normalize_reward``, training only): rewards divided by the running
  std of the discounted return (``ppo.gamma``), then clipped to ``+-env.clip_reward``.

The running statistics live in one :class:`NormStats` per run, not in the wrappers: every env the
run makes (each curriculum stage) continues them, checkpoints save them, and evaluation and
:meth:`auxrl.TrainedAgent.predict` use them frozen, so the agent sees the inputs it was
trained on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from gymnasium.spaces import Box
from gymnasium.vector import VectorEnv, VectorWrapper
from gymnasium.wrappers.utils import RunningMeanStd
from gymnasium.wrappers.vector import (
    ClipAction,
    ClipReward,
    NormalizeObservation,
    NormalizeReward,
    TransformObservation,
)

from auxrl.config import EnvConfig

EPSILON = 1e-8  # gymnasium's default, under the square root of the variance


@dataclass
class NormStats:
    """A run's running statistics: observations (per dimension) and discounted returns."""

    gamma: float = 0.99
    obs: RunningMeanStd | None = None
    ret: RunningMeanStd | None = None
    # The statistics at the last :meth:`sync` (or load), the same on every process.
    _synced: dict[str, Any] = field(default_factory=dict, repr=False)

    def state_dict(self) -> dict[str, Any]:
        """Plain tensors (float64) for a checkpoint; ``{}`` when nothing is normalised."""
        out: dict[str, Any] = {}
        for name in ("obs", "ret"):
            rms = getattr(self, name)
            if rms is not None:
                out[name] = {
                    "mean": torch.from_numpy(np.asarray(rms.mean, dtype=np.float64)),
                    "var": torch.from_numpy(np.asarray(rms.var, dtype=np.float64)),
                    "count": float(rms.count),
                }
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name in ("obs", "ret"):
            saved = state.get(name)
            if saved is None:
                continue
            mean = np.asarray(saved["mean"], dtype=np.float64)
            rms = RunningMeanStd(shape=mean.shape, dtype=np.float64)
            rms.mean, rms.var, rms.count = mean, np.asarray(saved["var"], dtype=np.float64), saved["count"]
            setattr(self, name, rms)
        self._synced = _moments(self)

    def sync(self, gather: Callable[[list[Any]], list[Any]]) -> None:
        """Several processes: pool what every process has seen since the last sync, so that all
        of them normalise alike (as one process that had stepped every env would).

        ``gather`` is :meth:`auxrl.distributed.Dist.gather`. Each process's statistics are the
        shared ones of the last sync plus its own new data; the new data's counts, sums and
        sums of squares are added up (exact, in float64), and every process gets the result.
        """
        mine = _moments(self)
        if not mine:
            return
        ranks = gather([mine])
        for name in mine:
            rms = getattr(self, name)
            base = self._synced.get(name) or _fresh_moments(rms.mean.shape)
            count, total, squares = base
            for rank in ranks:
                n, s, q = rank[name]
                count, total, squares = count + (n - base[0]), total + (s - base[1]), squares + (q - base[2])
            # In place: the env wrappers hold these very objects.
            rms.count = float(count)
            rms.mean = total / count
            rms.var = np.maximum(squares / count - rms.mean**2, 0.0)
        self._synced = _moments(self)

    def normalize_obs(self, obs: np.ndarray, clip: float) -> np.ndarray:
        """What the env wrappers do to an observation, with the statistics frozen (for predict)."""
        if self.obs is None:
            return obs
        out = (np.asarray(obs, dtype=np.float64) - self.obs.mean) / np.sqrt(self.obs.var + EPSILON)
        return np.clip(out, -clip, clip).astype(np.float32)


def _moments(stats: NormStats) -> dict[str, tuple[float, np.ndarray, np.ndarray]]:
    """Per statistic: (count, sum, sum of squares) in float64; nothing for an unused one."""
    out = {}
    for name in ("obs", "ret"):
        rms = getattr(stats, name)
        if rms is not None:
            mean, var, n = np.asarray(rms.mean, np.float64), np.asarray(rms.var, np.float64), float(rms.count)
            out[name] = (n, n * mean, n * (var + mean**2))
    return out


def _fresh_moments(shape: tuple[int, ...]) -> tuple[float, np.ndarray, np.ndarray]:
    """The moments of gymnasium's new ``RunningMeanStd`` (mean 0, var 1, count 1e-4)."""
    n = RunningMeanStd(shape=shape).count
    return n, np.zeros(shape), n * np.ones(shape)


class RawReward(VectorWrapper):
    """Keeps the env's own rewards of the last step (the real score, before any scaling)."""

    def __init__(self, env: VectorEnv) -> None:
        super().__init__(env)
        self.last_reward = np.zeros(self.num_envs)

    def step(self, actions: Any) -> tuple:
        obs, reward, terminated, truncated, info = super().step(actions)
        self.last_reward = np.asarray(reward, dtype=np.float64)
        return obs, reward, terminated, truncated, info


def wrap(env: VectorEnv, cfg: EnvConfig, stats: NormStats, training: bool) -> tuple[VectorEnv, RawReward]:
    """``env`` with action clipping and the configured normalisation; also the wrapper holding the
    raw rewards (the episode statistics report real scores)."""
    raw = RawReward(env)
    env = raw
    if isinstance(env.single_action_space, Box):
        env = ClipAction(env)
    if cfg.normalize_obs:
        norm = NormalizeObservation(env, epsilon=EPSILON)
        if stats.obs is None:
            stats.obs = norm.obs_rms
        else:
            norm.obs_rms = stats.obs  # continue the run's statistics (a new stage, a resume, eval)
        norm.update_running_mean = training
        clip = float(cfg.clip_obs)
        env = TransformObservation(
            norm,
            lambda obs: np.clip(obs, -clip, clip),
            single_observation_space=Box(-clip, clip, norm.single_observation_space.shape, np.float32),
        )
    if cfg.normalize_reward and training:
        scale = NormalizeReward(env, gamma=stats.gamma, epsilon=EPSILON)
        if stats.ret is None:
            stats.ret = scale.return_rms
        else:
            scale.return_rms = stats.ret
        env = ClipReward(scale, -float(cfg.clip_reward), float(cfg.clip_reward))
    return env, raw
