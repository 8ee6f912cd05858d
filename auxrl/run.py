"""A training run's life around the loop: set-up, resume, the checkpoint payload and teardown.

:meth:`Run.start` does everything before the first update (read the run directory and its
checkpoint, seed, build the model and optimizer, restore a resumed run, claim the directory,
open the logs); :meth:`Run.save` writes the checkpoint payload; leaving the ``with`` block
saves on a stop by hand and releases everything. The loop itself is auxrl/trainer.py.
"""

from __future__ import annotations

import functools
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import yaml

from auxrl import checkpoint, rundir
from auxrl.balance import Balancer
from auxrl.build import (
    build_model,
    check_param_groups,
    check_stage_spaces,
    check_task_windows,
    make_optimizer,
    param_groups,
    task_specs,
)
from auxrl.config import Config, to_dict
from auxrl.configfile import flatten_dotted, save_config
from auxrl.curriculum import Stage, plan_stages
from auxrl.device import resolve_device
from auxrl.distributed import Dist, weights_checksum
from auxrl.envs import NormStats, VecEnv, make_envs
from auxrl.envs.dictobs import ImageView, sample_batch
from auxrl.envs.spaces import to_plain
from auxrl.learner import Learner
from auxrl.logger import Logger, NullLogger, Progress
from auxrl.models.agent import Agent
from auxrl.models.multitask import TaskSpec
from auxrl.perf import autocast, check_bf16, try_compile
from auxrl.stopping import StopRequested, StopSignals
from auxrl.tasks.base import AuxTask
from auxrl.tasks.combine import AuxTasks
from auxrl.transfer import freeze, load_pretrained


def seed_everything(seed: int, deterministic: bool, device: torch.device | None = None) -> None:
    """Seed Python, numpy and torch (CPU and CUDA), and set ``torch_deterministic``'s switches.

    ``deterministic`` (``torch_deterministic``, default true, as CleanRL): cuDNN picks
    deterministic kernels and does not benchmark; on a CUDA ``device`` also
    ``torch.use_deterministic_algorithms(True, warn_only=True)`` (deterministic kernels for
    every op that has one; an op that has none warns, naming itself, rather than stopping the
    run) and ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` where unset (cuBLAS's reductions then run in a
    fixed order; it must be set before the process's first cuBLAS call, which in ``auxrl train``
    comes later). The CPU path is left as it was: its kernels are deterministic already.
    Not deterministic: ``torch.backends.cudnn.benchmark = True`` (cuDNN times its convolution
    algorithms on the first batch of each shape and keeps the fastest). TF32 is left at
    PyTorch's defaults either way (float32 matmuls in full float32, cuDNN convolutions in TF32 on
    Ampere and later): a precision choice, deterministic in both settings.
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic
    if device is not None and device.type == "cuda":
        if deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(deterministic, warn_only=True)


def derived_seed(*parts: int) -> int:
    """A seed made from the run's seed and offsets (rank, stage, step), kept below 2**30: env j is
    then seeded with it + j, and ALE takes seeds below 2**31."""
    return sum(parts) % 2**30


@dataclass
class TrainState:
    """Everything besides the weights that a resumed run needs."""

    global_step: int = 0
    update: int = 0
    stage: int = 0
    stage_start_step: int = 0
    stage_returns: list[float] = field(default_factory=list)  # this stage's (the last one's when done)
    best_recent_return: float | None = None
    episodes: int = 0
    # Per-episode metrics (e.g. Crafter's achievements) over every episode of the run so far:
    # name -> [sum, count] (their means are what Crafter's success rates are).
    episode_metrics: dict[str, list[float]] = field(default_factory=dict)


def silent(*args: object, **kwargs: object) -> None:
    """``print`` for ``verbose=False``."""


def _next_multiple(step: int, every: int) -> int:
    return (step // every + 1) * every if every > 0 else math.inf  # type: ignore[return-value]


@dataclass
class Run:
    """The run-wide pieces every stage works with; :meth:`start` makes one."""

    cfg: Config
    run_dir: Path
    stages: list[Stage]
    state: TrainState
    agent: Agent
    learner: Learner
    spaces: tuple[gym.Space, gym.Space]  # the model's (observation, action) spaces
    logger: Logger
    bar: Progress
    device: torch.device
    bf16: bool
    dist: Dist
    norm_stats: NormStats
    claimed: rundir.Claim | None
    resumed: bool
    envs: VecEnv | None  # the current stage's envs (the first one's are made during set-up)
    resume_aux_rng: torch.Tensor | None = None  # the aux sampler's state in the resumed stage
    resume_aux_minibatches: int = 0  # minibatches the resumed stage has run (aux.every counts them)
    aux: AuxTasks | None = None  # the current stage's tasks
    stop: StopSignals = field(default_factory=lambda: StopSignals(print, enabled=False))
    local_episodes: int = 0  # episodes this process played (all ranks': state.episodes)
    start_time: float = field(default_factory=time.monotonic)
    start_step: int = field(init=False)
    next_checkpoint: int = field(init=False)
    finished: bool = False

    def __post_init__(self) -> None:
        self.start_step = self.state.global_step
        self.next_checkpoint = _next_multiple(self.state.global_step, self.cfg.log.checkpoint_every)

    # ----------------------------------------------------------------------------------------
    # Set-up
    # ----------------------------------------------------------------------------------------

    @classmethod
    def start(
        cls,
        cfg: Config,
        run_dir: Path,
        device: str,
        progress: bool,
        resume: bool,
        overwrite: bool,
        verbose: bool,
        threads: int | None,
    ) -> Run:
        """Everything before the first update. A start-up error leaves the run directory as it
        was (or absent) and closes what was opened."""
        dist = Dist.from_env(device)  # one process unless started by torchrun / --nproc
        main = dist.is_main  # rank 0 alone writes the run directory, the logs and the console
        say = print if verbose and main else silent
        start, saved = "fresh", None
        if main:  # rank 0 alone reads the run directory (plans it, picks and repairs the checkpoint)
            start = rundir.plan(run_dir, resume=resume, overwrite=overwrite)
            # On the CPU: load_state_dict moves weights and optimizer state to the model's device.
            # Only this run's own checkpoints (a copied-in one of another run is skipped, with a warning).
            saved = checkpoint.load(run_dir, run_id=rundir.run_id(run_dir)) if start == "resume" else None
        # ... and sends what it loaded: every rank resumes from that very checkpoint, also where the
        # others see no run directory (a node-local disk) or an older view of it (a network file system).
        start, saved = dist.share((start, saved))
        dev = dist.device(resolve_device(device))
        seed_everything(cfg.seed, cfg.torch_deterministic, dev)
        stages = plan_stages(cfg)
        state = TrainState(**saved["state"]) if saved is not None else TrainState()
        # Observation / reward statistics (continuous control) carry over stages and resumes.
        norm_stats = NormStats(gamma=cfg.ppo.gamma)
        if saved is not None:
            norm_stats.load_state_dict(saved.get("normalization") or {})
        if cfg.log.wandb and main:
            from auxrl.tracking import check_wandb

            check_wandb()  # before anything is written

        # The model is built once from the first stage's env and carries over between stages. A run
        # whose curriculum has finished (state.stage == len(stages)) resumes at its last stage, with
        # nothing left to train.
        current = min(state.stage, len(stages) - 1)
        first_envs = make_envs(stages[current].cfg.env, stats=norm_stats)
        claimed: rundir.Claim | None = None
        try:
            spaces = (first_envs.single_observation_space, first_envs.single_action_space)
            tasks = task_specs(cfg, stages, first_envs, current)  # per-task heads (env.tasks, PopArt)
            check_stage_spaces(spaces, stages[current + 1 :], tasks)
            agent, learner, bf16 = _build(cfg, stages, spaces, tasks, dev, dist, saved is None, say)
            if saved is not None:
                _restore(learner, saved, cfg, run_dir, dev)
                where = (
                    f"stage {stages[current].name}" if state.stage < len(stages) else "curriculum finished"
                )
                say(f"Resumed {run_dir} at step {state.global_step:,} ({where})")
                if state.stage >= len(stages):
                    say("Nothing to train: every curriculum stage has ended (add a stage to train further).")
                elif state.global_step >= cfg.ppo.total_steps:
                    say(
                        f"Nothing to train: the run is at step {state.global_step:,} and ppo.total_steps "
                        f"is {cfg.ppo.total_steps:,} (raise it to train longer)."
                    )
            if dist.enabled:
                # Same weights everywhere (built from cfg.seed); each rank its own action sampling.
                # Re-derived from the step on resume, so a run can resume with another number of ranks.
                seed_everything(
                    derived_seed(cfg.seed, dist.rank, state.global_step), cfg.torch_deterministic, dev
                )
                say(f"Distributed: {dist.world_size} processes, {cfg.env.num_envs} envs each")
            if cfg.model.freeze:
                say(f"Frozen: {', '.join(cfg.model.freeze)}")
            say(_start_summary(cfg, agent, threads, dist.world_size, state.global_step))

            # The directory is created, locked and cleared only now: a start-up error above leaves it
            # as it was (or absent), and a failed resume leaves the run's own config.yaml in place.
            resumed_id = saved.get("run_id") if saved is not None else None
            claimed, notes = rundir.claim(run_dir, start, resumed_id) if main else (None, [])
            for note in notes:
                say(note)
            logger = _open_logger(cfg, run_dir, main, saved is not None, state.global_step)
            bar = Progress(
                cfg.ppo.total_steps,
                state.global_step,
                progress,
                cfg.log.print_every_secs,
                quiet=not (verbose and main),
            )
        except BaseException:  # the run never started (Python API: the directory is free at once)
            if claimed is not None:
                claimed.abandon(start)
            first_envs.close()
            raise
        return cls(
            cfg,
            run_dir,
            stages,
            state,
            agent,
            learner,
            spaces,
            logger,
            bar,
            dev,
            bf16,
            dist,
            norm_stats,
            claimed,
            resumed=saved is not None,
            envs=first_envs,
            resume_aux_rng=saved.get("aux_rng") if saved is not None and not dist.enabled else None,
            resume_aux_minibatches=saved.get("aux_minibatches_done", 0) if saved is not None else 0,
        )

    # ----------------------------------------------------------------------------------------
    # The checkpoint
    # ----------------------------------------------------------------------------------------

    def payload(self) -> dict[str, Any]:
        """What a checkpoint holds: everything :meth:`start` needs to resume exactly."""
        learner, aux = self.learner, self.aux
        return {
            "model": self.agent.state_dict(),
            "optimizer": learner.optimizer.state_dict(),
            "state": vars(self.state).copy(),
            "rng": checkpoint.rng_state(self.device),
            "balancer": learner.balancer.state_dict(),
            "aux_rng": aux.rng_state() if aux else None,
            "aux_minibatches_done": aux.minibatches_done if aux else 0,
            "config": to_dict(self.cfg),
            "spaces": [to_plain(space) for space in self.spaces],
            # per-task heads: (name, env id, action space) of each, in head order
            "tasks": [[t.name, t.env_id, to_plain(t.action_space)] for t in self.agent.tasks],
            "normalization": self.norm_stats.state_dict(),
        }

    def save(self) -> None:
        """Write a checkpoint (every rank calls this; rank 0 writes, after checking that the
        ranks' weights agree)."""
        extra = {}
        dist = self.dist
        if dist.enabled:
            ranks = dist.gather([(weights_checksum(self.agent), self.local_episodes)])
            checksums = [c for c, _ in ranks]
            if len(set(checksums)) > 1:
                raise RuntimeError(f"The ranks' weights differ (checksums {checksums}): not saving.")
            extra["distributed"] = {
                "world_size": dist.world_size,
                "checksums": checksums,
                "episodes_per_rank": [n for _, n in ranks],
            }
        if not dist.is_main:
            return
        self.logger.flush()  # every event up to this step is on disk before the checkpoint says so
        assert self.claimed is not None
        checkpoint.save(
            self.run_dir,
            {**self.payload(), **extra},
            self.state.global_step,
            self.cfg.log.keep_checkpoints,
            run_id=self.claimed.run_id,
        )

    def save_if_due(self) -> None:
        """Save at every ``log.checkpoint_every`` steps."""
        if self.state.global_step >= self.next_checkpoint:
            self.save()
            self.next_checkpoint = _next_multiple(self.state.global_step, self.cfg.log.checkpoint_every)

    # ----------------------------------------------------------------------------------------
    # Teardown
    # ----------------------------------------------------------------------------------------

    def __enter__(self) -> Run:
        # Several processes stop on Ctrl-C at once: their ranks may be inside different collectives.
        self.stop = StopSignals(self.bar.log, enabled=not self.dist.enabled).install()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if isinstance(err, KeyboardInterrupt):
                self._on_stop(err)
        finally:
            self._close()

    def _on_stop(self, err: KeyboardInterrupt) -> None:
        """Stopping by hand loses nothing: a checkpoint of the last whole update (resume it)."""
        state, log, run_dir = self.state, self.bar.log, self.run_dir
        at = f"at env step {state.global_step:,}"
        if self.dist.enabled or self.stop.forced:  # the last checkpoint resumes
            log(f"Stopped {at} without saving; continue with --resume {run_dir}")
            return
        if state.global_step == self.start_step:  # nothing trained since the start: keep it so
            how = (
                f"continue with --resume {run_dir}" if self.resumed else "run the same command to start again"
            )
            log(f"Stopped {at} before the first update: nothing to save; {how}")
            return
        if isinstance(err, StopRequested):  # at a safe point: whole updates only
            log(f"Stopped after update {state.update} {at}: saving a checkpoint")
        else:  # raised by code (no signal handler in this thread)
            log(f"Interrupted in update {state.update + 1} {at}: saving a checkpoint")
        self.save()
        log(f"Saved a checkpoint at step {state.global_step:,}; continue with --resume {run_dir}")

    def _close(self) -> None:
        self.stop.restore()
        try:
            if self.envs is not None:
                try:
                    self.envs.close()
                except (EOFError, OSError):  # workers already ended by the signal that stopped the run
                    if self.stop.signum is None:
                        raise
        finally:
            self.bar.close()
            self.logger.close()
            if self.claimed is not None:
                self.claimed.release()
            self.dist.close(barrier=self.finished)


# --------------------------------------------------------------------------------------------
# Pieces of the set-up
# --------------------------------------------------------------------------------------------


def _build(
    cfg: Config,
    stages: list[Stage],
    spaces: tuple[gym.Space, gym.Space],
    tasks: list[TaskSpec],
    dev: torch.device,
    dist: Dist,
    fresh: bool,
    say: Any,
) -> tuple[Agent, Learner, bool]:
    """The model (from ``model.init_from`` on a fresh run, with ``model.freeze``), its optimizer,
    balancer and learner, and whether it computes in bf16."""
    agent = build_model(cfg, stages, *spaces, tasks=tasks).to(dev)
    check_task_windows(agent, stages)
    if cfg.model.init_from and fresh:
        loaded = load_pretrained(agent, cfg.model.init_from, cfg.model.init_modules)
        for name, head in agent.heads.items():
            if isinstance(head, AuxTask) and name not in loaded:
                head.on_torso_loaded()
        say(f"Loaded {', '.join(loaded)} from {cfg.model.init_from}")
    freeze(agent, cfg.model.freeze)
    bf16 = check_bf16(cfg.perf.bf16, dev)
    if cfg.perf.compile:
        sample = torch.from_numpy(sample_batch(spaces[0])).to(dev)
        rollout_batch = cfg.env.num_envs // getattr(cfg.env, "groups", 1)  # envs stepped in groups
        minibatch = cfg.env.num_envs * cfg.ppo.num_steps // cfg.ppo.num_minibatches
        compiled = try_compile(agent.torso, sample, (rollout_batch, minibatch), bf16)
        say(f"perf.compile: torso {'compiled' if compiled else 'runs eagerly'}")
    trainable = [p for p in agent.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError(
            f"model.freeze={cfg.model.freeze} leaves nothing to train. Unfreeze a head or add an "
            f"auxiliary task to train on the frozen torso."
        )
    # One group, or one per task with its own aux.tasks.NAME.lr / anneal_lr after the rest's.
    optimizer = make_optimizer(param_groups(agent, trainable, stages), cfg.ppo.lr, cfg.ppo.adam_eps)
    # amp: each minibatch's forward passes only (auxrl/learner.py)
    amp = functools.partial(autocast, bf16, dev)
    frames = None
    if cfg.ppo.augment != "none" and isinstance(spaces[0], gym.spaces.Dict):
        try:
            frames = ImageView(spaces[0], cfg.aux.image_key)
        except ValueError as err:
            raise ValueError(f"ppo.augment={cfg.ppo.augment} shifts image frames, but {err}.") from None
    learner = Learner(agent, optimizer, Balancer(cfg.aux.balance), trainable, dist, amp, frames)
    return agent, learner, bf16


def _restore(learner: Learner, saved: dict[str, Any], cfg: Config, run_dir: Path, dev: torch.device) -> None:
    """Weights, optimizer, RNG and balancer state from a resumed run's checkpoint."""
    try:
        learner.agent.load_state_dict(saved["model"])
        check_param_groups(learner.optimizer, saved["optimizer"])
        learner.optimizer.load_state_dict(saved["optimizer"])  # each group's lr and tag too
    except (RuntimeError, ValueError) as err:
        raise ValueError(_resume_mismatch(run_dir, saved["config"], cfg, err)) from None
    checkpoint.set_rng_state(saved["rng"], dev)
    if "balancer" in saved:
        learner.balancer.load_state_dict(saved["balancer"], dev)


def _resume_mismatch(run_dir: Path, saved: dict, cfg: Config, err: Exception) -> str:
    """Why a checkpoint does not fit the model this config builds, in the user's terms."""

    sections = ("env", "model", "aux")  # the ones that shape the network and its optimizer
    old = {k: v for k, v in flatten_dotted(saved).items() if k.split(".")[0] in sections}
    new = {k: v for k, v in flatten_dotted(to_dict(cfg)).items() if k.split(".")[0] in sections}
    changed = [
        f"{key} {old.get(key, '(absent)')} -> {new.get(key, '(absent)')}"
        for key in sorted(old.keys() | new.keys())
        if old.get(key) != new.get(key)
    ]
    differ = f"; keys that differ: {', '.join(changed)}" if changed else ""
    return (
        f"Cannot resume {run_dir}: its checkpoint holds a different model or optimizer than this "
        f"config builds ({str(err).strip().splitlines()[0]}{differ}). Resume with `auxrl train "
        f"--resume {run_dir}` and overrides that leave the model alone (e.g. ppo.total_steps), or "
        f"train the new config in a fresh --run-dir."
    )


def _open_logger(cfg: Config, run_dir: Path, main: bool, resumed: bool, step: int) -> Logger:
    """TensorBoard (and W&B) logging, config.yaml; rank 0 only."""
    if not main:
        return NullLogger()
    mirror = None  # first: a W&B that cannot start (not logged in) leaves no config.yaml behind
    if cfg.log.wandb:
        from auxrl.tracking import WandbMirror

        mirror = WandbMirror(cfg.log, run_dir, to_dict(cfg), resumed=resumed)
    save_config(cfg, run_dir / "config.yaml")
    # Events up to the checkpoint step are kept; later ones (written before a crash) are purged.
    logger = Logger(run_dir, cfg.log.flush_secs, step + 1 if resumed else None, mirror=mirror)
    if not resumed:
        logger.text("config", "```\n" + yaml.safe_dump(to_dict(cfg), sort_keys=False) + "\n```")
    return logger


def _start_summary(cfg: Config, agent: Agent, threads: int | None, processes: int = 1, start: int = 0) -> str:
    """One line saying what will be trained: the auxiliary heads (or why none) and the threads."""
    heads = [name for name in agent.heads if name not in ("policy", "value")]
    if heads:
        tasks = ", ".join(heads)
    elif cfg.aux.tasks and not cfg.aux.enabled:
        tasks = f"none (aux.enabled=false turns off {', '.join(cfg.aux.tasks)})"
    else:
        tasks = "none"
    line = f"Auxiliary heads: {tasks}. Torch CPU threads: {threads or torch.get_num_threads()}"
    line += " (perf.threads)" if cfg.perf.threads else "" if threads else " (OMP_NUM_THREADS/MKL_NUM_THREADS)"
    rollout = cfg.env.num_envs * cfg.ppo.num_steps * processes  # env steps of one update
    if (cfg.ppo.total_steps - start) % rollout and start < cfg.ppo.total_steps and not cfg.curriculum.stages:
        # Training steps whole rollouts; saying so beats a step count that silently overshoots.
        end = start + math.ceil((cfg.ppo.total_steps - start) / rollout) * rollout
        what = "env.num_envs x ppo.num_steps" + (" x processes" if processes > 1 else "")
        line += (
            f". ppo.total_steps {cfg.ppo.total_steps:,} is not a multiple of a rollout ({what} = "
            f"{rollout:,}): training stops at step {end:,}"
        )
    return line + "."
