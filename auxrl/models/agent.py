"""The multi-headed model: one torso, a named collection of heads."""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import torch
from torch import nn

from auxrl.envs.dictobs import DictLayout
from auxrl.models.heads import SeparateValueHead, ValueHead, make_policy
from auxrl.models.multitask import TaskPolicies, TaskSpec, TaskValueHead
from auxrl.models.torsos import DictTorso, Torso, make_torso


@dataclass
class ActOutput:
    action: torch.Tensor
    log_prob: torch.Tensor
    value: torch.Tensor


class Agent(nn.Module):
    """``torso`` feeds every module in ``heads`` (``policy``, ``value`` and auxiliary tasks).

    The torso runs once per batch; heads read its features. Auxiliary tasks are added to
    ``heads`` under their config names, so they are saved, loaded and frozen by name like the
    PPO heads.

    ``tasks`` (multi-task training, ``env.tasks``, or PopArt on one task): the PPO heads are
    per task (auxrl/models/multitask.py) and every call takes each sample's task index
    (``task``, ``[B]`` long); without tasks the agent is task-blind and ``task`` is ignored.
    """

    def __init__(
        self,
        torso: Torso,
        action_space: gym.Space,
        value_head: nn.Module | None = None,
        policy: nn.Module | None = None,
        tasks: list[TaskSpec] | None = None,
    ) -> None:
        super().__init__()
        self.torso = torso
        self.tasks = list(tasks or [])
        self.heads = nn.ModuleDict(
            {
                "policy": policy if policy is not None else make_policy(torso.feature_dim, action_space),
                "value": value_head if value_head is not None else ValueHead(torso.feature_dim),
            }
        )

    @property
    def task_aware(self) -> bool:
        return bool(self.tasks)

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    @property
    def policy(self) -> nn.Module:
        return self.heads["policy"]

    @property
    def value(self) -> nn.Module:
        return self.heads["value"]

    def forward(
        self, obs: torch.Tensor, task: torch.Tensor | None = None
    ) -> tuple[torch.distributions.Distribution, torch.Tensor, torch.Tensor]:
        """One torso pass -> (action distribution, value, features)."""
        features = self.torso(obs)
        return (*self.ppo_heads(features, obs, task), features)

    def ppo_heads(
        self, features: torch.Tensor, obs: torch.Tensor, task: torch.Tensor | None = None
    ) -> tuple[torch.distributions.Distribution, torch.Tensor]:
        """(action distribution, value) from the torso's ``features`` of ``obs``."""
        if self.task_aware:
            task = self._task(task, features)
            pi = (
                self.policy(features, task)
                if getattr(self.policy, "task_aware", False)
                else self.policy(features)
            )
            return pi, self.value(features, task)
        value = self.value(obs) if self.value.reads_observation else self.value(features)
        return self.policy(features), value

    @torch.no_grad()
    def get_value(self, obs: torch.Tensor, task: torch.Tensor | None = None) -> torch.Tensor:
        """V(obs), through the shared torso or the value head's own network."""
        if self.task_aware:
            features = self.torso(obs)
            return self.value(features, self._task(task, features))
        return self.value(obs if self.value.reads_observation else self.torso(obs))

    @staticmethod
    def _task(task: torch.Tensor | None, features: torch.Tensor) -> torch.Tensor:
        if task is None:  # one task (PopArt without env.tasks)
            return torch.zeros(features.shape[0], dtype=torch.long, device=features.device)
        return task

    @torch.no_grad()
    def act(
        self, obs: torch.Tensor, deterministic: bool = False, task: torch.Tensor | None = None
    ) -> ActOutput:
        dist, value, _ = self(obs, task)
        # policy.sample: Categorical's draw without torch.multinomial's two host syncs (heads.py).
        action = self.policy.mode(dist) if deterministic else self.policy.sample(dist)
        return ActOutput(action, self.policy.log_prob(dist, action), value)

    def named_modules_for_freeze(self) -> dict[str, nn.Module]:
        """Modules that ``model.freeze`` may name."""
        return {"torso": self.torso, **dict(self.heads.items())}


def build_agent(
    torso_name: str,
    hidden_sizes: list[int],
    obs_space: gym.Space,
    action_space: gym.Space,
    separate_value: bool = False,
    tasks: list[TaskSpec] | None = None,
    popart: bool = False,
    popart_beta: float = 0.01,
) -> Agent:
    """The torso, a policy head for ``action_space`` and a value head (on the torso's features, or
    with ``separate_value`` on its own torso of the same kind).

    ``tasks``: per-task PPO heads (a policy head per task when there are several, a value output
    per task, with PopArt where ``popart``); one task with ``popart``: PopArt on a plain policy."""
    if isinstance(obs_space, gym.spaces.Dict):  # packed rows (auxrl/envs/dictobs.py)
        if separate_value:
            raise ValueError("model.separate_value=true is not supported with dict observations.")
        layout = DictLayout(obs_space)

        def make() -> Torso:
            return DictTorso(layout, torso_name, hidden_sizes)

    elif isinstance(obs_space, gym.spaces.Box):
        shape = tuple(obs_space.shape)

        def make() -> Torso:
            return make_torso(torso_name, shape, hidden_sizes)

    else:
        raise ValueError(f"Unsupported observation space {obs_space}: auxrl needs Box or Dict observations.")
    if tasks:
        torso = make()
        policy = TaskPolicies(torso.feature_dim, tasks) if len(tasks) > 1 else None
        value = TaskValueHead(torso.feature_dim, len(tasks), popart, popart_beta)
        return Agent(torso, tasks[0].action_space, value, policy, tasks)
    # (the value's own torso first: the order the weights are drawn in, as before)
    value = SeparateValueHead(make()) if separate_value else None
    return Agent(make(), action_space, value)
