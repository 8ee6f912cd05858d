"""Reward prediction (UNREAL, Jaderberg et al. 2016, arXiv 1611.05397).

Classify the sign of the reward that follows an observation. Rewards are sparse, so rewarding
samples are given a share ``rewarding_fraction`` of the loss (UNREAL's skewed sampling); without
it the head would learn "always zero". The task shapes the torso toward features that tell
rewarding states apart, which is the point: its accuracy on skewed samples is not a calibrated
predictor of the real reward rate. Two sources (``source``):

* ``minibatch`` (default): the first ``batch_size`` samples of each PPO minibatch, on the torso
  features PPO's forward pass already computed (no torso pass of its own). The observation is a
  stack of the last frames, so it carries the history UNREAL's three frames give; the skew is a
  weighting: rewarding samples share ``rewarding_fraction`` of the loss, the others the rest.
* ``replay``: UNREAL's form: three consecutive observations from the replay, drawn so that a share
  ``rewarding_fraction`` end in a reward, encoded by the task (a torso pass of its own).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from auxrl.config import config_dataclass
from auxrl.models.torsos import layer_init
from auxrl.perf import float32
from auxrl.tasks.base import (
    AuxOutput,
    AuxTask,
    Encoder,
    Needs,
    Sequences,
    TaskContext,
    chance_cross_entropy,
    scale_free,
)

FRAMES = 3  # UNREAL predicts r_t from the three observations before it
ZERO, POSITIVE, NEGATIVE = 0, 1, 2


def reward_class(rewards: torch.Tensor) -> torch.Tensor:
    """Reward -> class index: 0 zero, 1 positive, 2 negative (int64, same shape)."""
    return (rewards > 0).long() * POSITIVE + (rewards < 0).long() * NEGATIVE


@config_dataclass
class RewardPredictionConfig:
    rewarding_fraction: float = Field(0.5, ge=0, le=1)
    """Share of replay samples whose reward is non-zero (UNREAL: 0.5)."""
    hidden: int = Field(128, ge=1)
    """Width of the head's hidden layer."""
    source: Literal["minibatch", "replay"] = "minibatch"
    """minibatch: PPO's minibatch and its torso features (cheap); replay: UNREAL's 3-frame windows."""
    scale_free: bool = True
    """The head reads layer-normalised features, so its cross-entropy cannot grow the shared
    torso's feature scale (tasks/base.py: scale_free); false: raw features, as UNREAL."""


class RewardPrediction(AuxTask):
    """Classify the next reward as zero / positive / negative from 3 frames of torso features."""

    name = "reward_prediction"
    description = "UNREAL reward prediction: sign of the next reward from 3 observations"
    Config = RewardPredictionConfig
    default_weight = 1.0

    cfg: RewardPredictionConfig

    def __init__(self, cfg: RewardPredictionConfig, ctx: TaskContext) -> None:
        super().__init__(cfg, ctx)
        # Instance attribute: the source and the skew come from the config.
        if cfg.source == "minibatch":
            self.frames, self.needs = 1, Needs(minibatch=True)
        else:
            self.frames = FRAMES
            self.needs = Needs(sequence_length=FRAMES, replay=True, rewarding_fraction=cfg.rewarding_fraction)
        self.head = nn.Sequential(
            layer_init(nn.Linear(self.frames * ctx.feature_dim, cfg.hidden)),
            nn.ReLU(),
            layer_init(nn.Linear(cfg.hidden, 3), std=0.01),  # start near uniform
        )

    def check_data(self, rewards: torch.Tensor, terminated: torch.Tensor) -> str | None:
        # One and the same non-zero reward on every step, the steps that end an episode included
        # (CartPole's +1): the class never changes. Only zeros so far is sparse, not constant.
        if rewards.numel() == 0 or not bool(terminated.any()):
            return None
        low, high = rewards.min().item(), rewards.max().item()
        if low != high or low == 0:
            return None
        return (
            f"every reward of its first {rewards.numel():,} steps, episode ends included, was "
            f"{low:g}, so the class it predicts never changes"
        )

    def loss(self, seq: Sequences, encode: Encoder) -> AuxOutput:
        if self.needs.minibatch:
            return self._minibatch_loss(seq, encode)
        batch = seq.obs.shape[0]
        # obs[:, 0..2] are the frames; obs[:, 3] (after the predicted reward) is not used.
        features = encode(seq.obs[:, :FRAMES].flatten(0, 1)).reshape(batch, -1)
        logits = self._logits(features)
        target = reward_class(seq.rewards[:, FRAMES - 1])
        # in_episode[:, 2]: the three frames share one episode (transitions 0 and 1 are real and
        # not done) and the predicted transition 2 is real, so its reward is the game's and not
        # the placeholder of a reset step.
        mask = seq.in_episode[:, FRAMES - 1].float()
        count = mask.sum().clamp(min=1.0)  # an all-false mask gives a zero loss, not NaN
        loss = (F.cross_entropy(logits, target, reduction="none") * mask).sum() / count
        correct = (logits.argmax(-1) == target).float()
        return AuxOutput(loss, {"accuracy": ((correct * mask).sum() / count).detach()})

    def _input(self, features: torch.Tensor) -> torch.Tensor:
        return scale_free(features) if self.cfg.scale_free else features

    def _logits(self, features: torch.Tensor) -> torch.Tensor:
        """The head on the (scale-free) features, in float32 (also under bf16 autocast)."""
        return float32(lambda x: self.head(self._input(x)), features)

    def chance_loss(self, seq: Sequences) -> float:
        """The entropy of the reward classes in ``seq``, each sample weighted as the loss weights
        it (the skew of the minibatch form; the real samples of the replay form alike)."""
        if self.needs.minibatch:
            target, weight = self._minibatch_weights(seq)
        else:
            target = reward_class(seq.rewards[:, FRAMES - 1])
            mask = seq.in_episode[:, FRAMES - 1].float()
            weight = mask / mask.sum().clamp(min=1.0)
        return chance_cross_entropy(target, weight, 3)

    def _minibatch_loss(self, seq: Sequences, encode: Encoder) -> AuxOutput:
        """One observation per sample (its frame stack), the skew as a weighting (no host sync)."""
        logits = self._logits(seq.first_features(encode))
        target, weight = self._minibatch_weights(seq)
        loss = (F.cross_entropy(logits, target, reduction="none") * weight).sum()
        correct = (logits.argmax(-1) == target).float()
        return AuxOutput(loss, {"accuracy": (correct * weight).sum().detach()})

    def _minibatch_weights(self, seq: Sequences) -> tuple[torch.Tensor, torch.Tensor]:
        """Each sample's class and its weight in the minibatch form's loss (summing to 1)."""
        target = reward_class(seq.rewards[:, 0])
        real = seq.in_episode[:, 0]  # a real transition: its reward is the game's
        rewarding = real & (target != ZERO)
        zero = real & (target == ZERO)
        n_rewarding, n_zero = rewarding.sum(), zero.sum()
        f = self.cfg.rewarding_fraction
        skewed = torch.where(rewarding, f / n_rewarding.clamp(min=1), (1 - f) / n_zero.clamp(min=1))
        plain = 1.0 / real.sum().clamp(min=1)
        # Both kinds present: each gets its share; only one kind: a plain mean over real samples.
        weight = torch.where((n_rewarding > 0) & (n_zero > 0), skewed, plain) * real
        return target, weight
