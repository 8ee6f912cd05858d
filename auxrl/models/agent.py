"""The multi-headed model: one torso, a named collection of heads."""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import torch
from torch import nn

from auxrl.models.heads import SeparateValueHead, ValueHead, make_policy
from auxrl.models.torsos import Torso, make_torso


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
    """

    def __init__(self, torso: Torso, action_space: gym.Space, value_head: nn.Module | None = None) -> None:
        super().__init__()
        self.torso = torso
        self.heads = nn.ModuleDict(
            {
                "policy": make_policy(torso.feature_dim, action_space),
                "value": value_head if value_head is not None else ValueHead(torso.feature_dim),
            }
        )

    @property
    def policy(self) -> nn.Module:
        return self.heads["policy"]

    @property
    def value(self) -> nn.Module:
        return self.heads["value"]

    def forward(
        self, obs: torch.Tensor
    ) -> tuple[torch.distributions.Distribution, torch.Tensor, torch.Tensor]:
        """One torso pass -> (action distribution, value, features)."""
        features = self.torso(obs)
        return (*self.ppo_heads(features, obs), features)

    def ppo_heads(
        self, features: torch.Tensor, obs: torch.Tensor
    ) -> tuple[torch.distributions.Distribution, torch.Tensor]:
        """(action distribution, value) from the torso's ``features`` of ``obs``."""
        value = self.value(obs) if self.value.reads_observation else self.value(features)
        return self.policy(features), value

    @torch.no_grad()
    def get_value(self, obs: torch.Tensor) -> torch.Tensor:
        """V(obs), through the shared torso or the value head's own network."""
        return self.value(obs if self.value.reads_observation else self.torso(obs))

    @torch.no_grad()
    def act(self, obs: torch.Tensor, deterministic: bool = False) -> ActOutput:
        dist, value, _ = self(obs)
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
) -> Agent:
    """The torso, a policy head for ``action_space`` and a value head (on the torso's features, or
    with ``separate_value`` on its own torso of the same kind)."""
    if not isinstance(obs_space, gym.spaces.Box):
        raise ValueError(f"Unsupported observation space {obs_space}: auxrl needs Box observations.")
    shape = tuple(obs_space.shape)
    value = SeparateValueHead(make_torso(torso_name, shape, hidden_sizes)) if separate_value else None
    return Agent(make_torso(torso_name, shape, hidden_sizes), action_space, value)
