"""The auxiliary-task interface.

An auxiliary task is one ``nn.Module`` (its head plus its loss) in one file:

- class attributes ``name`` and ``description`` (one line, shown by ``auxrl tasks``);
- ``Config``: a dataclass of its parameters (checked like every other config key);
- ``check(ctx)``: raise :class:`TaskMismatch` if the task cannot work with this env;
- ``__init__(cfg, ctx)``: build the head from ``ctx.feature_dim`` and the env's spaces;
- ``needs``: how many consecutive transitions it wants per sample, and from where (a replay of
  recent experience, optionally reward-skewed, or the current rollout only);
- ``loss(seq, encode)``: a scalar loss and optional metrics, from :class:`Sequences` and the
  shared torso ``encode`` (call it on observations to get features with gradients);
- optionally ``after_update()``, called after every optimizer step (e.g. EMA targets), and
  ``on_torso_loaded()``, called when the torso changed without the task seeing it
  (``model.init_from`` replaced its weights, or the task joins in a later curriculum stage).

The learner samples the sequences, calls ``loss``, and takes the gradient of ``weight * loss``:
on the task's own parameters it is clipped to ``aux.max_grad_norm``; on the shared torso it goes
through the balancer (auxrl/balance.py) and is added to PPO's. A task never reaches into the env
or the learner.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import gymnasium as gym
import torch
from torch import nn


class TaskMismatch(ValueError):
    """An auxiliary task that cannot work with the configured environment or model."""


@dataclass
class TaskContext:
    """What a task may know about the run when it is built."""

    obs_space: gym.spaces.Box  # one env's observation space
    action_space: gym.Space  # one env's action space
    feature_dim: int  # size of the torso's output
    torso: nn.Module  # the shared torso (read it, e.g. to copy it; never train it directly)


@dataclass(frozen=True)
class Needs:
    """What a task asks the learner to sample for it each minibatch."""

    sequence_length: int = 1  # consecutive transitions per sample (obs has one more)
    replay: bool = True  # sample from the replay of recent experience (else: current rollout)
    rewarding_fraction: float | None = None  # share of samples whose last reward is non-zero


@dataclass
class Sequences:
    """``B`` windows of ``L`` consecutive transitions of one env each (batch-major).

    ``obs`` has ``L + 1`` entries (the observation after the last transition included), in the
    env's dtype (uint8 frames). ``in_episode[:, i]`` says that transitions ``0..i`` are real and
    all belong to the episode (or life) that ``obs[:, 0]`` is in, so ``obs[:, i + 1]`` does too.
    """

    obs: torch.Tensor  # [B, L+1, *obs_shape]
    actions: torch.Tensor  # [B, L, *action_shape]
    rewards: torch.Tensor  # [B, L] training rewards
    terminated: torch.Tensor  # [B, L] bool
    truncated: torch.Tensor  # [B, L] bool
    valid: torch.Tensor  # [B, L] bool: a real transition (not a NEXT_STEP reset step)
    in_episode: torch.Tensor = field(init=False)  # [B, L] bool

    def __post_init__(self) -> None:
        done = self.terminated | self.truncated
        # A transition stays in the episode if every earlier one was real and not done.
        ended_before = torch.cumsum(done.int(), 1) - done.int()
        self.in_episode = (torch.cumprod(self.valid.int(), 1) > 0) & (ended_before == 0)


@dataclass
class AuxOutput:
    loss: torch.Tensor  # scalar, already averaged
    metrics: dict[str, torch.Tensor | float] = field(default_factory=dict)


Encoder = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class NoParams:
    """For tasks without parameters."""


class AuxTask(nn.Module):
    """Base class for auxiliary tasks; see the module docstring for the contract."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    Config: ClassVar[type] = NoParams
    default_weight: ClassVar[float] = 1.0

    needs: Needs = Needs()

    def __init__(self, cfg: object, ctx: TaskContext) -> None:
        super().__init__()
        self.cfg = cfg

    @classmethod
    def check(cls, ctx: TaskContext) -> None:
        """Raise TaskMismatch (saying why and what to do) if the task cannot run here."""

    def loss(self, seq: Sequences, encode: Encoder) -> AuxOutput:
        raise NotImplementedError

    def after_update(self) -> None:
        """Called after each optimizer step."""

    def on_torso_loaded(self) -> None:
        """Called when the shared torso changed without this task (``model.init_from``, or the
        task becomes active in a later curriculum stage): e.g. sync a target copy of it."""


def require_images(task: str, ctx: TaskContext) -> tuple[int, int, int]:
    """Shared check for tasks that work on (stacked) image frames."""
    shape = tuple(ctx.obs_space.shape)
    if len(shape) != 3 or ctx.obs_space.dtype != torch.uint8 and str(ctx.obs_space.dtype) != "uint8":
        raise TaskMismatch(
            f"aux task {task!r} needs uint8 image observations (stack, height, width), but this "
            f"env's observations are {ctx.obs_space}. Disable it for this env "
            f"(aux.tasks.{task}.enabled=false)."
        )
    return shape  # type: ignore[return-value]


def require_discrete(task: str, ctx: TaskContext) -> int:
    if not isinstance(ctx.action_space, gym.spaces.Discrete):
        raise TaskMismatch(
            f"aux task {task!r} needs a Discrete action space, but this env's is "
            f"{ctx.action_space}. Disable it (aux.tasks.{task}.enabled=false)."
        )
    return int(ctx.action_space.n)
