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
- optionally ``after_update()``, called after every optimizer step (e.g. EMA targets),
  ``on_torso_loaded()``, called when the torso changed without the task seeing it
  (``model.init_from`` replaced its weights, or the task joins in a later curriculum stage), and
  ``check_data(rewards, terminated)``: why this env's data gives the task nothing to learn, if
  it does (a one-line warning is printed, naming the task and the env), and
  ``chance_loss(seq)``: the loss of the best guess that ignores the inputs, which ``auxrl task
  check`` compares the trained loss with (None: unknown; the check then measures it).

A task that regularises PPO's own heads (e.g. ``augment_consistency``, DrAC) reads them from
``ctx.ppo_heads`` (:class:`PPOHeads`: ``ppo_heads(obs, encode) -> (pi, V)``) and lists their
parameters in ``shared_parameters()``: its loss's gradient then reaches them too, added to PPO's.

The learner samples the sequences, calls ``loss``, and takes the gradient of ``weight * loss``:
on the task's own parameters it is clipped to ``aux.max_grad_norm``; on the shared torso it goes
through the balancer (auxrl/balance.py) and is added to PPO's. A task never reaches into the env
or the learner.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import ClassVar

import gymnasium as gym
import torch
import torch.nn.functional as F
from torch import nn

from auxrl.envs.dictobs import ImageView


class TaskMismatch(ValueError):
    """An auxiliary task that cannot work with the configured environment or model."""


@dataclass(frozen=True)
class PPOHeads:
    """The agent's policy and value heads, for tasks that train them (see ``shared_parameters``).

    They belong to the agent (saved as ``heads.policy`` / ``heads.value``): a task keeps this
    object as a plain attribute, never registers the modules as its own submodules.
    """

    policy: nn.Module  # features -> action distribution (log_prob / entropy / mode helpers)
    value: nn.Module  # features -> V(s), or obs -> V(s) when ``value.reads_observation``

    def __call__(
        self, obs: torch.Tensor, encode: Callable[[torch.Tensor], torch.Tensor]
    ) -> tuple[torch.distributions.Distribution, torch.Tensor]:
        """(pi(.|obs), V(obs)) through the shared torso ``encode``, with gradients."""
        features = encode(obs)
        value = self.value(obs) if getattr(self.value, "reads_observation", False) else self.value(features)
        return self.policy(features), value

    def parameters(self) -> list[nn.Parameter]:
        return [*self.policy.parameters(), *self.value.parameters()]


@dataclass
class TaskContext:
    """What a task may know about the run when it is built."""

    obs_space: gym.spaces.Box  # one env's observation space
    action_space: gym.Space  # one env's action space
    feature_dim: int  # size of the torso's output
    torso: nn.Module  # the shared torso (read it, e.g. to copy it; never train it directly)
    ppo_heads: PPOHeads | None = None  # the agent's policy and value heads (None: not given)
    # env.labels (auxrl/envs/labels.py): each state label's name and kind, "byte" (a RAM byte,
    # 0..255) or "real"; they arrive in Sequences.labels in this order. Empty: no labels.
    label_names: tuple[str, ...] = ()
    label_kinds: tuple[str, ...] = ()
    # Dict observations: the image key that pixel tasks work on (aux.image_key; None: the only one).
    image_key: str | None = None


@dataclass(frozen=True)
class Needs:
    """What a task asks the learner to sample for it each minibatch."""

    sequence_length: int = 1  # consecutive transitions per sample (obs has one more)
    replay: bool = True  # sample from the replay of recent experience (else: current rollout)
    rewarding_fraction: float | None = None  # share of samples whose last reward is non-zero
    # Learn from PPO's own minibatch: one transition per sample (sequence_length 1), the first
    # samples of each PPO minibatch, whose torso features PPO's forward pass already computed
    # (Sequences.features). No torso forward of the task's own; its backward runs through those
    # samples only. replay and rewarding_fraction do not apply.
    minibatch: bool = False
    # Pairs of observations of one env k steps apart, k drawn uniformly from [lo, hi] per sample
    # (e.g. a temporal-distance task): the task gets Pairs, two frames each, not the hi + 1
    # frames of a window (only the done flags between them are read). sequence_length does
    # not apply; replay and rewarding_fraction do not either (drawn from the replay, uniformly).
    gap: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.gap is not None and not 1 <= self.gap[0] <= self.gap[1]:
            raise ValueError(f"Needs.gap must be (lo, hi) with 1 <= lo <= hi, got {self.gap}")

    @property
    def span(self) -> int:
        """Consecutive stored steps one sample reaches over (at most one rollout's worth)."""
        return self.gap[1] if self.gap is not None else self.sequence_length


def in_episode(valid: torch.Tensor, terminated: torch.Tensor, truncated: torch.Tensor) -> torch.Tensor:
    """``[B, L]`` bool: transitions ``0..i`` of each window are real and none before ``i`` ended
    the episode, so the observation after transition ``i`` is in the first one's episode."""
    done = terminated | truncated
    # A transition stays in the episode if every earlier one was real and not done.
    ended_before = torch.cumsum(done.int(), 1) - done.int()
    return (torch.cumprod(valid.int(), 1) > 0) & (ended_before == 0)


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
    # The learner's seeded sampling stream (checkpointed), for a task's own random draws such as
    # augmentations; None (e.g. a hand-made batch): torch's default generator.
    generator: torch.Generator | None = field(default=None, repr=False)
    # [B, L+1, K] float32: the state labels of each obs (env.labels; NaN where an env gave none),
    # in the order of TaskContext.label_names; None without labels.
    labels: torch.Tensor | None = None
    # [B, F]: the torso features of obs[:, 0] with gradients, when the learner already has them
    # (Needs.minibatch: PPO's forward pass); None: encode obs[:, 0] yourself (see first_features).
    features: torch.Tensor | None = None

    def first(self, count: int) -> Sequences:
        """The first ``count`` samples (all of them when there are fewer)."""
        if count >= self.obs.shape[0]:
            return self
        cut = {
            f.name: v[:count] if isinstance(v := getattr(self, f.name), torch.Tensor) else v
            for f in fields(self)
            if f.init
        }
        return Sequences(**cut)

    def first_features(self, encode: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """The torso features of ``obs[:, 0]``: PPO's (no second pass) where given, else encoded."""
        return self.features if self.features is not None else encode(self.obs[:, 0])

    def __post_init__(self) -> None:
        self.in_episode = in_episode(self.valid, self.terminated, self.truncated)


@dataclass
class Pairs:
    """``B`` pairs of observations of one env, ``gap[b]`` steps apart (``Needs.gap``).

    ``obs[:, 0]`` is the observation at some step t, ``obs[:, 1]`` the one at ``t + gap``;
    ``same_episode`` says that every transition between them is real and none ends the episode
    (or life) ``obs[:, 0]`` is in, so both belong to it.
    """

    obs: torch.Tensor  # [B, 2, *obs_shape], the env's dtype
    gap: torch.Tensor  # [B] long, in [lo, hi]
    same_episode: torch.Tensor  # [B] bool
    labels: torch.Tensor | None = None  # [B, 2, K] float32 with env.labels
    generator: torch.Generator | None = field(default=None, repr=False)  # the learner's seeded stream


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

    def loss(self, seq: Sequences | Pairs, encode: Encoder) -> AuxOutput:
        """The task's loss on its samples: :class:`Sequences`, or :class:`Pairs` for a task whose
        ``needs.gap`` is set. ``encode`` is the shared torso."""
        raise NotImplementedError

    def after_update(self) -> None:
        """Called after each optimizer step."""

    def shared_parameters(self) -> list[nn.Parameter]:
        """Parameters of other modules of the agent that this task's loss also trains (default
        none), e.g. ``ctx.ppo_heads.parameters()``. Their gradient of ``weight * loss`` is clipped
        with the task's own (``aux.max_grad_norm``) and added to their owner's. The shared torso
        is never listed here: every task's gradient on it goes through the balancer."""
        return []

    def check_data(self, rewards: torch.Tensor, terminated: torch.Tensor) -> str | None:
        """Why the env's data gives this task nothing to learn, or None (the default: no check).

        Called after each of a stage's first rollouts (see ``auxrl.tasks.combine.CHECK_ROLLOUTS``)
        until it returns a reason, with every real transition seen so far (1-D, training rewards
        and terminated flags). The reason is a clause such as ``"every reward ... was 1"``: the
        learner prints it once as a warning naming the task and the env, and trains on.
        """
        return None

    def on_torso_loaded(self) -> None:
        """Called when the shared torso changed without this task (``model.init_from``, or the
        task becomes active in a later curriculum stage): e.g. sync a target copy of it."""

    def chance_loss(self, seq: Sequences | Pairs) -> float | None:
        """The loss on ``seq`` of the best prediction that ignores the inputs, or None (the
        default: unknown). For a cross-entropy it is the entropy of the target classes' frequencies
        in ``seq``, weighted as ``loss`` weights the samples (:func:`chance_cross_entropy`); ln 8
        only when the 8 classes are equally frequent.

        ``auxrl task check`` (auxrl/taskcheck.py) trains the head on a fixed set of samples and
        then calls this once, on the whole set as one batch (so statistics the task keeps, such
        as running means, are those the final loss used): a final loss well below it says the
        head learns. Where it is None the check measures chance instead, by training the head the
        same way with every sample's features taken from another sample of its batch.
        """
        return None


def scale_free(features: torch.Tensor) -> torch.Tensor:
    """Features normalised per sample (layer norm, no parameters) for a task head to read.

    A classification loss (cross-entropy) keeps falling as its logits grow, and growing the shared
    torso's features is one way to grow them: reward_prediction's head on raw features drove the
    torso's feature norm from ~4 to ~40 on Breakout in 8k steps (benchmarks/results/grad-norm-why/),
    and PPO's head gradients grew with it (they are features x output gradients), so PPO's own step
    was clipped. Through this normalisation the loss cannot change with the features' scale: its
    gradient on them is orthogonal to that direction.
    """
    return F.layer_norm(features, features.shape[-1:])


def chance_cross_entropy(target: torch.Tensor, weight: torch.Tensor, classes: int) -> float:
    """The weighted cross-entropy ``sum_i weight_i CE_i`` of the best constant prediction of the
    class indices ``target`` (any shape; ``weight`` the same shape, >= 0): ``-sum_c w_c log(w_c /
    W)``, with ``w_c`` the weight of class c and ``W`` the total weight. For a plain mean
    (``weight`` 1/B) it is the entropy of the class frequencies; 0 when one class has all the
    weight (a constant target: nothing to learn). The usual :meth:`AuxTask.chance_loss` of a
    classification head."""
    w = torch.zeros(classes, dtype=torch.float64, device=target.device)
    w.index_add_(0, target.flatten().long(), weight.detach().flatten().double())
    present = w[w > 0]
    return float(-(present * torch.log(present / w.sum())).sum()) if present.numel() else 0.0


def image_view(task: str, ctx: TaskContext) -> ImageView:
    """The frames a pixel task works on: the observations themselves, or a dict observation's
    image key (``aux.image_key``); a TaskMismatch naming the task where there are none."""
    try:
        return ImageView(ctx.obs_space, ctx.image_key)
    except ValueError as err:
        raise TaskMismatch(
            f"aux task {task!r} works on image frames, but {err}. Disable it for this env "
            f"(aux.tasks.{task}.enabled=false)."
        ) from None


def require_images(task: str, ctx: TaskContext) -> tuple[int, int, int]:
    """Shared check for tasks that work on (stacked) image frames: their (C, H, W)."""
    return image_view(task, ctx).shape  # type: ignore[return-value]


def require_discrete(task: str, ctx: TaskContext) -> int:
    if not isinstance(ctx.action_space, gym.spaces.Discrete):
        raise TaskMismatch(
            f"aux task {task!r} needs a Discrete action space, but this env's is "
            f"{ctx.action_space}. Disable it (aux.tasks.{task}.enabled=false)."
        )
    return int(ctx.action_space.n)
