"""PPO as an objective: the clipped surrogate, the clipped value loss and the entropy bonus, as
named loss terms (as TorchRL's loss modules return them)."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
from torch import nn

from auxrl.config import PPOConfig
from auxrl.ppo.rollout import Batch


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1.0)


@dataclass
class PPOLoss:
    """Named terms; ``total`` is what PPO contributes to the summed loss."""

    policy: torch.Tensor
    value: torch.Tensor
    entropy: torch.Tensor
    approx_kl: torch.Tensor
    old_approx_kl: torch.Tensor
    clipfrac: torch.Tensor
    total: torch.Tensor

    def terms(self) -> dict[str, torch.Tensor]:
        """The named terms as they are logged (``total`` is logged by the learner)."""
        return {
            "losses/policy_loss": self.policy,
            "losses/value_loss": self.value,
            "losses/entropy": self.entropy,
            "losses/approx_kl": self.approx_kl,
            "losses/old_approx_kl": self.old_approx_kl,
            "losses/clipfrac": self.clipfrac,
        }


def ppo_loss(
    cfg: PPOConfig,
    batch: Batch,
    new_log_probs: torch.Tensor,
    entropy: torch.Tensor,
    new_values: torch.Tensor,
) -> PPOLoss:
    mask = batch.valid
    log_ratio = new_log_probs - batch.log_probs
    ratio = log_ratio.exp()
    with torch.no_grad():
        old_approx_kl = masked_mean(-log_ratio, mask)
        approx_kl = masked_mean((ratio - 1) - log_ratio, mask)  # k3 estimator, always >= 0
        clipfrac = masked_mean(((ratio - 1.0).abs() > cfg.clip_coef).float(), mask)

    adv = batch.advantages
    if cfg.norm_adv:  # per minibatch, over real transitions only
        mean = masked_mean(adv, mask)
        var = masked_mean((adv - mean) ** 2, mask) * mask.sum() / (mask.sum() - 1).clamp(min=1.0)
        adv = (adv - mean) / (var.sqrt() + 1e-8)

    pg_loss = masked_mean(
        torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - cfg.clip_coef, 1 + cfg.clip_coef)),
        mask,
    )
    if cfg.clip_vloss:
        v_clipped = batch.values + (new_values - batch.values).clamp(-cfg.clip_coef, cfg.clip_coef)
        v_loss = 0.5 * masked_mean(
            torch.maximum((new_values - batch.returns) ** 2, (v_clipped - batch.returns) ** 2), mask
        )
    else:
        v_loss = 0.5 * masked_mean((new_values - batch.returns) ** 2, mask)
    ent = masked_mean(entropy, mask)
    total = pg_loss - cfg.ent_coef * ent + cfg.vf_coef * v_loss
    return PPOLoss(pg_loss, v_loss, ent, approx_kl, old_approx_kl, clipfrac, total)


class PPOObjective(nn.Module):
    """PPO's objective on a minibatch: owns the ``policy`` and ``value`` heads.

    Called with the torso's ``features`` of the minibatch's (possibly augmented) ``obs``; the
    learner (auxrl/learner.py) runs the torso, so that auxiliary tasks can share that pass.
    """

    heads = ("policy", "value")

    def __init__(self, cfg: PPOConfig) -> None:
        super().__init__()
        self.cfg = cfg

    def forward(self, agent: nn.Module, batch: Batch, features: torch.Tensor, obs: torch.Tensor) -> PPOLoss:
        if getattr(agent, "task_aware", False):
            pi, values, batch = self._task_inputs(agent, batch, features)
        else:
            pi, values = agent.ppo_heads(features, obs)
        return ppo_loss(
            self.cfg, batch, agent.policy.log_prob(pi, batch.actions), agent.policy.entropy(pi), values
        )

    def per_task(self, agent: nn.Module, batch: Batch, features: torch.Tensor) -> list[PPOLoss]:
        """Multi-task: PPO's terms on each task's samples of the minibatch (a task's advantages
        normalised among its own samples), in the order of ``agent.tasks``."""
        pi, values, batch = self._task_inputs(agent, batch, features)
        log_probs, entropy = agent.policy.log_prob(pi, batch.actions), agent.policy.entropy(pi)
        assert batch.task is not None
        return [
            ppo_loss(
                self.cfg, replace(batch, valid=batch.valid * (batch.task == i)), log_probs, entropy, values
            )
            for i in range(len(agent.tasks))
        ]

    @staticmethod
    def _task_inputs(agent: nn.Module, batch: Batch, features: torch.Tensor):
        """Per-task heads: the distribution of each sample's own policy head, its value output on
        the normalised scale (PopArt; plain otherwise), and the batch's old values, returns and
        advantages on that same scale."""
        task = batch.task if batch.task is not None else torch.zeros_like(batch.values, dtype=torch.long)
        head = agent.value
        policy = agent.policy
        pi = policy(features, task) if getattr(policy, "task_aware", False) else policy(features)
        batch = replace(
            batch,
            values=head.normalize(batch.values, task),
            returns=head.normalize(batch.returns, task),
            advantages=batch.advantages / head.scale(task),
            task=task,
        )
        return pi, head.normalized(features, task), batch


def mean_loss(losses: list[PPOLoss], batch: Batch) -> PPOLoss:
    """The tasks' terms averaged over the tasks that have samples in ``batch`` (multi-task)."""
    assert batch.task is not None
    present = torch.stack([((batch.task == i) & (batch.valid > 0)).any() for i in range(len(losses))]).float()
    weights = present / present.sum().clamp(min=1.0)
    return PPOLoss(
        **{
            f.name: sum(w * getattr(loss, f.name) for w, loss in zip(weights, losses, strict=True))
            for f in fields(PPOLoss)
        }
    )


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """1 - Var[returns - values] / Var[returns] over real transitions (nan when Var is 0).

    Computed on the device with a mask, so logging it costs no extra host sync.
    """
    m = mask.float()
    n = m.sum()
    mean_y = (returns * m).sum() / n
    var_y = ((returns - mean_y) ** 2 * m).sum() / n
    resid = (returns - values) * m
    var_r = ((resid - resid.sum() / n) ** 2 * m).sum() / n
    return torch.where(var_y > 0, 1 - var_r / var_y, torch.full_like(var_y, float("nan")))
