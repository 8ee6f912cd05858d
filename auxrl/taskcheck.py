"""``auxrl task check NAME``: can a task's head learn at all, on this env's real data?

A task whose loss stays at chance in a run leaves three suspects: the task (its target is not
predictable from what its head sees, or a bug keeps the gradient away), the data, or the budget.
The check takes the budget and PPO out of the question:

1. **Data.** A random policy plays the config's env for ``collect`` steps (default: the run's
   replay, ``aux.replay_size``) into the run's own rollout storage and replay; the task's samples
   are drawn from it as the learner draws them (``Needs``: windows, reward-skewed windows, the
   current rollout, pairs ``gap`` steps apart, or one-step samples for a ``Needs.minibatch``
   task, whose features the check computes with the torso as PPO's forward pass would). A fixed
   set of ``batches`` x the task's batch size samples is drawn once.
2. **Training.** The agent's torso and the task's head, built as a run builds them (the real
   ``TaskContext``: spaces, labels, PPO's heads), train on that set only, one batch per step in
   turn, for ``steps`` Adam steps with the run's settings: ``ppo.lr`` for the torso, the task's
   ``aux.tasks.NAME.lr`` (else ``ppo.lr``) for its head, constant, the head's gradient clipped to
   ``aux.max_grad_norm``. No PPO, no balancer: only the task's own loss, through its own ``loss``.
3. **Chance.** The loss of the best guess that ignores the inputs: the task's ``chance_loss`` on
   the whole set as one batch (one guess for every sample) where it gives one; else measured.
   The measured chance trains the same torso and head from the same initial weights on the same
   batches for the same steps, with every sample's features taken from another sample of its
   batch: each call of ``encode`` in a loss returns its rows permuted by a fixed derangement of
   the batch's samples (the rows of one sample move together, e.g. a window's frames; one
   derangement per batch and call, the same at every step). Everything the task computes from
   the batch itself (rewards, labels, actions, gaps, pixel changes, a target network's
   features) stays with its own sample, so the head sees inputs that carry no information about
   each sample's target: it can learn the targets' frequencies and memorise the fixed set, as
   it could with the real pairing, and no more.

The start and final losses are the task's loss on the whole fixed set as one batch, as training
computes it (train mode, no gradient). The chance loss is of one guess for that same batch, so a
loss whose weights depend on the batch (reward prediction's skew) is compared alike; memory
grows with ``batches``. ``final / chance`` below 0.5 says the head learns; 0.9 to 1.1, that it
stays at chance: its target is not predictable from its inputs (or no gradient reaches the
head); above 1.1, that it has not even learned the targets' frequencies in the steps given. The
losses are taken to be >= 0, as cross-entropies and squared errors are.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from auxrl.build import group_lr, load_tasks, make_optimizer, param_groups, task_specs
from auxrl.config import Config, ConfigError
from auxrl.configfile import from_dict, load_dict
from auxrl.curriculum import Stage, plan_stages
from auxrl.device import resolve_device
from auxrl.envs import VecEnv, make_envs
from auxrl.models.agent import ActOutput
from auxrl.perf import set_torch_threads, torch_threads
from auxrl.tasks.base import AuxTask, Needs, Pairs, Sequences, TaskMismatch
from auxrl.tasks.combine import draw_samples, gather_samples
from auxrl.tasks.registry import resolve
from auxrl.tasks.replay import Replay

# Without --config: CartPole (seconds on a CPU), or Breakout for a task that refuses CartPole
# (pixel tasks need image frames).
DEFAULT_CONFIGS = ("cartpole", "breakout")
LEARNS = 0.5  # final / chance below this: the head learns
NEAR_CHANCE = 0.9  # at or above this: it stays at chance; in between it learns a little
ABOVE = 1.1  # at or above this: it has not reached chance yet
NOTHING = 1e-6  # a chance loss at or below this: every sample has the same target
MEMORISED = 0.05  # a measured chance below this share of its start: the control memorised the set


@dataclass
class CheckResult:
    """What :func:`check_task` measured; :attr:`verdict` reads it."""

    task: str  # the task's entry name (aux.tasks.NAME)
    task_type: str  # the class it resolved to, module:Class
    config: str
    env_id: str
    collected: int  # env steps played by the random policy
    samples: str  # what one sample is, in words
    batches: int
    batch_size: int
    steps: int
    lrs: tuple[float, float]  # the torso's and the head's learning rate
    start: float
    final: float
    chance: float
    chance_measured: bool  # chance from the decorrelated control run (else the task's chance_loss)
    control_start: float | None = None  # the control run's start loss
    diverged_at: int | None = None  # the training step whose loss was not finite
    notes: list[str] = field(default_factory=list)  # e.g. the task's check_data reason

    @property
    def ratio(self) -> float | None:
        return self.final / self.chance if self.chance > NOTHING and math.isfinite(self.final) else None

    @property
    def verdict(self) -> str:
        if self.diverged_at is not None or not math.isfinite(self.final):
            at = f" at step {self.diverged_at}" if self.diverged_at is not None else " after training"
            return (
                f"diverges: the loss was not finite{at}; lower the head's lr (lr=...) or look for a "
                f"log of 0 or a division by 0 in the loss"
            )
        memorised = self.control_start is not None and self.chance <= MEMORISED * self.control_start
        if self.chance_measured and (self.chance <= NOTHING or memorised):
            return (
                f"cannot tell: with every sample's features taken from another sample the head reaches "
                f"{self.chance:.4f} too (it memorises the fixed set, or the target is constant); raise "
                f"--batches"
            )
        if self.chance <= NOTHING:
            return "nothing to learn: every sample of the batch has the same target (chance loss 0)"
        ratio = self.final / self.chance
        if ratio >= ABOVE:
            return (
                "above chance: in this many steps the head did not even learn how often each target "
                "occurs; give it more --steps or a higher head lr (lr=...)"
            )
        if ratio < LEARNS:
            return "learns"
        if ratio < NEAR_CHANCE:
            return (
                "learns a little: below chance, not far below; more --steps or a higher head lr "
                "(lr=...) may tell"
            )
        return (
            "stays at chance: the task's target may not be predictable from its inputs (or it needs "
            "more --steps or a higher head lr=... to show)"
        )


# --------------------------------------------------------------------------------------------
# The config: the named task alone, on the config's env
# --------------------------------------------------------------------------------------------


def check_config(name: str, settings: Sequence[str], config: str) -> tuple[Config, str]:
    """The config the check runs and the task's entry name in it.

    ``name`` is resolved as ``aux.tasks.NAME.type`` is (built-in, entry point, or
    ``package.module:Class``); a task the config already has keeps its settings there. Each of
    ``settings`` is ``key=value``: a key with a dot (or a top-level key such as ``seed``) is a
    config override, any other key one of the task's (``aux.tasks.NAME.KEY``: ``hidden=64``,
    ``lr=1e-3``). The config's other tasks and its curriculum are left out.
    """
    data = load_dict(config)
    aux = data.get("aux") if isinstance(data.get("aux"), dict) else {}
    tasks = aux.get("tasks") if isinstance(aux.get("tasks"), dict) else {}
    if name in tasks:
        entry, spec = name, dict(tasks[name] or {})
    else:
        cls = resolve(name)  # a one-line ConfigError for an unknown name or a broken plugin
        entry = name if ":" not in name else (cls.name or cls.__name__)
        spec = {"type": name} if entry != name else {}
    overrides = []
    for text in settings:
        key, eq, value = text.partition("=")
        if not eq or not key:
            raise ConfigError(
                f"{text!r} is not key=value (e.g. hidden=64, or env.num_envs=4 for the config)."
            )
        dotted = "." in key or key in Config.model_fields
        overrides.append(text if dotted else f"aux.tasks.{entry}.{key}={value}")
    data = {**data, "aux": {**aux, "enabled": True, "tasks": {entry: {**spec, "enabled": True}}}}
    data.pop("curriculum", None)
    cfg = from_dict(data, overrides, follow=True)
    spec_now = cfg.aux.tasks.get(entry)
    if not cfg.aux.enabled or spec_now is None or not spec_now.enabled or cfg.curriculum.stages:
        raise ConfigError(
            f"the overrides turn the task off or add a curriculum; `auxrl task check` checks "
            f"aux.tasks.{entry} alone, on the config's env."
        )
    load_tasks(cfg.aux)  # unknown task keys and plugins that fail to import: one line each
    return cfg, entry


# --------------------------------------------------------------------------------------------
# Data: a random policy's real rollouts, the task's samples drawn as the learner draws them
# --------------------------------------------------------------------------------------------


class RandomPolicy:
    """Uniform random actions in ``collect_rollout``'s place of the agent (its ``act``)."""

    task_aware = False

    def __init__(self, space: gym.Space, num_envs: int, device: torch.device, seed: int) -> None:
        self.space, self.num_envs, self.device = space, num_envs, device
        self.space.seed(seed)

    def act(self, obs: torch.Tensor, task: torch.Tensor | None = None) -> ActOutput:
        n = obs.shape[0]
        actions = torch.as_tensor(np.stack([self.space.sample() for _ in range(n)]), device=self.device)
        zeros = torch.zeros(n, device=self.device)
        return ActOutput(actions, zeros, zeros)


def collect(envs: VecEnv, cfg: Config, device: torch.device, steps: int) -> tuple[Replay, int, int]:
    """Whole rollouts of a random policy (at least ``steps`` env steps) in a replay holding them
    all; returns it, the steps played and the steps per env of one rollout."""
    from auxrl.collect import collect_rollout
    from auxrl.trainer import rollout_storage

    storage = rollout_storage(cfg, envs, device)
    rollouts = max(1, math.ceil(steps / (storage.num_steps * storage.num_envs)))
    replay = Replay(rollouts * storage.num_steps, storage)
    storage.next_obs.copy_(torch.as_tensor(envs.reset(seed=cfg.seed)))
    if storage.next_labels is not None:
        storage.next_labels.copy_(torch.as_tensor(envs.reset_labels))
    policy = RandomPolicy(envs.single_action_space, envs.num_envs, device, cfg.seed)
    for _ in range(rollouts):
        collect_rollout(envs, policy, storage, lambda *args: None)  # type: ignore[arg-type]
        replay.add(storage)
    return replay, rollouts * storage.num_steps * storage.num_envs, storage.num_steps


def describe_samples(needs: Needs) -> str:
    """One sample of a task with ``needs``, in words."""
    if needs.minibatch:
        return "one-step samples, as PPO's minibatch gives them (features from the torso)"
    if needs.gap is not None:
        return f"pairs of observations k steps apart, k in [{needs.gap[0]}, {needs.gap[1]}]"
    where = "the replay" if needs.replay else "the last rollout"
    skew = f", {needs.rewarding_fraction:.0%} drawn to end in a reward" if needs.rewarding_fraction else ""
    return f"windows of {needs.sequence_length} steps from {where}{skew}"


# --------------------------------------------------------------------------------------------
# Training on the fixed set
# --------------------------------------------------------------------------------------------


def derangement(n: int, generator: torch.Generator) -> torch.Tensor:
    """A permutation of ``range(n)`` that moves every index (n >= 2): ``perm[i] != i``."""
    if n < 2:
        return torch.arange(n)
    order = torch.randperm(n, generator=generator)
    perm = torch.empty(n, dtype=torch.long)
    perm[order] = order.roll(-1)  # order[i] takes order[i + 1]'s rows
    return perm


class Encoder:
    """The torso as a task's ``encode``; ``decorrelate=True``: with its rows permuted.

    Decorrelated, the ``n`` rows of a call on batch ``b`` of the fixed set are permuted in
    ``batch`` groups of ``n / batch`` consecutive rows (the rows of one sample: a window's frames
    flattened batch-major), or row by row when ``n`` is not a multiple of ``batch``, by a
    derangement fixed per (``b``, call within the loss, ``n``): the head reads another sample's
    features, the same one at every step. On the whole set (``begin(None)``: its ``batches``
    batches in order) each batch's rows are permuted as in training.
    """

    def __init__(self, torso: nn.Module, batch: int, batches: int, decorrelate: bool, seed: int) -> None:
        self.torso, self.batch, self.batches = torso, batch, batches
        self.decorrelate, self.seed = decorrelate, seed
        self.index: int | None = 0
        self.calls = 0
        self.perms: dict[tuple[int, int, int], torch.Tensor] = {}

    def begin(self, index: int | None) -> None:
        """Before a loss on the fixed set's batch ``index`` (None: on the whole set)."""
        self.index, self.calls = index, 0

    def rows(self, index: int, call: int, n: int) -> torch.Tensor:
        """The row permutation of call ``call`` on ``n`` rows of batch ``index``."""
        key = (index, call, n)
        if key not in self.perms:
            groups = self.batch if n % self.batch == 0 else n
            generator = torch.Generator().manual_seed(self.seed + 1_000_003 * index + 7919 * call + n)
            size = n // groups
            perm = derangement(groups, generator)
            self.perms[key] = (perm.unsqueeze(1) * size + torch.arange(size)).flatten()
        return self.perms[key]

    def __call__(self, obs: torch.Tensor) -> torch.Tensor:
        features = self.torso(obs)
        if not self.decorrelate:
            return features
        n, call = features.shape[0], self.calls
        self.calls += 1
        if self.index is not None:
            rows = self.rows(self.index, call, n)
        elif n % self.batches == 0:  # the whole set: batch b's rows, moved as in training
            per = n // self.batches
            rows = torch.cat([self.rows(b, call, per) + b * per for b in range(self.batches)])
        else:
            rows = self.rows(-1, call, n)
        return features[rows.to(features.device)]


def _loss(task: AuxTask, seq: Sequences | Pairs, encode: Encoder, index: int | None) -> torch.Tensor:
    """The task's loss on batch ``index`` of the fixed set (None: the whole set); a
    ``Needs.minibatch`` task gets the features PPO's forward pass would give it, from ``encode``."""
    encode.begin(index)
    if task.needs.minibatch and isinstance(seq, Sequences):
        seq.features = encode(seq.obs[:, 0])
    try:
        return task.loss(seq, encode).loss
    finally:
        if isinstance(seq, Sequences):
            seq.features = None  # no graph kept between steps


@torch.no_grad()
def set_loss(task: AuxTask, whole: Sequences | Pairs, encode: Encoder, seed: int) -> float:
    """The task's loss on the whole fixed set as one batch (train mode, as training computes it;
    the task's own random draws from a stream seeded alike at every call)."""
    whole.generator = torch.Generator(device=whole.obs.device).manual_seed(seed)
    return float(_loss(task, whole, encode, None))


def train_on(
    agent: nn.Module,
    task: AuxTask,
    fixed: list[Sequences | Pairs],
    whole: Sequences | Pairs,
    stages: list[Stage],
    steps: int,
    decorrelate: bool,
) -> tuple[float, float, int | None, tuple[float, float]]:
    """Train the torso and the task's head (and what it shares, ``shared_parameters``) on the
    fixed set's batches ``fixed``, one per step in turn. Returns the losses on the whole set
    ``whole`` before and after, the step whose loss was not finite (None: none was), and the
    torso's and the head's learning rates."""
    cfg = stages[0].cfg
    encode = Encoder(agent.torso, fixed[0].obs.shape[0], len(fixed), decorrelate, cfg.seed)
    wanted = {id(p) for p in (*agent.torso.parameters(), *task.parameters(), *task.shared_parameters())}
    trainable = [p for p in agent.parameters() if p.requires_grad and id(p) in wanted]
    if not trainable:
        raise ValueError("nothing to train: the torso and the task's head have no trainable parameters.")
    # The run's parameter groups (the head's own with aux.tasks.NAME.lr / anneal_lr), constant rates.
    optimizer = make_optimizer(param_groups(agent, trainable, stages), cfg.ppo.lr, cfg.ppo.adam_eps)
    entry = next(name for name, head in agent.heads.items() if head is task)
    lrs = (cfg.ppo.lr, group_lr(cfg, entry)[0])
    head = [p for p in task.parameters() if p.requires_grad]
    start = set_loss(task, whole, encode, cfg.seed)
    generator = torch.Generator(device=fixed[0].obs.device).manual_seed(cfg.seed + 1)
    diverged = None
    for step in range(steps):
        seq = fixed[step % len(fixed)]
        seq.generator = generator
        loss = _loss(task, seq, encode, step % len(fixed))
        if not loss.requires_grad:
            raise ValueError(
                f"the loss of aux task {task.name or type(task).__name__!r} has no gradient: it reads no "
                f"trainable parameter (features detached? a head not called?), so nothing can learn."
            )
        if not torch.isfinite(loss):
            diverged = step
            break
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if head and cfg.aux.max_grad_norm is not None:  # the head's own clip, as in a run
            nn.utils.clip_grad_norm_(head, cfg.aux.max_grad_norm)
        optimizer.step()
        task.after_update()
    final = set_loss(task, whole, encode, cfg.seed) if diverged is None else float("nan")
    return start, final, diverged, lrs


# --------------------------------------------------------------------------------------------
# The check
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckOptions:
    """How much the check plays and trains (the command's options)."""

    steps: int = 200  # Adam steps on the fixed set
    batches: int = 8  # batches of the task's batch size in the fixed set
    collect: int | None = None  # env steps of random play (None: aux.replay_size, >= one rollout)
    measure_chance: bool = False  # run the shuffled control even where the task has a chance_loss
    device: str = "auto"

    def check(self) -> None:
        for value, what in (
            (self.steps, "--steps"),
            (self.batches, "--batches"),
            (self.collect, "--collect"),
        ):
            if value is not None and value < 1:
                raise ValueError(f"{what} {value}: give 1 or more.")


def check_task(
    name: str,
    overrides: Sequence[str] = (),
    config: str | None = None,
    options: CheckOptions = CheckOptions(),
    log: Callable[[str], None] = print,
) -> CheckResult:
    """Can task ``name``'s head learn on a fixed set of real samples? See the module docstring.

    ``overrides``: ``key=value`` (:func:`check_config`); ``config``: a YAML path or a shipped name
    (default: cartpole, or breakout for a task that does not fit CartPole).
    """
    options.check()
    sources = [config] if config is not None else list(DEFAULT_CONFIGS)
    first: TaskMismatch | None = None
    for source in sources:
        cfg, entry = check_config(name, overrides, source)
        try:
            return _check(cfg, entry, source, options, log)
        except TaskMismatch as err:
            if source == sources[-1]:
                raise (first or err) from None
            first = first or err
            log(f"{entry} does not fit {source} ({str(err).split(', but')[0]}); trying {sources[-1]}")
    raise AssertionError("unreachable")


def _check(
    cfg: Config, entry: str, source: str, options: CheckOptions, log: Callable[[str], None]
) -> CheckResult:
    from auxrl.build import build_model, check_task_windows
    from auxrl.run import seed_everything

    steps, batches = options.steps, options.batches
    restore_threads = set_torch_threads(torch_threads(cfg))
    try:
        dev = resolve_device(options.device)
        seed_everything(cfg.seed, cfg.torch_deterministic, dev)
        stages = plan_stages(cfg)
        with make_envs(cfg.env) as envs:
            spaces = (envs.single_observation_space, envs.single_action_space)
            agent = build_model(cfg, stages, *spaces, tasks=task_specs(cfg, stages, envs)).to(dev)
            check_task_windows(agent, stages)
            task = agent.heads[entry]
            assert isinstance(task, AuxTask)
            wanted = options.collect if options.collect is not None else cfg.aux.replay_size
            log(f"Playing {cfg.env.id} with random actions ({wanted:,} steps) ...")
            replay, collected, recent = collect(envs, cfg, dev, wanted)
        notes = []
        valid = replay.stored("valid")
        reason = task.check_data(replay.stored("rewards")[valid], replay.stored("terminated")[valid])
        if reason:
            notes.append(f"the task's check_data: {reason}")
        size = cfg.aux.tasks[entry].batch_size or cfg.aux.batch_size
        generator = torch.Generator(device=dev).manual_seed(cfg.seed)
        drawn = draw_samples(replay, task.needs, size * batches, recent, generator)
        fixed = [
            gather_samples(replay, task.needs, tuple(part[i * size : (i + 1) * size] for part in drawn))
            for i in range(batches)
        ]
        whole = gather_samples(replay, task.needs, drawn)  # the same samples as one batch, in order
        initial = copy.deepcopy(agent.state_dict())
        log(f"Training the torso and {entry}'s head on {batches} x {size} samples for {steps} steps ...")
        agent.train()
        start, final, diverged, lrs = train_on(agent, task, fixed, whole, stages, steps, decorrelate=False)
        known = task.chance_loss(whole) if diverged is None else None
        control_start = None
        if diverged is not None:
            chance, measured = float("nan"), False
        elif known is not None and not options.measure_chance:
            chance, measured = float(known), False
        else:
            log("Measuring chance: the same training with each sample's features from another sample ...")
            agent.load_state_dict(initial)
            control_start, chance, _, _ = train_on(agent, task, fixed, whole, stages, steps, decorrelate=True)
            measured = True
            if known is not None:
                notes.append(f"the task's chance_loss, the best input-blind guess: {known:.4f}")
    finally:
        restore_threads()
    cls = type(task)
    return CheckResult(
        task=entry,
        task_type=f"{cls.__module__}:{cls.__qualname__}",
        config=source,
        env_id=cfg.env.id,
        collected=collected,
        samples=describe_samples(task.needs),
        batches=batches,
        batch_size=size,
        steps=steps,
        lrs=lrs,
        start=start,
        final=final,
        chance=chance,
        chance_measured=measured,
        control_start=control_start,
        diverged_at=diverged,
        notes=notes,
    )


def report(result: CheckResult) -> str:
    """The check's outcome as a short table."""
    r = result
    torso_lr, head_lr = r.lrs
    chance_how = (
        f"measured: the same training with each sample's features taken from another sample "
        f"(it started at {r.control_start:.4f})"
        if r.chance_measured
        else "the task's chance_loss: the best guess that ignores the inputs"
    )
    ratio = r.ratio
    lines = [
        f"auxrl task check: {r.task} ({r.task_type}) on {r.env_id} (config {r.config})",
        f"  data      {r.collected:,} env steps of random actions; a fixed set of {r.batches} x "
        f"{r.batch_size} samples: {r.samples}",
        f"  training  the torso and the head on that set only, {r.steps} Adam steps (lr: torso "
        f"{torso_lr:g}, head {head_lr:g})",
        "",
        f"  start loss    {r.start:.4f}",
        f"  final loss    {r.final:.4f}",
        f"  chance loss   {r.chance:.4f}  ({chance_how})",
        f"  final/chance  {'-' if ratio is None else f'{ratio:.3f}'}",
        f"  verdict       {r.verdict}",
    ]
    lines += [f"  note          {note}" for note in r.notes]
    return "\n".join(lines)
