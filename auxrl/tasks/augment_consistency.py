"""Augmentation consistency of the policy and value (DrAC: Raileanu et al. 2021, "Automatic Data
Augmentation for Generalization in Reinforcement Learning", NeurIPS, arXiv 2006.12862).

On observations ``s`` of the current rollout, the agent's own policy and value heads are asked
to give the same answer on an augmented view ``aug(s)`` as on ``s`` itself:

    G_pi = KL( pi(.|s) || pi(.|aug(s)) ),   G_V = ( V(aug(s)) - V(s) )^2,   loss = G_pi + G_V,

with the unaugmented pass detached (a target, as in the paper), averaged over the real
transitions of the batch. The KL is computed in closed form (Categorical for discrete actions,
diagonal Gaussian summed over action dimensions for Box actions), so identical views give
exactly 0. The paper's weight alpha_r = 0.1 is the default (``aux.tasks.augment_consistency.weight``).

Unlike RAD (``ppo.augment``, which feeds PPO's loss augmented frames), PPO itself trains on the
frames it acted on; the augmentation enters only through this regulariser. Its gradient reaches
the shared torso (through the balancer, like every task's) and the policy and value heads (added
to PPO's, clipped with ``aux.max_grad_norm``), which the task reads from ``ctx.ppo_heads`` and
lists in ``shared_parameters()``: it owns no parameters and adds nothing to the checkpoint.
"""

from __future__ import annotations

from typing import Literal

import gymnasium as gym
import torch
from torch.distributions import kl_divergence

from auxrl.augment import augment
from auxrl.config import config_dataclass
from auxrl.models.heads import CategoricalPolicy, GaussianPolicy
from auxrl.tasks.base import (
    AuxOutput,
    AuxTask,
    Encoder,
    Needs,
    PPOHeads,
    Sequences,
    TaskContext,
    TaskMismatch,
    image_view,
    require_images,
)


@config_dataclass
class AugmentConsistencyConfig:
    augment: Literal["shift", "shift_intensity"] = "shift"
    """aug(s): a +-4 px shift, or the shift and SPR's intensity noise."""


class AugmentConsistency(AuxTask):
    """DrAC: KL(pi(.|s) || pi(.|aug(s))) + (V(aug(s)) - V(s))^2, the unaugmented pass detached."""

    name = "augment_consistency"
    description = "DrAC: policy KL and value gap between frames and augmented frames (trains PPO heads)"
    Config = AugmentConsistencyConfig
    default_weight = 0.1  # DrAC's alpha_r

    cfg: AugmentConsistencyConfig
    needs = Needs(sequence_length=1, replay=False)  # the current rollout's observations
    _heads: PPOHeads

    def __init__(self, cfg: AugmentConsistencyConfig, ctx: TaskContext) -> None:
        super().__init__(cfg, ctx)
        self.check(ctx)
        self.view = image_view(self.name, ctx)  # the frames (a dict observation's image key)
        assert ctx.ppo_heads is not None
        # The agent's heads in a plain dataclass (not submodules): they are saved once, as
        # heads.policy / heads.value, and not again under this task's name.
        self._heads = ctx.ppo_heads

    @classmethod
    def check(cls, ctx: TaskContext) -> None:
        require_images(cls.name, ctx)
        heads = ctx.ppo_heads
        if heads is None:
            raise TaskMismatch(
                f"aux task {cls.name!r} regularises the policy and value heads, but this context gives "
                f"none (TaskContext.ppo_heads); build it with the agent's heads."
            )
        if not isinstance(heads.policy, (CategoricalPolicy, GaussianPolicy)) or not isinstance(
            ctx.action_space, (gym.spaces.Discrete, gym.spaces.Box)
        ):
            raise TaskMismatch(
                f"aux task {cls.name!r} compares Categorical or diagonal Gaussian policies, but this "
                f"agent's policy head is {type(heads.policy).__name__} for {ctx.action_space}. Disable it "
                f"(aux.tasks.{cls.name}.enabled=false)."
            )

    def shared_parameters(self) -> list[torch.nn.Parameter]:
        return self._heads.parameters()

    def loss(self, seq: Sequences, encode: Encoder) -> AuxOutput:
        obs = seq.obs[:, 0]
        with torch.no_grad():  # the target: pi(.|s) and V(s), detached
            pi, value = self._heads(obs, encode)
        shifted = self.view.with_frames(obs, augment(self.view.frames(obs), self.cfg.augment, seq.generator))
        pi_aug, value_aug = self._heads(shifted, encode)
        kl = kl_divergence(pi, pi_aug)
        if kl.dim() > 1:  # Gaussian: independent action dimensions
            kl = kl.flatten(1).sum(-1)
        value_gap = (value_aug.float() - value.float()).square()
        mask = seq.valid[:, 0].float()  # the transitions PPO trains on (not reset placeholders)
        count = mask.sum().clamp(min=1.0)
        g_pi, g_v = (kl * mask).sum() / count, (value_gap * mask).sum() / count
        return AuxOutput(g_pi + g_v, {"policy_kl": g_pi.detach(), "value_gap": g_v.detach()})
