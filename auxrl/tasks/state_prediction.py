"""State prediction: predict the env's state labels from the torso's features.

Lample & Chaplot (2017), "Playing FPS Games with Deep Reinforcement Learning" (AAAI; arXiv
1609.05521), trained their DQN's convolutional features to also predict "game features" the
engine knows (is an enemy visible?), and found it sped up and improved learning. AtariARI (Anand
et al. 2019, "Unsupervised State Representation Learning in Atari", arXiv 1906.08226) annotated
which Atari RAM bytes hold which state variable (positions, scores, counts), to measure with
linear probes how much of the state a representation holds. This task turns those labels into a
training signal, as a head on the shared torso.

The labels come from ``env.labels`` (auxrl/envs/labels.py): ``ram`` (the AtariARI variables of
the game) and/or ``info:KEY`` (a numeric entry of the env's info dict, any gymnasium env). Each
observation is paired with the labels of the state it shows, and the head predicts all of them
from that one observation's features:

* RAM bytes (kind ``byte``): a 256-way classification each, from one batched linear layer
  ``[F, K x 256]``; cross-entropy averaged over the variables. Metric: ``accuracy``.
* Other labels (kind ``real``): regression on targets normalised by their running mean and std,
  updated (in float64) from every batch the task trains on, so each state counts about as often
  as it is sampled; the statistics are buffers of the task, saved in checkpoints and resumed.
  Loss: mean squared error of the normalised targets; metrics ``nmse`` and ``r2`` (``1 - nmse``:
  R^2 against the running mean and variance).

The loss averages every label alike: ``(K_byte x CE + K_real x MSE) / K``. A label that is NaN
(an info key a reset's info lacked; a non-finite value) is left out of the loss and statistics.

Samples are single observations (windows of length 1), from ``source``:

* ``minibatch`` (default): the first ``batch_size`` samples of each PPO minibatch, on the torso
  features PPO's forward pass already computed (no torso pass of the task's own);
* ``rollout``: the current rollout, encoded by the task;
* ``replay``: the replay of the last ``aux.replay_size`` transitions (older, more varied states).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from auxrl.config import ConfigError, config_dataclass
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
    chance_cross_entropy,
    scale_free,
)

CLASSES = 256  # values of a RAM byte
BYTE = "byte"  # TaskContext.label_kinds: a RAM byte (auxrl.envs.labels.BYTE)
STD_EPS = 1e-8  # added to the running variance before its square root


@config_dataclass
class StatePredictionConfig:
    source: Literal["minibatch", "rollout", "replay"] = "minibatch"
    """minibatch: PPO's minibatch and its features (cheapest); rollout: the current rollout;
    replay: the last aux.replay_size transitions."""
    hidden: int = Field(0, ge=0)
    """0: a linear head on the torso's features; > 0: one hidden ReLU layer this wide."""
    scale_free: bool = True
    """The head reads layer-normalised features, so its cross-entropy cannot grow the shared
    torso's feature scale (tasks/base.py: scale_free); false: raw features."""
    labels: list[str] = Field(default_factory=list)
    """Names of the env.labels to predict (RAM variable names, info KEYs). []: every label."""


class StatePrediction(AuxTask):
    """Predict each observation's state labels (env.labels) from its torso features."""

    name = "state_prediction"
    description = "predict env state labels (env.labels: Atari RAM, info keys) from the features"
    Config = StatePredictionConfig
    default_weight = 1.0

    cfg: StatePredictionConfig

    @classmethod
    def check(cls, ctx: TaskContext) -> None:
        if not ctx.label_names:
            raise TaskMismatch(
                f"aux task {cls.name!r} predicts the env's state labels, but env.labels is empty: set "
                f"env.labels=[ram] (Atari games AtariARI annotates) or env.labels=[info:KEY] (a numeric "
                f"info entry), or disable it (aux.tasks.{cls.name}.enabled=false)."
            )

    def __init__(self, cfg: StatePredictionConfig, ctx: TaskContext) -> None:
        super().__init__(cfg, ctx)
        self.needs = Needs(
            sequence_length=1, replay=cfg.source == "replay", minibatch=cfg.source == "minibatch"
        )
        names = list(ctx.label_names)
        unknown = [n for n in cfg.labels if n not in names]
        if unknown:
            raise ConfigError(
                f"aux.tasks.{self.name}.labels: {unknown[0]!r} is not one of env.labels' labels "
                f"({', '.join(names)})."
            )
        chosen = [i for i, n in enumerate(names) if not cfg.labels or n in cfg.labels]
        kinds = list(ctx.label_kinds) or ["real"] * len(names)
        self.num_labels = len(names)  # every label the env gives (Sequences.labels' last dim)
        self.byte_names = [names[i] for i in chosen if kinds[i] == BYTE]
        self.real_names = [names[i] for i in chosen if kinds[i] != BYTE]
        # Which columns of Sequences.labels; derived from the config, so not saved.
        byte_idx = torch.tensor([i for i in chosen if kinds[i] == BYTE], dtype=torch.long)
        real_idx = torch.tensor([i for i in chosen if kinds[i] != BYTE], dtype=torch.long)
        self.register_buffer("byte_idx", byte_idx, persistent=False)
        self.register_buffer("real_idx", real_idx, persistent=False)
        width = ctx.feature_dim
        if cfg.hidden:
            self.trunk: nn.Module = nn.Sequential(layer_init(nn.Linear(width, cfg.hidden)), nn.ReLU())
            width = cfg.hidden
        else:
            self.trunk = nn.Identity()
        kb, kr = len(self.byte_names), len(self.real_names)
        # std 0.01: near-uniform logits and near-zero predictions at the start.
        self.classify = layer_init(nn.Linear(width, kb * CLASSES), std=0.01) if kb else None
        self.regress = layer_init(nn.Linear(width, kr), std=0.01) if kr else None
        # Running statistics of the real labels (float64; buffers: checkpoints keep them).
        self.register_buffer("count", torch.zeros(kr, dtype=torch.float64))
        self.register_buffer("mean", torch.zeros(kr, dtype=torch.float64))
        self.register_buffer("var", torch.ones(kr, dtype=torch.float64))

    @torch.no_grad()
    def update_stats(self, values: torch.Tensor, ok: torch.Tensor) -> None:
        """Merge a batch (``[B, K_real]``, float64; ``ok``: finite entries) into the running mean
        and variance, per label (Chan et al.'s parallel update). Several processes: every rank
        merges the same pooled batch, so their statistics stay equal."""
        zero = torch.zeros_like(values)
        n, total = _pooled(torch.stack([ok.double().sum(0), torch.where(ok, values, zero).sum(0)]))
        seen = n > 0
        batch_mean = total / n.clamp(min=1.0)
        # Two passes (squares of deviations, not E[x^2] - mean^2): exact for large offsets too.
        batch_m2 = _pooled(torch.where(ok, values - batch_mean, zero).square().sum(0))
        count = self.count + n
        delta = batch_mean - self.mean
        mean = self.mean + delta * n / count.clamp(min=1.0)
        m2 = self.var * self.count + batch_m2 + delta**2 * self.count * n / count.clamp(min=1.0)
        self.mean.copy_(torch.where(seen, mean, self.mean))
        self.var.copy_(torch.where(seen, m2 / count.clamp(min=1.0), self.var))
        self.count.copy_(count)

    def normalise(self, values: torch.Tensor) -> torch.Tensor:
        """Real labels (float64) in units of their running std around their running mean."""
        return (values - self.mean) / torch.sqrt(self.var + STD_EPS)

    def _trunk(self, features: torch.Tensor) -> torch.Tensor:
        return self.trunk(scale_free(features) if self.cfg.scale_free else features)

    def loss(self, seq: Sequences, encode: Encoder) -> AuxOutput:
        if seq.labels is None or seq.labels.shape[-1] != self.num_labels:
            given = "none" if seq.labels is None else f"{seq.labels.shape[-1]}"
            raise ValueError(
                f"aux task {self.name!r} was built for {self.num_labels} state labels, but this env "
                f"gives {given}: every curriculum stage it trains in needs the same env.labels."
            )
        labels = seq.labels[:, 0]  # the labels of obs[:, 0], the state it shows
        # The head in float32, also under bf16 autocast (perf.float32): trunk, then each output.
        features = float32(self._trunk, seq.first_features(encode))
        batch = labels.shape[0]
        metrics: dict[str, torch.Tensor | float] = {}
        total = features.new_zeros((), dtype=torch.float32)
        kb, kr = len(self.byte_names), len(self.real_names)
        if self.classify is not None:
            y = labels[:, self.byte_idx]
            ok = torch.isfinite(y)
            target = y.nan_to_num(0.0).long().clamp(0, CLASSES - 1)
            logits = float32(self.classify, features).reshape(batch, kb, CLASSES)
            ce = F.cross_entropy(logits.flatten(0, 1), target.flatten(), reduction="none").reshape(batch, kb)
            n = ok.sum().clamp(min=1)
            ce_mean = (ce * ok).sum() / n
            total = total + ce_mean * kb
            metrics["cross_entropy"] = ce_mean.detach()
            metrics["accuracy"] = (((logits.argmax(-1) == target) & ok).sum() / n).detach()
        if self.regress is not None:
            y = labels[:, self.real_idx].double()
            ok = torch.isfinite(y)
            if self.training:
                self.update_stats(y, ok)
            z = torch.where(ok, self.normalise(y), torch.zeros_like(y)).float()
            pred = float32(self.regress, features)
            mse = (((pred - z) ** 2) * ok).sum() / ok.sum().clamp(min=1)
            total = total + mse * kr
            metrics["nmse"] = mse.detach()
            metrics["r2"] = (1.0 - mse).detach()
        return AuxOutput(total / (kb + kr), metrics)

    @torch.no_grad()
    def chance_loss(self, seq: Sequences) -> float | None:
        """The loss of predicting every label's batch distribution, whatever the observation: per
        RAM byte the entropy of its values in ``seq`` (each finite entry weighted as in the loss),
        per real label the variance of its normalised targets (running statistics as they are
        now), averaged as the loss averages them."""
        labels = seq.labels[:, 0] if seq.labels is not None else None
        if labels is None or labels.shape[-1] != self.num_labels:
            return None  # loss() says why
        kb, kr = len(self.byte_names), len(self.real_names)
        total = 0.0
        if kb:
            y = labels[:, self.byte_idx]
            ok = torch.isfinite(y)
            target = y.nan_to_num(0.0).long().clamp(0, CLASSES - 1)
            weight = ok.double() / ok.sum().clamp(min=1)
            ce = sum(chance_cross_entropy(target[:, k], weight[:, k], CLASSES) for k in range(kb))
            total += ce * kb
        if kr:
            y = labels[:, self.real_idx].double()
            ok = torch.isfinite(y)
            z = torch.where(ok, self.normalise(y), torch.zeros_like(y))
            n = ok.sum(0).clamp(min=1)
            spread = torch.where(ok, z - z.sum(0) / n, torch.zeros_like(z)).square().sum()
            total += float(spread / ok.sum().clamp(min=1)) * kr
        return total / (kb + kr)


def _pooled(sums: torch.Tensor) -> torch.Tensor:
    """``sums`` added up over every process (several processes: torch.distributed), else as is."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(sums)
    return sums
