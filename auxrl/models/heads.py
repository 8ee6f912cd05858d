"""PPO's heads: features -> action distribution, features -> state value.

Each head runs in float32 on ``features.float()``, also under bf16 autocast (``perf.bf16``:
:func:`auxrl.perf.float32`), so logits, means and values are float32 numbers, not rounded bf16.
"""

from __future__ import annotations

import gymnasium as gym
import torch
from torch import nn
from torch.distributions import Categorical, Normal

from auxrl.models.torsos import layer_init
from auxrl.perf import float32

# torch validates a distribution's parameters and every log_prob argument by default: on CUDA each
# check is a host sync (two per PPO minibatch, one more per rollout step). The inputs are checked
# where they come from instead: env observations and rewards are finite (auxrl/envs), losses and
# gradients are checked before every optimizer step (auxrl/gradients.py).
VALIDATE = False


class CategoricalPolicy(nn.Module):
    """Discrete actions. Small output init (std 0.01) keeps the first policy near uniform."""

    def __init__(self, feature_dim: int, num_actions: int) -> None:
        super().__init__()
        self.logits = layer_init(nn.Linear(feature_dim, num_actions), std=0.01)

    def forward(self, features: torch.Tensor) -> Categorical:
        return Categorical(logits=float32(self.logits, features), validate_args=VALIDATE)

    @staticmethod
    def sample(dist: Categorical) -> torch.Tensor:
        """One action per row, drawn on the device with no host sync.

        ``Categorical.sample`` calls ``torch.multinomial``, whose one-sample path checks its input
        with two ``.item()`` calls (two host syncs per act on CUDA) before drawing
        ``argmax(probs / q)`` with ``q ~ Exp(1)`` (the Gumbel-max trick: ``-log q`` is Gumbel).
        This is that draw without the checks: the same distribution, and on the same generator
        the same numbers, so the same actions for a seed. The checks' job (no NaN/inf
        probabilities) is done where the numbers come from: observations are checked finite by
        the envs, and a NaN logit gives a NaN log-prob that the update's non-finite check stops.
        """
        probs = dist.probs
        return (probs / torch.empty_like(probs).exponential_()).argmax(-1)

    @staticmethod
    def log_prob(dist: Categorical, actions: torch.Tensor) -> torch.Tensor:
        return dist.log_prob(actions.long())

    @staticmethod
    def entropy(dist: Categorical) -> torch.Tensor:
        return dist.entropy()

    @staticmethod
    def mode(dist: Categorical) -> torch.Tensor:
        return dist.probs.argmax(-1)


class GaussianPolicy(nn.Module):
    """Box actions: diagonal Gaussian with a state-independent log std (CleanRL continuous)."""

    def __init__(self, feature_dim: int, action_dim: int) -> None:
        super().__init__()
        self.mean = layer_init(nn.Linear(feature_dim, action_dim), std=0.01)
        self.log_std = nn.Parameter(torch.zeros(action_dim))

    def forward(self, features: torch.Tensor) -> Normal:
        mean = float32(self.mean, features)
        return Normal(mean, self.log_std.expand_as(mean).exp(), validate_args=VALIDATE)

    @staticmethod
    def sample(dist: Normal) -> torch.Tensor:
        return dist.sample()  # torch.normal: no host sync

    @staticmethod
    def log_prob(dist: Normal, actions: torch.Tensor) -> torch.Tensor:
        return dist.log_prob(actions).sum(-1)

    @staticmethod
    def entropy(dist: Normal) -> torch.Tensor:
        return dist.entropy().sum(-1)

    @staticmethod
    def mode(dist: Normal) -> torch.Tensor:
        return dist.mean


class ValueHead(nn.Module):
    """Features -> state value: one linear layer on the shared torso's features."""

    reads_observation = False

    def __init__(self, feature_dim: int) -> None:
        super().__init__()
        self.v = layer_init(nn.Linear(feature_dim, 1), std=1.0)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return float32(self.v, features).squeeze(-1)


class SeparateValueHead(nn.Module):
    """Observation -> state value through its own MLP (``model.separate_value``).

    CleanRL's continuous-control agent (after openai/baselines' MuJoCo PPO) gives the critic its
    own network: the value loss then never moves the features the policy acts on. The policy
    and the auxiliary heads still share the torso.
    """

    reads_observation = True

    def __init__(self, torso: nn.Module) -> None:
        super().__init__()
        self.torso = torso
        self.v = layer_init(nn.Linear(torso.feature_dim, 1), std=1.0)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return float32(self.v, self.torso(obs)).squeeze(-1)


def make_policy(feature_dim: int, action_space: gym.Space) -> nn.Module:
    if isinstance(action_space, gym.spaces.Discrete):
        return CategoricalPolicy(feature_dim, int(action_space.n))
    if isinstance(action_space, gym.spaces.Box) and len(action_space.shape) == 1:
        return GaussianPolicy(feature_dim, action_space.shape[0])
    raise ValueError(
        f"Unsupported action space {action_space}: auxrl's policy heads handle Discrete "
        f"(categorical) and 1-D Box (diagonal Gaussian) actions."
    )
