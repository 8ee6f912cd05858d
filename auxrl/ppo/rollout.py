"""Device-resident rollout storage and Generalized Advantage Estimation.

Layout is time-major, ``[num_steps, num_envs, ...]``, preallocated once on the training device.
Observations are stored in the env's dtype (uint8 for frames) and only become float inside the
torso.

Per step t the storage holds ``obs_t``, the action and its log-prob, ``V(obs_t)``, and what the
env returned for that action: reward, ``terminated``, ``truncated`` and ``valid`` (False for the
NEXT_STEP reset steps, which are not transitions and are masked out of every loss). With
``env.labels``, ``labels[t]`` are the state labels of ``obs_t`` (auxrl/envs/labels.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def compute_gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    terminated: torch.Tensor,
    truncated: torch.Tensor,
    valid: torch.Tensor,
    next_value: torch.Tensor,
    gamma: float,
    gae_lambda: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE(lambda) over a ``[T, N]`` rollout; returns (advantages, returns), zero where invalid.

    - terminated: no bootstrap, the chain stops.
    - truncated: bootstrap from the value of the final observation, which under NEXT_STEP
      autoreset is the next stored observation (or ``next_value`` at the end), then stop.
    - invalid (reset) steps get advantage 0; the chain never crosses them because the step
      before one is always done.
    """
    num_steps = rewards.shape[0]
    next_values = torch.cat([values[1:], next_value.unsqueeze(0)], dim=0)
    not_terminated = 1.0 - terminated.float()
    not_done = 1.0 - torch.maximum(terminated.float(), truncated.float())
    deltas = rewards + gamma * next_values * not_terminated - values
    # A_t = delta_t + (gamma lambda not_done_t) A_{t+1}: the factors of every step at once, then
    # per step a product and a sum written straight into the step's row: two kernels a step where
    # the plain loop launched four, with the same roundings (a fused multiply-add, one kernel,
    # rounds once and differs in the last bits).
    discounts = gamma * gae_lambda * not_done
    advantages = torch.empty_like(rewards)
    last = torch.zeros_like(next_value)
    for t in reversed(range(num_steps)):
        last = torch.mul(discounts[t], last, out=advantages[t]).add_(deltas[t])
    advantages = advantages * valid.float()
    returns = (advantages + values) * valid.float()
    return advantages, returns


@dataclass
class Batch:
    """A flat minibatch view handed to the loss."""

    obs: torch.Tensor
    actions: torch.Tensor
    log_probs: torch.Tensor
    values: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor
    valid: torch.Tensor
    index: torch.Tensor | None = None  # flat indices into the [num_steps * num_envs] rollout
    task: torch.Tensor | None = None  # [B] long: each sample's task (multi-task heads; zeros otherwise)


class RolloutStorage:
    def __init__(
        self,
        num_steps: int,
        num_envs: int,
        obs_shape: tuple[int, ...],
        obs_dtype: torch.dtype,
        action_shape: tuple[int, ...],
        action_dtype: torch.dtype,
        device: torch.device,
        num_labels: int = 0,
    ) -> None:
        self.num_steps, self.num_envs, self.device = num_steps, num_envs, device
        tn = (num_steps, num_envs)
        self.obs = torch.zeros(tn + obs_shape, dtype=obs_dtype, device=device)
        self.actions = torch.zeros(tn + action_shape, dtype=action_dtype, device=device)
        self.log_probs = torch.zeros(tn, device=device)
        self.values = torch.zeros(tn, device=device)
        self.rewards = torch.zeros(tn, device=device)
        self.terminated = torch.zeros(tn, dtype=torch.bool, device=device)
        self.truncated = torch.zeros(tn, dtype=torch.bool, device=device)
        self.valid = torch.ones(tn, dtype=torch.bool, device=device)
        self.advantages = torch.zeros(tn, device=device)
        self.returns = torch.zeros(tn, device=device)
        # The observation after the last step (bootstrap input, and next_obs for aux tasks).
        self.next_obs = torch.zeros((num_envs,) + obs_shape, dtype=obs_dtype, device=device)
        # env.labels: the state labels of obs (and of next_obs), float32; None without labels.
        self.labels = torch.zeros(tn + (num_labels,), device=device) if num_labels else None
        self.next_labels = torch.zeros((num_envs, num_labels), device=device) if num_labels else None
        # The task each env plays (the index of its heads in a multi-task model; 0 otherwise).
        self.task = torch.zeros(num_envs, dtype=torch.long, device=device)

    def finish(self, next_value: torch.Tensor, gamma: float, gae_lambda: float) -> None:
        self.advantages, self.returns = compute_gae(
            self.rewards,
            self.values,
            self.terminated,
            self.truncated,
            self.valid,
            next_value,
            gamma,
            gae_lambda,
        )

    def minibatches(self, num_minibatches: int, generator: torch.Generator | None = None):
        """Yield shuffled flat minibatches (indices drawn on the device)."""
        size = self.num_steps * self.num_envs
        flat = Batch(
            obs=self.obs.flatten(0, 1),
            actions=self.actions.flatten(0, 1),
            log_probs=self.log_probs.flatten(),
            values=self.values.flatten(),
            advantages=self.advantages.flatten(),
            returns=self.returns.flatten(),
            valid=self.valid.flatten().float(),
            task=self.task.expand(self.num_steps, self.num_envs).flatten(),
        )
        perm = torch.randperm(size, device=self.device, generator=generator)
        for idx in perm.chunk(num_minibatches):
            yield Batch(**{k: v[idx] for k, v in vars(flat).items() if k != "index"}, index=idx)
