"""Pixel control (UNREAL, Jaderberg et al. 2016, arXiv 1611.05397).

The agent learns, off-policy, an action-value map per screen cell: how much it can change the
pixels of that cell over the next steps by each action. Pseudo-rewards are the mean absolute
change of the newest frame in each ``cell x cell`` cell of a central ``crop x crop`` window, and
the Q maps are trained with n-step Q-learning targets. Learning what the actions control pushes
the torso toward features of the controllable parts of the screen.
"""

from __future__ import annotations

import torch
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
    image_view,
    require_discrete,
    require_images,
)

DECONV_CHANNELS = 32  # UNREAL: 32 x 9 x 9 before the transposed convolutions


def pixel_change(obs_a: torch.Tensor, obs_b: torch.Tensor, crop: int = 80, cell: int = 4) -> torch.Tensor:
    """Mean absolute change in [0, 1] of the newest frame per cell: [..., C, H, W] -> [..., n, n].

    Only the newest frame (index -1 of the stack) is compared: the older ones were compared at
    earlier steps. ``n = crop // cell``; the crop is centred (84 -> 80 drops 2 pixels a side).
    """
    a, b = obs_a[..., -1, :, :].float(), obs_b[..., -1, :, :].float()
    height, width = a.shape[-2:]
    top, left = (height - crop) // 2, (width - crop) // 2
    diff = (b - a).abs()[..., top : top + crop, left : left + crop] / 255.0
    n = crop // cell
    diff = diff.reshape(*diff.shape[:-2], n, cell, n, cell)
    return diff.mean(dim=(-3, -1))


def nstep_q_targets(
    rewards: torch.Tensor, bootstrap: torch.Tensor, continues: torch.Tensor, gamma: float
) -> torch.Tensor:
    """n-step returns ``G_t = r_t + gamma * continues_t * G_{t+1}`` with ``G_L = bootstrap``.

    rewards ``[B, L, ...]``, bootstrap ``[B, ...]``, continues ``[B, L]`` (bool or float):
    where ``continues[:, t]`` is false the return stops at t (``G_t = r_t``).
    """
    extra = (1,) * (rewards.dim() - 2)  # broadcast continues over the trailing (cell) dims
    cont = continues.to(rewards.dtype).reshape(*continues.shape, *extra)
    targets = torch.empty_like(rewards)
    ret = bootstrap.to(rewards.dtype)
    for t in reversed(range(rewards.shape[1])):
        ret = rewards[:, t] + gamma * cont[:, t] * ret
        targets[:, t] = ret
    return targets


@config_dataclass
class PixelControlConfig:
    n_steps: int = Field(10, ge=1)
    """Sequence length and Q-learning horizon (UNREAL: 20 on Labyrinth)."""
    gamma: float = Field(0.9, ge=0, le=1)
    """Discount of the pixel-change returns."""
    cell_size: int = Field(4, ge=1)
    """Side of a cell in pixels: the reward of a cell is its mean absolute pixel change."""
    crop: int = Field(80, ge=4)
    """Side of the central crop divided into cells (UNREAL: 80 of 84)."""

    def __post_init__(self) -> None:
        cells = self.crop // self.cell_size if self.cell_size > 0 else 0
        # The head upsamples s -> 2s + 2 cells, so the grid side must be even and at least 4.
        if self.cell_size < 1 or self.crop % self.cell_size or cells % 2 or cells < 4:
            raise ConfigError(
                f"pixel_control: crop ({self.crop}) must be a multiple of cell_size "
                f"({self.cell_size}) giving an even grid of at least 4 cells a side "
                f"(the default 80 / 4 = 20 is UNREAL's)."
            )


class PixelControl(AuxTask):
    """Dueling deconvolutional Q maps over screen cells, trained by n-step Q-learning.

    Weight: UNREAL samples the pixel-control weight log-uniformly from 0.01-0.1 on Labyrinth and
    0.0001-0.01 on Atari/gym; 0.05 is the usual reference value (Labyrinth). Our Atari default
    is 0.01, the top of the Atari range: the loss is summed over the 20 x 20 cells, so it is
    large next to PPO's O(1) loss, and through the global gradient-norm clip a heavier weight
    would also shrink PPO's own gradient; 0.01 keeps it a clearly secondary signal.
    """

    name = "pixel_control"
    description = "UNREAL pixel control: n-step Q-learning of per-cell pixel change per action"
    Config = PixelControlConfig
    default_weight = 0.01

    cfg: PixelControlConfig

    def __init__(self, cfg: PixelControlConfig, ctx: TaskContext) -> None:
        super().__init__(cfg, ctx)
        self.check(ctx)
        self.view = image_view(self.name, ctx)  # the frames (a dict observation's image key)
        self._check_crop(ctx, cfg.crop)  # here: check() cannot see the configured crop
        self.needs = Needs(sequence_length=cfg.n_steps, replay=True)
        num_actions = require_discrete(self.name, ctx)
        self.side = (cfg.crop // cfg.cell_size - 2) // 2  # 9 for the 20 x 20 grid
        self.fc = nn.Sequential(
            layer_init(nn.Linear(ctx.feature_dim, DECONV_CHANNELS * self.side**2)), nn.ReLU()
        )
        self.value = nn.ConvTranspose2d(DECONV_CHANNELS, 1, 4, stride=2)
        self.advantage = nn.ConvTranspose2d(DECONV_CHANNELS, num_actions, 4, stride=2)

    @classmethod
    def check(cls, ctx: TaskContext) -> None:
        require_images(cls.name, ctx)
        require_discrete(cls.name, ctx)

    @classmethod
    def _check_crop(cls, ctx: TaskContext, crop: int) -> None:
        height, width = image_view(cls.name, ctx).shape[-2:]
        if height < crop or width < crop:
            raise TaskMismatch(
                f"aux task {cls.name!r} crops a {crop}x{crop} window, but this env's frames are "
                f"{height}x{width}. Lower aux.tasks.{cls.name}.crop or "
                f"disable it (aux.tasks.{cls.name}.enabled=false)."
            )

    def q_maps(self, features: torch.Tensor) -> torch.Tensor:
        """Features [N, F] -> Q [N, actions, n, n] (dueling: V + A - mean_a A), in float32 (also
        under bf16 autocast: perf.float32)."""
        return float32(self._dueling, features)

    def _dueling(self, features: torch.Tensor) -> torch.Tensor:
        x = self.fc(features).reshape(-1, DECONV_CHANNELS, self.side, self.side)
        adv = self.advantage(x)
        return self.value(x) + adv - adv.mean(dim=1, keepdim=True)

    def loss(self, seq: Sequences, encode: Encoder) -> AuxOutput:
        cfg = self.cfg
        batch, length = seq.actions.shape[:2]
        # One torso pass over all L + 1 observations.
        q = self.q_maps(encode(seq.obs.flatten(0, 1)))
        q = q.reshape(batch, length + 1, *q.shape[1:])  # [B, L+1, A, n, n]
        n = q.shape[-1]
        index = seq.actions.long().reshape(batch, length, 1, 1, 1).expand(-1, -1, 1, n, n)
        q_taken = q[:, :-1].gather(2, index).squeeze(2)  # [B, L, n, n]

        with torch.no_grad():
            frames = self.view.frames(seq.obs)
            pseudo = pixel_change(frames[:, :-1], frames[:, 1:], cfg.crop, cfg.cell_size)
            bootstrap = q[:, -1].max(dim=1).values  # [B, n, n]
            done = seq.terminated | seq.truncated
            # continues[:, t]: step t + 1 (or the bootstrap obs after the last step) is still
            # this episode's. Stop at any done: a truncated final frame is rare on Atari.
            last = seq.in_episode[:, -1:] & ~done[:, -1:]
            continues = torch.cat([seq.in_episode[:, 1:], last], dim=1)
            targets = nstep_q_targets(pseudo, bootstrap, continues, cfg.gamma)

        mask = seq.in_episode.float()  # [B, L]: real steps of obs[:, 0]'s episode
        count = mask.sum().clamp(min=1.0)
        # Squared error summed over the cells (as in UNREAL), averaged over real steps.
        per_step = 0.5 * (q_taken - targets).square().sum(dim=(-2, -1))
        loss = (per_step * mask).sum() / count
        metrics = {
            "pseudo_reward": (pseudo.mean(dim=(-2, -1)) * mask).sum() / count,
            "q_mean": (q_taken.detach().mean(dim=(-2, -1)) * mask).sum() / count,
        }
        return AuxOutput(loss, metrics)
