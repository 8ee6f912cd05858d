"""Reward prediction (UNREAL, Jaderberg et al. 2016, arXiv 1611.05397).

From three consecutive observations, classify the sign of the reward that follows them. Rewards
are sparse, so the windows are drawn from the replay with a share ``rewarding_fraction`` that end
in a reward (UNREAL's skewed sampling); without it the head would learn "always zero". The task
shapes the torso toward features that tell rewarding states apart, which is the point: its
accuracy on skewed samples is not a calibrated predictor of the real reward rate.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from auxrl.config import ConfigError
from auxrl.models.torsos import layer_init
from auxrl.tasks.base import AuxOutput, AuxTask, Encoder, Needs, Sequences, TaskContext

FRAMES = 3  # UNREAL predicts r_t from the three observations before it
ZERO, POSITIVE, NEGATIVE = 0, 1, 2


def reward_class(rewards: torch.Tensor) -> torch.Tensor:
    """Reward -> class index: 0 zero, 1 positive, 2 negative (int64, same shape)."""
    return (rewards > 0).long() * POSITIVE + (rewards < 0).long() * NEGATIVE


@dataclass
class RewardPredictionConfig:
    rewarding_fraction: float = 0.5  # share of samples whose reward is non-zero (UNREAL: 0.5)
    hidden: int = 128

    def __post_init__(self) -> None:
        if not 0.0 <= self.rewarding_fraction <= 1.0:
            raise ConfigError("reward_prediction: rewarding_fraction must be in [0, 1].")
        if self.hidden < 1:
            raise ConfigError("reward_prediction: hidden must be >= 1.")


class RewardPrediction(AuxTask):
    """Classify the next reward as zero / positive / negative from 3 frames of torso features."""

    name = "reward_prediction"
    description = "UNREAL reward prediction: sign of the next reward from 3 observations"
    Config = RewardPredictionConfig
    default_weight = 1.0

    cfg: RewardPredictionConfig

    def __init__(self, cfg: RewardPredictionConfig, ctx: TaskContext) -> None:
        super().__init__(cfg, ctx)
        # Instance attribute: the skew comes from the config.
        self.needs = Needs(sequence_length=FRAMES, replay=True, rewarding_fraction=cfg.rewarding_fraction)
        self.head = nn.Sequential(
            layer_init(nn.Linear(FRAMES * ctx.feature_dim, cfg.hidden)),
            nn.ReLU(),
            layer_init(nn.Linear(cfg.hidden, 3), std=0.01),  # start near uniform
        )

    def loss(self, seq: Sequences, encode: Encoder) -> AuxOutput:
        batch = seq.obs.shape[0]
        # obs[:, 0..2] are the frames; obs[:, 3] (after the predicted reward) is not used.
        features = encode(seq.obs[:, :FRAMES].flatten(0, 1)).reshape(batch, -1)
        logits = self.head(features)
        target = reward_class(seq.rewards[:, FRAMES - 1])
        # in_episode[:, 2]: the three frames share one episode (transitions 0 and 1 are real and
        # not done) and the predicted transition 2 is real, so its reward is the game's and not
        # the placeholder of a reset step.
        mask = seq.in_episode[:, FRAMES - 1].float()
        count = mask.sum().clamp(min=1.0)  # an all-false mask gives a zero loss, not NaN
        loss = (F.cross_entropy(logits, target, reduction="none") * mask).sum() / count
        correct = (logits.argmax(-1) == target).float()
        return AuxOutput(loss, {"accuracy": ((correct * mask).sum() / count).detach()})
