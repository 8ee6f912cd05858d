"""Using a trained agent: load it from a run, act on observations (``auxrl.load_agent``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from auxrl.config import Config, build
from auxrl.device import resolve_device  # also importable from here, its former home
from auxrl.envs.dictobs import DictLayout
from auxrl.envs.normalize import NormStats
from auxrl.envs.spaces import from_plain
from auxrl.models.agent import Agent, build_agent
from auxrl.models.multitask import TaskSpec, popart_enabled
from auxrl.rundir import read_checkpoint  # also importable from here, its former home


@dataclass
class TrainedAgent:
    """A trained policy with everything needed to act as it did in training.

    Get one with :func:`load_agent` (or ``auxrl.train(...).agent``). ``model`` is the torso with
    the policy and value heads (auxiliary heads are not needed to act), in eval mode on
    ``device``; ``config`` is the run's config; ``stats`` are its observation statistics when the
    run normalised observations (``env.normalize_obs``), applied by :meth:`predict`.
    """

    model: Agent
    config: Config
    observation_space: gym.Space
    action_space: gym.Space
    device: torch.device
    stats: NormStats = field(default_factory=NormStats)

    @property
    def task_names(self) -> list[str]:
        """The tasks of a multi-task agent (``env.tasks``), in head order; [] for one task."""
        return self.model.task_names if len(self.model.tasks) > 1 else []

    def task_index(self, task: str | None) -> int:
        """The index of ``task``'s heads (None: the only task), or a one-line error naming them."""
        names = self.model.task_names
        if task is None:
            if len(names) > 1:
                raise ValueError(f"This agent plays {len(names)} tasks ({', '.join(names)}): name one.")
            return 0
        if task not in names:
            known = ", ".join(names) or "none: it was trained on one env"
            raise ValueError(f"task {task!r}: this agent's tasks are {known}.")
        return names.index(task)

    @torch.no_grad()
    def predict(self, obs: np.ndarray, deterministic: bool = False, task: str | None = None) -> np.ndarray:
        """The action(s) for one observation or a batch of them.

        :param obs: an observation as the env returns it (raw: the run's observation
            normalisation is applied here), of the env's observation shape, or a batch of them
            with a leading batch dimension. Atari agents take auxrl's preprocessed frame stacks
            (4, 84, 84), as ``auxrl.envs.make_envs`` returns them.
        :param deterministic: the most likely action (the mean of a Gaussian policy) instead of
            a sample.
        :param task: a multi-task agent's task (its name, e.g. ``Pong``), whose heads act.
        :return: a numpy action for a single observation (an integer for discrete actions),
            an array of them for a batch. Continuous actions are clipped to the action space's
            bounds, as the env does in training.
        """
        if isinstance(self.observation_space, gym.spaces.Dict):
            return self._predict_dict(obs, deterministic, task)
        array = np.asarray(obs)
        shape = tuple(self.observation_space.shape)
        if array.shape == shape:
            single = True
            array = array[None]
        elif array.shape[1:] == shape:
            single = False
        else:
            raise ValueError(
                f"predict: observation of shape {array.shape}, but this agent takes {shape} (or a batch "
                f"of shape (N, {', '.join(map(str, shape))}))."
            )
        if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
            raise ValueError("predict: the observation holds NaN or inf; the agent cannot act on it.")
        if self.config.env.normalize_obs:
            array = self.stats.normalize_obs(array, self.config.env.clip_obs)
        dtype = torch.uint8 if self.observation_space.dtype == np.uint8 else torch.float32
        return self._act(array, dtype, single, deterministic, task)

    def _predict_dict(self, obs: Any, deterministic: bool, task: str | None) -> np.ndarray:
        """A dict observation (or a batch: every value with a leading batch dimension), packed as
        in training (auxrl/envs/dictobs.py)."""
        space = self.observation_space
        if not isinstance(obs, dict) or set(obs) != set(space.spaces):
            raise ValueError(f"predict: this agent takes a dict with the keys {sorted(space.spaces)}.")
        values = {k: np.asarray(v) for k, v in obs.items()}
        first = next(iter(space.spaces))
        single = values[first].shape == tuple(space.spaces[first].shape or ())
        if single:
            values = {k: v[None] for k, v in values.items()}
        for k, v in values.items():
            if v.shape[1:] != tuple(space.spaces[k].shape or ()):
                raise ValueError(
                    f"predict: key {k!r} of shape {v.shape}, but this agent takes {space.spaces[k]}."
                )
            if np.issubdtype(v.dtype, np.floating) and not np.isfinite(v).all():
                raise ValueError(f"predict: key {k!r} holds NaN or inf; the agent cannot act on it.")
        return self._act(DictLayout(space).pack(values), torch.uint8, single, deterministic, task)

    def _act(
        self, array: np.ndarray, dtype: torch.dtype, single: bool, deterministic: bool, task: str | None
    ) -> np.ndarray:
        tensor = torch.as_tensor(np.ascontiguousarray(array)).to(self.device, dtype)
        index = self.task_index(task) if self.model.task_aware else None
        task_t = None if index is None else torch.full((tensor.shape[0],), index, device=self.device)
        action = self.model.act(tensor, deterministic=deterministic, task=task_t).action.cpu().numpy()
        if isinstance(self.action_space, gym.spaces.Box):
            action = np.clip(action, self.action_space.low, self.action_space.high)
        return action[0] if single else action


def load_agent(run_dir_or_checkpoint: str | Path, device: str | torch.device = "auto") -> TrainedAgent:
    """Load a trained agent from a run directory (its latest checkpoint) or a checkpoint file.

    :param run_dir_or_checkpoint: what ``auxrl train`` wrote (``runs/...``) or one of its
        ``checkpoints/step_*.pt`` files.
    :param device: ``auto`` (CUDA if available), ``cpu``, ``cuda`` or ``cuda:N``.
    """
    dev = resolve_device(device)
    # On the CPU: the weights go to dev once, below.
    saved = read_checkpoint(run_dir_or_checkpoint, "config", "spaces", "model")
    cfg = build(Config, saved["config"])
    obs_space, action_space = (from_plain(space) for space in saved["spaces"])
    tasks = [TaskSpec(name, env_id, from_plain(space)) for name, env_id, space in saved.get("tasks") or []]
    model = build_agent(
        cfg.model.torso,
        cfg.model.hidden_sizes,
        obs_space,
        action_space,
        cfg.model.separate_value,
        tasks=tasks,
        popart=bool(tasks) and popart_enabled(cfg.model.popart, len(tasks)),
        popart_beta=cfg.model.popart_beta,
    )
    # The run's saved config may include heads this model lacks (auxiliary tasks): keep the
    # torso and the PPO heads only.
    state = {
        k: v for k, v in saved["model"].items() if k.startswith(("torso.", "heads.policy.", "heads.value."))
    }
    model.load_state_dict(state)
    stats = NormStats()
    stats.load_state_dict(saved.get("normalization") or {})
    return TrainedAgent(model.to(dev).eval(), cfg, obs_space, action_space, dev, stats)
