"""Latent next-state prediction (SPR, Schwarzer et al. 2021, arXiv 2007.05929) in two forms.

A transition model rolls the online features ``z_0 = encode(obs_0)`` forward with the actions
taken; each ``z_k`` goes through a linear projection and a predictor, and is compared with the
projection of ``obs_k``'s features by a target copy of torso and projection (no gradient) that
moves a fraction ``ema_tau`` toward the online ones after every update. The loss is the
normalised L2 distance (``2 - 2 cos``) between the two, masked where the window leaves
``obs_0``'s episode. The target, with no gradient, plus the extra predictor are what keeps this
from collapsing to constant features (as in BYOL); the projection matters too: torso features
end in a ReLU, so any two of them already have a high cosine, and the projection gives the loss
signed directions to tell states apart. Predicting in feature space rather than pixels lets the
torso keep only what the actions make predictable.

``mode`` chooses the form; ``horizon``, ``ema_tau`` and ``augment`` default to the mode's values
(None), and a value given wins:

- ``cheap`` (the default): one step ahead (``horizon: 1``), no augmentation, a slow EMA target
  (``ema_tau: 0.01``), a 2-layer MLP transition model and a 2-layer MLP predictor, the loss
  averaged over the real (sample, step) pairs, and the targets **centred** on their batch mean
  (see ``loss``): without augmentation, raw targets of different Atari states are nearly
  parallel, and centring leaves only what tells states apart to predict.
- ``spr``: SPR's recipe as far as it fits a flat feature vector. K = 5 steps ahead; every frame
  augmented (``shift_intensity``: a +-4 px random shift with replicate padding, then SPR's
  intensity noise), the online input ``obs_0`` and the target inputs ``obs_1..obs_K`` each with
  their own draws; the target torso and projection with SPR's momentum tau = 0 when augmenting,
  i.e. the online weights under a stop-gradient. auxrl's ``ema_tau`` is the step toward the
  online weights, ``1 - tau_SPR``: so ``ema_tau: 1.0`` (without augmentation ``ema_tau: 0.01``,
  SPR's setting for its unaugmented variant). The transition model is an MLP on ``[z, one-hot
  action]`` (Linear, ReLU, LayerNorm, Linear); the predictor is one linear layer, as SPR's; the
  normalised-L2 loss is **summed** over the K steps (SPR's equation) and averaged over the
  samples, and the targets are **not** centred: SPR relies on the augmented views, the
  stop-gradient and the predictor alone, and centring would change what is predicted (each
  target minus the batch mean instead of the target). Uncentred, targets of different states
  start nearly parallel, so ``cosine`` starts high: compare it with ``target_similarity``.

What differs from SPR: SPR's encoder keeps a spatial latent (64x7x7) that its convolutional
transition model (action one-hot broadcast over the spatial positions, conv-ReLU-BatchNorm-conv,
then ReLU and min-max renormalisation) steps; here the torso's flat output is stepped by an MLP,
with LayerNorm instead of BatchNorm (per sample, so one sample's prediction never depends on the
other, possibly masked, samples of the batch) and no output ReLU / renormalisation (the torso's
output is the agent's own, used unnormalised by the PPO heads, and ends in ReLU or Tanh by torso).
SPR's projection is the first layer of its Q head (shared with RL); PPO has no such layer, so it
is a separate linear layer. SPR trains a Rainbow agent with weight 5 on the mean over the K steps
(= 1 x the sum at K = 5); here the task's weight (default 0.1) multiplies the sum, about K times
the per-step loss (the default balancer, ``aux.balance.method: norm``, caps the task's torso
gradient at PPO's).

Metrics: ``cosine`` (mean over the real (sample, step) pairs), ``cosine_k1`` .. ``cosine_kK``
(per step, when ``horizon > 1``), and ``target_similarity`` (the mean cosine between the
uncentred targets of different samples) to watch for collapse: a rise toward 1 over training
means the target torso's features of different states are converging.
"""

from __future__ import annotations

import copy
import math
import warnings
from typing import Literal

import gymnasium as gym
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from auxrl.augment import augment
from auxrl.config import ConfigError, config_dataclass
from auxrl.envs.dictobs import ImageView
from auxrl.models.torsos import layer_init
from auxrl.perf import float32
from auxrl.tasks.base import (
    AuxOutput,
    AuxTask,
    Encoder,
    Needs,
    Sequences,
    TaskContext,
    TaskMismatch,
    image_view,
)

# mode: spr. SPR's K, and its target's step toward the online weights: momentum tau 0 with
# augmentation (the online weights, stop-gradient), 0.99 without; auxrl's ema_tau is 1 - tau.
SPR_HORIZON = 5
SPR_EMA_TAU_AUGMENTED = 1.0
SPR_EMA_TAU_UNAUGMENTED = 0.01
CHEAP_EMA_TAU = 0.01


@config_dataclass
class NextStateConfig:
    mode: Literal["cheap", "spr"] = "cheap"
    """cheap: 1 step, no augmentation, EMA target; spr: SPR's recipe (Schwarzer et al. 2021)."""
    horizon: int | None = Field(None, ge=1)
    """K: steps predicted ahead. null: the mode's (cheap 1, spr 5)."""
    ema_tau: float | None = Field(None, ge=0, le=1)
    """target <- (1 - tau) target + tau online after every update. null: the mode's (0.01; spr
    with augmentation 1.0: the online weights under a stop-gradient, SPR's momentum 0)."""
    augment: Literal["none", "shift", "shift_intensity"] | None = None
    """Augmentation of the online and target frames, independent draws. null: cheap none, spr
    shift_intensity."""
    hidden: int = Field(256, ge=1)
    """Width of the transition model's and projection's hidden layers."""
    projection_dim: int = Field(256, ge=1)
    """Size of the projected latents compared by the cosine loss."""
    source: Literal["minibatch", "replay"] | None = None
    """minibatch: z_0 is PPO's own features of its minibatch's first samples (no torso pass of the
    task's own; one step, no augmentation); replay: windows of K steps from the replay. null:
    minibatch for one unaugmented step (the cheap form), else replay."""

    def __post_init__(self) -> None:
        spr = self.mode == "spr"
        if self.augment is None:
            self.augment = "shift_intensity" if spr else "none"
        if self.horizon is None:
            self.horizon = SPR_HORIZON if spr else 1
        if self.ema_tau is None:
            if not spr:
                self.ema_tau = CHEAP_EMA_TAU
            else:
                augmented = self.augment != "none"
                self.ema_tau = SPR_EMA_TAU_AUGMENTED if augmented else SPR_EMA_TAU_UNAUGMENTED
        one_plain_step = self.horizon == 1 and self.augment == "none"
        if self.source is None:
            self.source = "minibatch" if one_plain_step else "replay"
        elif self.source == "minibatch" and not one_plain_step:
            raise ConfigError(
                f"next_state: source=minibatch predicts one step from PPO's own (unaugmented) features, "
                f"but horizon is {self.horizon} and augment {self.augment}: use source=replay, or "
                f"horizon=1 and augment=none."
            )
        if spr:
            self._warn_unlike_spr()

    def _warn_unlike_spr(self) -> None:
        """mode spr with a horizon or ema_tau other than SPR's: say so (a given key wins over the
        mode's default, and configs/breakout.yaml, pong.yaml and atari100k.yaml give the cheap
        form's horizon 1 and ema_tau 0.01), without refusing it (it may be meant)."""
        tau = SPR_EMA_TAU_AUGMENTED if self.augment != "none" else SPR_EMA_TAU_UNAUGMENTED
        if self.horizon == SPR_HORIZON and self.ema_tau == tau:
            return
        warnings.warn(
            f"aux.tasks.next_state: mode spr runs with horizon {self.horizon} and ema_tau "
            f"{self.ema_tau}, SPR's are {SPR_HORIZON} and {tau} (augment={self.augment}). A key "
            f"given, by a config file too, wins over the mode's default: for SPR's own, leave them "
            f"out, e.g. 'aux.tasks.next_state={{mode: spr, weight: 0.1}}' (replaces the file's entry).",
            stacklevel=2,
        )


class NextStatePrediction(AuxTask):
    """Predict target-torso features of the next ``horizon`` observations from z_0 and the actions."""

    name = "next_state"
    description = "SPR-style latent forward model: predict EMA-torso features of next observations"
    Config = NextStateConfig
    default_weight = 0.1

    cfg: NextStateConfig
    target_torso: nn.Module
    target_projection: nn.Module
    _online: nn.Module

    def __init__(self, cfg: NextStateConfig, ctx: TaskContext) -> None:
        super().__init__(cfg, ctx)
        self.check(ctx)
        self.spr = cfg.mode == "spr"
        self.view = None  # the frames to augment (a dict observation's image key)
        if cfg.augment != "none":
            self._check_images(cfg, ctx)
            self.view = image_view(self.name, ctx)
        assert cfg.horizon is not None  # resolved by NextStateConfig
        self.needs = Needs(sequence_length=cfg.horizon, replay=True, minibatch=cfg.source == "minibatch")
        # The online torso belongs to the agent: keep a plain reference (not a submodule), so it
        # is neither in this task's state_dict nor in its parameters twice.
        object.__setattr__(self, "_online", ctx.torso)
        self.target_torso = copy.deepcopy(ctx.torso).requires_grad_(False)
        space = ctx.action_space
        self.discrete = isinstance(space, gym.spaces.Discrete)
        # Discrete: one-hot of n; Box (checked): the flattened action vector.
        self.action_dim = (
            int(space.n) if isinstance(space, gym.spaces.Discrete) else math.prod(space.shape or ())
        )
        dim = ctx.feature_dim
        # The modules are built in the same order in both modes (the same seed draws the same
        # weights for the layers they share); spr's LayerNorm draws nothing.
        first = layer_init(nn.Linear(dim + self.action_dim, cfg.hidden))
        hidden: list[nn.Module] = [nn.ReLU(), nn.LayerNorm(cfg.hidden)] if self.spr else [nn.ReLU()]
        self.transition = nn.Sequential(first, *hidden, layer_init(nn.Linear(cfg.hidden, dim)))
        proj = cfg.projection_dim
        self.projection = layer_init(nn.Linear(dim, proj))
        self.target_projection = copy.deepcopy(self.projection).requires_grad_(False)
        if self.spr:  # SPR's prediction head q: one linear layer
            self.predictor: nn.Module = layer_init(nn.Linear(proj, proj))
        else:
            self.predictor = nn.Sequential(
                layer_init(nn.Linear(proj, proj)), nn.ReLU(), layer_init(nn.Linear(proj, proj))
            )

    @classmethod
    def check(cls, ctx: TaskContext) -> None:
        if not isinstance(ctx.action_space, (gym.spaces.Discrete, gym.spaces.Box)):
            raise TaskMismatch(
                f"aux task {cls.name!r} feeds actions to its transition model as one-hot "
                f"(Discrete) or raw vectors (Box), but this env's action space is "
                f"{ctx.action_space}. Disable it (aux.tasks.{cls.name}.enabled=false)."
            )

    @classmethod
    def _check_images(cls, cfg: NextStateConfig, ctx: TaskContext) -> None:
        try:
            ImageView(ctx.obs_space, ctx.image_key)
        except ValueError as err:
            default = " (mode spr's default)" if cfg.mode == "spr" else ""
            raise TaskMismatch(
                f"aux task {cls.name!r} with augment={cfg.augment!r}{default} shifts image frames, but "
                f"{err}. Set aux.tasks.{cls.name}.augment=none (SPR's unaugmented form: ema_tau 0.01)."
            ) from None

    def _augmented(self, obs: torch.Tensor, kind: str, generator: torch.Generator | None) -> torch.Tensor:
        if self.view is None:  # augment "none": the frames themselves
            return obs
        return self.view.with_frames(obs, augment(self.view.frames(obs), kind, generator))

    def _action_inputs(self, actions: torch.Tensor) -> torch.Tensor:
        """[B, K, *action_shape] -> [B, K, action_dim] float."""
        if self.discrete:
            return F.one_hot(actions.long(), self.action_dim).float()
        return actions.float().flatten(2)

    def loss(self, seq: Sequences, encode: Encoder) -> AuxOutput:
        batch, horizon = seq.actions.shape[:2]
        # The online view first, then the targets': each frame with its own draws from the
        # learner's stream (augment "none" returns the frames themselves and draws nothing).
        kind = self.cfg.augment
        assert kind is not None  # resolved by NextStateConfig
        online_obs = self._augmented(seq.obs[:, 0], kind, seq.generator)
        with torch.no_grad():
            target_obs = self._augmented(seq.obs[:, 1:], kind, seq.generator)
            # The torsos may run in bf16 (perf.bf16); the heads run in float32 (perf.float32).
            targets = float32(self.target_projection, self.target_torso(target_obs.flatten(0, 1)))
            targets = targets.reshape(batch, horizon, -1)
        actions = self._action_inputs(seq.actions)
        z = seq.features if seq.features is not None else encode(online_obs)  # PPO's (source minibatch)
        p = F.normalize(float32(self._predict, z, actions), dim=-1)  # [B, K, P]
        if self.spr:
            t = F.normalize(targets, dim=-1)  # SPR: the targets as they are (see the module docstring)
        else:
            # Centre the targets on their batch mean before normalising: Atari frames share most
            # of their pixels, so raw target features of different states have cosine ~0.99
            # (measured on Breakout at init) and predicting their mean direction would already
            # score ~0.99. Centred, only what tells states apart is left to predict, and
            # collapsed (constant) targets centre to zero, which no prediction matches, so
            # collapse earns nothing.
            t = F.normalize(targets - targets.mean(dim=(0, 1), keepdim=True), dim=-1)
        # Prediction k + 1 targets obs[:, k + 1], which is in obs[:, 0]'s episode iff
        # in_episode[:, k].
        mask = seq.in_episode.float()
        count = mask.sum().clamp(min=1.0)
        distance = (p - t).square().sum(-1)  # = 2 - 2 cos
        cosine = (p * t).sum(-1).detach()
        first = F.normalize(targets[:, 0], dim=-1)  # uncentred, one per sample: mean off-diagonal
        # In float32 also under autocast, which would run the matmul in bf16 (about 2 decimal
        # digits: too coarse for a collapse signal read near 1).
        cosines = float32(lambda f: f @ f.T, first)
        similarity = (cosines.sum() - batch) / max(batch * batch - batch, 1)
        metrics = {"cosine": (cosine * mask).sum() / count, "target_similarity": similarity}
        if horizon > 1:
            per_step = (cosine * mask).sum(0) / mask.sum(0).clamp(min=1.0)
            metrics.update({f"cosine_k{k + 1}": per_step[k] for k in range(horizon)})
        if self.spr:
            # SPR: the sum over the K steps, averaged over the samples; a sample counts when its
            # first target is in its episode (masked steps add 0, as in SPR).
            samples = mask[:, 0].sum().clamp(min=1.0)
            return AuxOutput((distance * mask).sum() / samples, metrics)
        return AuxOutput((distance * mask).sum() / count, metrics)

    def _predict(self, z: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """The online head: ``z_0`` rolled forward with the actions, each ``z_k`` projected and
        predicted: ``[B, K, P]``."""
        predictions = []
        for k in range(actions.shape[1]):
            z = self.transition(torch.cat([z, actions[:, k]], dim=-1))  # z_{k+1}
            predictions.append(self.predictor(self.projection(z)))
        return torch.stack(predictions, 1)

    @torch.no_grad()
    def ema_update(self, tau: float) -> None:
        """Move the target torso and projection a fraction ``tau`` toward the online ones (at
        ``tau = 1`` exactly onto them: ``lerp`` with weight 1 returns the end point)."""
        target = [*self.target_torso.parameters(), *self.target_projection.parameters()]
        online = [p.detach() for p in (*self._online.parameters(), *self.projection.parameters())]
        torch._foreach_lerp_(target, online, tau)
        for t_buf, o_buf in zip(self.target_torso.buffers(), self._online.buffers(), strict=True):
            t_buf.copy_(o_buf)  # e.g. normalisation statistics: follow the online torso

    def after_update(self) -> None:
        assert self.cfg.ema_tau is not None  # resolved by NextStateConfig
        self.ema_update(self.cfg.ema_tau)

    def on_torso_loaded(self) -> None:
        self.ema_update(1.0)  # start the target from the loaded torso, not the random one
