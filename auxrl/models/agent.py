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


def load_pretrained(agent: Agent, run_dir_or_checkpoint: str, modules: list[str] | None = None) -> list[str]:
    """Copy the torso and every same-named, same-shaped head from an earlier run.

    Returns the names of the modules that were loaded. Heads absent from the checkpoint, or of
    another shape (a new game's policy with a different number of actions), keep their fresh
    initialisation.
    """
    from auxrl.inference import read_checkpoint

    saved = read_checkpoint(run_dir_or_checkpoint, "model")["model"]
    own = agent.state_dict()
    names = list(agent.named_modules_for_freeze())
    for name in modules or []:
        if name not in names:
            raise ValueError(
                f"model.init_modules: no module {name!r}. Modules of this model: {', '.join(names)}."
            )
    loaded = []
    for name in modules if modules is not None else names:
        prefix = "torso." if name == "torso" else f"heads.{name}."
        keys = [k for k in own if k.startswith(prefix)]
        if keys and all(k in saved and saved[k].shape == own[k].shape for k in keys):
            for k in keys:
                own[k] = saved[k]
            loaded.append(name)
    if "torso" not in loaded:
        raise ValueError(
            f"model.init_from={run_dir_or_checkpoint!r}: its torso does not match this model "
            f"(a different model.torso or observation shape)."
        )
    agent.load_state_dict(own)
    return loaded


def freeze(agent: Agent, names: list[str]) -> list[str]:
    """Stop gradients into the named modules (they are then left out of the optimizer)."""
    modules = agent.named_modules_for_freeze()
    for name in names:
        if name not in modules:
            raise ValueError(
                f"model.freeze: no module {name!r}. Modules of this model: {', '.join(modules)}."
            )
        modules[name].requires_grad_(False)
    return list(names)
