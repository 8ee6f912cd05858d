"""The training loop, top to bottom: collect -> GAE -> PPO update (+ weighted aux losses) -> log
-> checkpoint, once per update, for each curriculum stage.

Data flows one way: env (uint8 frames) -> rollout storage on the training device -> torso ->
heads -> named loss terms -> optimizer. Nothing here knows how a particular auxiliary task works.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import os
import random
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np
import torch
import yaml
from torch import nn

from auxrl import checkpoint, rundir
from auxrl.balance import Balancer
from auxrl.config import AuxConfig, AuxTaskConfig, Config, ConfigError, flatten_dotted, save_config, to_dict
from auxrl.curriculum import Stage, plan_stages
from auxrl.device import resolve_device
from auxrl.distributed import Dist, weights_checksum
from auxrl.envs import NormStats, VecEnv, make_envs
from auxrl.envs.labels import label_spec
from auxrl.envs.spaces import to_plain
from auxrl.logger import Logger, NullLogger, Progress
from auxrl.models.agent import Agent, build_agent, freeze, load_pretrained
from auxrl.perf import autocast, check_bf16, set_torch_threads, torch_threads, try_compile
from auxrl.ppo.loss import explained_variance
from auxrl.ppo.rollout import RolloutStorage
from auxrl.stopping import StopRequested, StopSignals
from auxrl.tasks.base import AuxTask, PPOHeads, TaskContext
from auxrl.tasks.combine import AuxTasks
from auxrl.tasks.registry import enabled_tasks, resolve
from auxrl.update import ppo_update

if TYPE_CHECKING:
    from auxrl.inference import TrainedAgent


def make_optimizer(params: list[nn.Parameter], lr: float, eps: float) -> torch.optim.Optimizer:
    """Adam with its fused kernel where this torch and device have one (one kernel for every
    parameter: ~5x faster steps on CPU than the default loop), else the multi-tensor one.
    Same update rule either way, up to float rounding; checkpoints load into both."""
    try:
        return torch.optim.Adam(params, lr=lr, eps=eps, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(params, lr=lr, eps=eps, foreach=True)


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


@dataclass
class TrainResult:
    """What :func:`train` returns: where the run is, how far it got, and the trained agent."""

    run_dir: Path
    global_step: int
    stage: int
    episodes: int
    recent_return: float | None  # mean return of the last log.return_window episodes
    best_recent_return: float | None

    @functools.cached_property
    def agent(self) -> TrainedAgent:
        """The trained agent, loaded from the run's final checkpoint on the CPU (``.predict``);
        :func:`auxrl.load_agent` loads it on another device."""
        from auxrl.inference import load_agent

        return load_agent(self.run_dir, device="cpu")


# --------------------------------------------------------------------------------------------
# Building the model
# --------------------------------------------------------------------------------------------


def build_model(cfg: Config, stages: list[Stage], obs_space: gym.Space, action_space: gym.Space) -> Agent:
    """Torso + PPO heads + every auxiliary task enabled in any stage, each checked against the env."""
    agent = build_agent(
        cfg.model.torso, cfg.model.hidden_sizes, obs_space, action_space, cfg.model.separate_value
    )
    heads = PPOHeads(agent.policy, agent.value)  # for tasks that train them (augment_consistency)
    ctx = TaskContext(obs_space, action_space, agent.torso.feature_dim, agent.torso, ppo_heads=heads)
    for stage in stages:
        labels = label_spec(stage.cfg.env)  # env.labels: known from the config, before any step
        ctx = dataclasses.replace(ctx, label_names=labels.names, label_kinds=labels.kinds)
        for name, (cls, task_cfg) in load_tasks(stage.cfg.aux).items():
            if name in agent.heads:  # enabled in an earlier stage (reserved names: config.validate)
                continue
            cls.check(ctx)
            agent.heads[name] = cls(task_cfg, ctx)
    return agent


def load_tasks(aux: AuxConfig) -> dict[str, tuple[type[AuxTask], Any]]:
    """``enabled_tasks``, with a plugin that fails on import and option typos as config errors."""
    common = [f.name for f in dataclasses.fields(AuxTaskConfig) if f.name != "params"]
    # Every configured task is resolved and its keys checked, enabled or not: a bad type or key
    # fails at start-up, not when a stage or a later run turns the task on.
    for name, spec in aux.tasks.items():
        try:
            cls = resolve(spec.type or name)
        except (ConfigError, ImportError) as err:
            raise ConfigError(f"aux.tasks.{name}: {err}") from None  # which entry of the config
        except Exception as err:  # the plugin's own code raised while importing
            raise ConfigError(
                f"aux.tasks.{name}: loading {spec.type or name!r} raised {type(err).__name__}: {err}. "
                f"Fix that module (importing it in Python shows the traceback), or take the task out "
                f"of the config (a disabled task is still imported)."
            ) from err
        own = [f.name for f in dataclasses.fields(cls.Config)]
        for key in spec.params:
            if key not in own:
                close = difflib.get_close_matches(key, own + common, n=1)
                raise ConfigError(
                    f"Unknown config key 'aux.tasks.{name}.{key}'. Valid keys: "
                    f"{', '.join(sorted(own + common))}." + (f" Did you mean {close[0]!r}?" if close else "")
                )
    return enabled_tasks(aux)


def stage_tasks(agent: Agent, stage: Stage) -> dict[str, AuxTask]:
    return {name: agent.heads[name] for name in enabled_tasks(stage.cfg.aux)}


def check_task_windows(agent: Agent, stages: list[Stage]) -> None:
    """Each task's windows fit in one rollout (all the replay holds at the first update): refused
    at start-up rather than at the first update, after the run directory was written."""
    for stage in stages:
        for name, task in stage_tasks(agent, stage).items():
            length, steps = task.needs.sequence_length, stage.cfg.ppo.num_steps
            if length > steps:
                raise ValueError(
                    f"aux.tasks.{name} needs windows of {length} steps, more than a rollout holds "
                    f"(ppo.num_steps={steps}{f', stage {stage.name!r}' if len(stages) > 1 else ''}): "
                    f"shorten the task's window (its horizon / n_steps) or raise ppo.num_steps."
                )


def check_spaces(agent_env: tuple[gym.Space, gym.Space], envs: VecEnv, stage: Stage) -> None:
    obs_space, action_space = agent_env
    if envs.single_action_space != action_space:
        raise ValueError(
            f"Stage {stage.name!r} ({stage.cfg.env.id}) has action space "
            f"{envs.single_action_space}, but the policy head was built for {action_space}. For a "
            f"multi-game Atari curriculum set env.full_action_space=true so every game uses the "
            f"same 18 actions."
        )
    if envs.single_observation_space.shape != obs_space.shape:
        raise ValueError(
            f"Stage {stage.name!r}: observations of shape {envs.single_observation_space.shape} do "
            f"not fit the torso built for {obs_space.shape}."
        )


def check_stage_spaces(agent_env: tuple[gym.Space, gym.Space], stages: list[Stage]) -> None:
    """Check every later stage's env against the model before training (one env copy each)."""
    probed: list = []
    for stage in stages:
        probe = dataclasses.replace(stage.cfg.env, num_envs=1, groups=1, vector_mode="sync")
        if probe not in probed:
            probed.append(probe)
            with make_envs(probe) as envs:
                check_spaces(agent_env, envs, stage)


# --------------------------------------------------------------------------------------------
# Collecting a rollout (the update is in auxrl/update.py)
# --------------------------------------------------------------------------------------------


def collect_rollout(envs: VecEnv, agent: Agent, storage: RolloutStorage, on_episodes) -> None:
    """Fill ``storage`` with ``num_steps`` steps of every env.

    On entry ``storage.next_obs`` holds the current observations; on exit, the ones after the
    last step. Env groups are stepped in turn (``envs.groups``): the actions of group g are sent,
    then the policy acts for group g+1 while group g's emulators run. Observations are copied
    from the env straight into their preallocated storage slot on the training device.
    ``on_episodes(returns, lengths, steps_taken)`` receives finished games as they end.
    """
    num_steps = storage.num_steps
    storage.obs[0].copy_(storage.next_obs)
    if storage.labels is not None:  # env.labels: each obs's state labels, alongside it
        storage.labels[0].copy_(storage.next_labels)

    def receive(env: VecEnv, t: int, sl: slice) -> None:
        step = env.recv()
        # One host->device copy for the four per-env scalars.
        flags = torch.from_numpy(
            np.stack([step.reward, step.terminated, step.truncated, ~step.reset]).astype(np.float32)
        ).to(storage.device, non_blocking=True)
        storage.rewards[t, sl] = flags[0]
        storage.terminated[t, sl] = flags[1].bool()
        storage.truncated[t, sl] = flags[2].bool()
        storage.valid[t, sl] = flags[3].bool()
        slot = storage.obs[t + 1, sl] if t + 1 < num_steps else storage.next_obs[sl]
        slot.copy_(torch.from_numpy(step.obs), non_blocking=True)
        if storage.labels is not None:
            labels = storage.labels[t + 1, sl] if t + 1 < num_steps else storage.next_labels[sl]
            labels.copy_(torch.from_numpy(step.labels), non_blocking=True)
        if len(step.episode_returns):
            on_episodes(step.episode_returns, step.episode_lengths, (t + 1) * storage.num_envs)

    groups = envs.groups
    for t in range(num_steps):
        for sl, env in groups:
            if t > 0:
                receive(env, t - 1, sl)  # group's step t-1 is done: its obs t is in storage
            out = agent.act(storage.obs[t, sl])
            storage.actions[t, sl] = out.action
            storage.log_probs[t, sl] = out.log_prob
            storage.values[t, sl] = out.value
            env.send(out.action.cpu().numpy())
    for sl, env in groups:
        receive(env, num_steps - 1, sl)


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


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


def train(
    cfg: Config,
    run_dir: str | Path,
    device: str = "auto",
    progress: bool = True,
    resume: bool = False,
    overwrite: bool = False,
    verbose: bool = True,
) -> TrainResult:
    """Train ``cfg`` in ``run_dir`` (TensorBoard events, config.yaml, checkpoints/).

    ``resume=True`` continues from the run directory's latest intact checkpoint: same step count,
    same TensorBoard curves (events written after that checkpoint are purged), same stage. A
    directory that already holds a run is refused unless resumed or ``overwrite=True``; one whose
    run died before its first checkpoint starts again (see auxrl/rundir.py). ``progress=False``
    prints status lines instead of a progress bar; ``verbose=False`` prints nothing (warnings
    still go to stderr). :func:`auxrl.train` is the notebook-friendly front end.
    """
    threads = torch_threads(cfg)
    # For the whole run, start-up included (compilation, the first forward passes); the weights
    # do not depend on it (layer_init).
    restore_threads = set_torch_threads(threads)  # the caller's count comes back afterwards
    try:
        return _train(cfg, Path(run_dir), device, progress, resume, overwrite, verbose, threads)
    finally:
        restore_threads()


def _train(
    cfg: Config,
    run_dir: Path,
    device: str,
    progress: bool,
    resume: bool,
    overwrite: bool,
    verbose: bool,
    threads: int | None,
) -> TrainResult:
    dist = Dist.from_env(device)  # one process unless started by torchrun / --nproc
    main = dist.is_main  # rank 0 alone writes the run directory, the logs and the console
    say = print if verbose and main else _silent
    start, saved = "fresh", None
    if main:  # rank 0 alone reads the run directory (plans it, picks and repairs the checkpoint) ...
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
    state = TrainState()
    if saved is not None:
        state = TrainState(**saved["state"])
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
    try:  # until the run starts: a start-up error closes the envs and lets the directory go
        spaces = (first_envs.single_observation_space, first_envs.single_action_space)
        check_stage_spaces(spaces, stages[current + 1 :])
        agent = build_model(cfg, stages, *spaces).to(dev)
        check_task_windows(agent, stages)
        if cfg.model.init_from and saved is None:
            loaded = load_pretrained(agent, cfg.model.init_from, cfg.model.init_modules)
            for name, head in agent.heads.items():
                if isinstance(head, AuxTask) and name not in loaded:
                    head.on_torso_loaded()
            say(f"Loaded {', '.join(loaded)} from {cfg.model.init_from}")
        frozen = freeze(agent, cfg.model.freeze)
        if cfg.perf.compile:
            sample = torch.from_numpy(spaces[0].sample()[None]).to(dev)
            say(f"perf.compile: torso {'compiled' if try_compile(agent.torso, sample) else 'runs eagerly'}")
        bf16 = check_bf16(cfg.perf.bf16, dev)
        trainable = [p for p in agent.parameters() if p.requires_grad]
        if not trainable:
            raise ValueError(
                f"model.freeze={cfg.model.freeze} leaves nothing to train. Unfreeze a head or add an "
                f"auxiliary task to train on the frozen torso."
            )
        optimizer = make_optimizer(trainable, cfg.ppo.lr, cfg.ppo.adam_eps)
        balancer = Balancer(cfg.aux.balance)
        if saved is not None:
            try:
                agent.load_state_dict(saved["model"])
                optimizer.load_state_dict(saved["optimizer"])
            except (RuntimeError, ValueError) as err:
                raise ValueError(_resume_mismatch(run_dir, saved["config"], cfg, err)) from None
            checkpoint.set_rng_state(saved["rng"], dev)
            if "balancer" in saved:
                balancer.load_state_dict(saved["balancer"], dev)
            where = f"stage {stages[current].name}" if state.stage < len(stages) else "curriculum finished"
            say(f"Resumed {run_dir} at step {state.global_step:,} ({where})")
            if state.stage >= len(stages):
                say("Nothing to train: every curriculum stage has ended (add a stage to train further).")
            elif state.global_step >= cfg.ppo.total_steps:
                say(
                    f"Nothing to train: the run is at step {state.global_step:,} and ppo.total_steps is "
                    f"{cfg.ppo.total_steps:,} (raise it to train longer)."
                )
        if dist.enabled:
            # Same weights everywhere (built from cfg.seed); each rank its own action sampling.
            # Re-derived from the step on resume, so a run can resume with another number of ranks.
            rank_seed = derived_seed(cfg.seed, dist.rank, state.global_step)
            seed_everything(rank_seed, cfg.torch_deterministic, dev)
            say(f"Distributed: {dist.world_size} processes, {cfg.env.num_envs} envs each")
        if frozen:
            say(f"Frozen: {', '.join(frozen)}")
        say(_start_summary(cfg, agent, threads, dist.world_size, state.global_step))

        # The directory is created, locked and cleared only now: a start-up error above leaves it as it
        # was (or absent), and a failed resume leaves the run's own config.yaml in place.
        resumed_id = saved.get("run_id") if saved is not None else None
        claimed, notes = rundir.claim(run_dir, start, resumed_id) if main else (None, [])
        for note in notes:
            say(note)
        mirror = None  # first: a W&B that cannot start (not logged in) leaves no config.yaml behind
        if cfg.log.wandb and main:
            from auxrl.tracking import WandbMirror

            mirror = WandbMirror(cfg.log, run_dir, to_dict(cfg), resumed=saved is not None)
        if main:
            save_config(cfg, run_dir / "config.yaml")
        # Events up to the checkpoint step are kept; later ones (written before a crash) are purged.
        purge = state.global_step + 1 if saved else None
        logger = Logger(run_dir, cfg.log.flush_secs, purge, mirror=mirror) if main else NullLogger()
        if saved is None:
            logger.text("config", "```\n" + yaml.safe_dump(to_dict(cfg), sort_keys=False) + "\n```")
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

    def save() -> None:
        extra = {}
        if dist.enabled:  # every rank calls this; rank 0 writes
            ranks = dist.gather([(weights_checksum(agent), session.local_episodes)])
            checksums = [c for c, _ in ranks]
            if len(set(checksums)) > 1:
                raise RuntimeError(f"The ranks' weights differ (checksums {checksums}): not saving.")
            extra["distributed"] = {
                "world_size": dist.world_size,
                "checksums": checksums,
                "episodes_per_rank": [n for _, n in ranks],
            }
        if not main:
            return
        logger.flush()  # every event up to this step is on disk before the checkpoint says so
        checkpoint.save(
            run_dir,
            {
                "model": agent.state_dict(),
                "optimizer": optimizer.state_dict(),
                "state": vars(state).copy(),
                "rng": checkpoint.rng_state(dev),
                "balancer": balancer.state_dict(),
                "aux_rng": session.aux.rng_state() if session.aux else None,
                "aux_minibatches_done": session.aux.minibatches_done if session.aux else 0,
                "config": to_dict(cfg),
                "spaces": [to_plain(space) for space in spaces],
                "normalization": norm_stats.state_dict(),
                **extra,
            },
            state.global_step,
            cfg.log.keep_checkpoints,
            run_id=claimed.run_id,
        )

    session = _Session(
        agent,
        optimizer,
        trainable,
        state,
        logger,
        bar,
        dev,
        bf16,
        save,
        balancer,
        next_checkpoint=_next_multiple(state.global_step, cfg.log.checkpoint_every),
        resume_aux_rng=saved.get("aux_rng") if saved is not None and not dist.enabled else None,
        resume_aux_minibatches=saved.get("aux_minibatches_done", 0) if saved is not None else 0,
        dist=dist,
        norm_stats=norm_stats,
    )
    envs: VecEnv | None = first_envs
    # Several processes stop on Ctrl-C at once: their ranks may be inside different collectives.
    stop = session.stop = StopSignals(bar.log, enabled=not dist.enabled).install()
    finished = False
    try:
        while state.stage < len(stages) and state.global_step < cfg.ppo.total_steps:
            stage = stages[state.stage]
            if envs is None:
                envs = make_envs(stage.cfg.env, stats=norm_stats)
            check_spaces(spaces, envs, stage)
            bar.log(f"Stage {stage.index} ({stage.name}): {stage.cfg.env.id}, {stage.cfg.env.num_envs} envs")
            reason = _run_stage(cfg, stage, envs, session)
            envs.close()
            envs = None
            if reason is None:
                break  # total_steps reached
            bar.log(f"Stage {stage.index} ({stage.name}) ended at step {state.global_step:,}: {reason}")
            state.stage += 1
            state.stage_start_step = state.global_step
            if state.stage < len(stages):  # after the last stage they stay: the run's recent return
                state.stage_returns = []
        save()
        finished = True
    except KeyboardInterrupt as err:
        at = f"at env step {state.global_step:,}"
        if dist.enabled or stop.forced:  # the last checkpoint resumes
            bar.log(f"Stopped {at} without saving; continue with --resume {run_dir}")
            raise
        if state.global_step == session.start_step:  # nothing trained since the start: keep it so
            how = f"continue with --resume {run_dir}" if saved else "run the same command to start again"
            bar.log(f"Stopped {at} before the first update: nothing to save; {how}")
            raise
        if isinstance(err, StopRequested):  # at a safe point: whole updates only
            bar.log(f"Stopped after update {state.update} {at}: saving a checkpoint")
        else:  # raised by code (no signal handler in this thread)
            bar.log(f"Interrupted in update {state.update + 1} {at}: saving a checkpoint")
        save()  # stopping by hand loses nothing: resume with --resume
        bar.log(f"Saved a checkpoint at step {state.global_step:,}; continue with --resume {run_dir}")
        raise
    finally:
        stop.restore()
        if envs is not None:
            try:
                envs.close()
            except (EOFError, OSError):  # workers already ended by the signal that stopped the run
                if stop.signum is None:
                    raise
        bar.close()
        logger.close()
        if claimed is not None:
            claimed.release()
        dist.close(barrier=finished)
    recent = state.stage_returns[-cfg.log.return_window :]
    return TrainResult(
        run_dir,
        state.global_step,
        state.stage,
        state.episodes,
        float(np.mean(recent)) if recent else None,
        state.best_recent_return,
    )


def _silent(*args: object, **kwargs: object) -> None:
    """``print`` for ``verbose=False``."""


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


def _next_multiple(step: int, every: int) -> int:
    return (step // every + 1) * every if every > 0 else math.inf  # type: ignore[return-value]


@dataclass
class _Session:
    """The run-wide pieces every stage works with."""

    agent: Agent
    optimizer: torch.optim.Optimizer
    trainable: list[nn.Parameter]
    state: TrainState
    logger: Logger
    bar: Progress
    device: torch.device
    bf16: bool
    save: Callable[[], None]
    balancer: Balancer
    next_checkpoint: int
    resume_aux_rng: torch.Tensor | None = None  # the aux sampler's state in the resumed stage
    resume_aux_minibatches: int = 0  # minibatches the resumed stage has run (aux.every counts them)
    aux: AuxTasks | None = None  # the current stage's tasks
    dist: Dist = field(default_factory=Dist)
    stop: StopSignals = field(default_factory=lambda: StopSignals(print, enabled=False))
    norm_stats: NormStats = field(default_factory=NormStats)
    local_episodes: int = 0  # episodes this process played (all ranks': state.episodes)
    start_time: float = field(default_factory=time.monotonic)
    start_step: int = field(init=False)

    def __post_init__(self) -> None:
        self.start_step = self.state.global_step


def _run_stage(cfg: Config, stage: Stage, envs: VecEnv, session: _Session) -> str | None:
    """Train one stage; returns why it ended ("budget", "threshold"), None at total_steps."""
    agent, optimizer, state, logger, bar = (
        session.agent,
        session.optimizer,
        session.state,
        session.logger,
        session.bar,
    )
    dev, bf16 = session.device, session.bf16
    scfg = stage.cfg
    obs_space = envs.single_observation_space
    storage = RolloutStorage(
        scfg.ppo.num_steps,
        envs.num_envs,
        tuple(obs_space.shape),
        torch.uint8 if obs_space.dtype == np.uint8 else torch.float32,
        tuple(envs.single_action_space.shape),
        torch.long if isinstance(envs.single_action_space, gym.spaces.Discrete) else torch.float32,
        dev,
        num_labels=len(envs.label_names),
    )
    dist = session.dist
    # Several processes: a stream per rank, re-derived from the step on resume (see distributed.py).
    offset = 1000 * dist.rank + state.global_step if dist.enabled else 0
    aux_seed = derived_seed(cfg.seed, stage.index, offset)
    warn = None if dist.is_main else _silent  # several processes: one says it
    aux = AuxTasks(stage_tasks(agent, stage), scfg.aux, storage, aux_seed, env_id=scfg.env.id, warn=warn)
    session.aux = aux
    session.balancer.cfg = scfg.aux.balance  # a stage may change the method (its state carries over)
    aux.minibatches_done, session.resume_aux_minibatches = session.resume_aux_minibatches, 0
    if session.resume_aux_rng is not None:  # resumed mid-stage: continue the same sample stream
        if not aux.set_rng_state(session.resume_aux_rng):
            warnings.warn(
                "The aux sampler's saved state is from another device: it starts afresh.", stacklevel=1
            )
        session.resume_aux_rng = None
    if stage.index > 0 and state.global_step == state.stage_start_step:
        # Tasks that start in this stage have not seen the torso move: sync their targets first.
        before = set(enabled_tasks(plan_stages(cfg)[stage.index - 1].cfg.aux))
        for name, task in aux.tasks.items():
            if name not in before:
                task.on_torso_loaded()
    # A fresh env per (re)start: resumed runs start new episodes, counted from the saved step.
    # Env j of rank r is seeded with seed + r * num_envs + j (plus the stage and step offsets).
    reset_seed = derived_seed(cfg.seed, 1000 * stage.index, state.global_step, dist.rank * envs.num_envs)
    storage.next_obs.copy_(torch.from_numpy(envs.reset(seed=reset_seed)))
    if storage.next_labels is not None:
        storage.next_labels.copy_(torch.from_numpy(envs.reset_labels))
    window = cfg.log.return_window
    finished: list[tuple[float, float, int]] = []  # (return, length, rollout step) of this process

    def on_episodes(returns: np.ndarray, lengths: np.ndarray, steps_taken: int) -> None:
        t = steps_taken // storage.num_envs  # rollout steps done when these games ended
        finished.extend((float(r), float(n), t) for r, n in zip(returns, lengths, strict=True))
        session.local_episodes += len(returns)

    def record_episodes() -> None:
        """Log every process's finished games (gathered to every rank, so that promotion and
        the recent return agree everywhere) at the env step at which each one ended."""
        games = sorted(dist.gather(finished), key=lambda game: game[2])  # by step, then rank
        finished.clear()
        per_step = storage.num_envs * dist.world_size  # env steps of all ranks per rollout step
        for i, (ret, length, t) in enumerate(games):
            step = state.global_step + t * per_step
            logger.scalar("charts/episodic_return", ret, step)
            logger.scalar("charts/episodic_length", length, step)
            if len(cfg.curriculum.stages):
                logger.scalar(f"curriculum/{stage.name}/episodic_return", ret, step)
            state.stage_returns.append(ret)
            state.episodes += 1
            if i + 1 == len(games) or games[i + 1][2] != t:  # after each step's games, as they ended
                state.stage_returns[:] = state.stage_returns[-max(window, stage.window) :]
                if len(state.stage_returns) >= window:
                    recent = float(np.mean(state.stage_returns[-window:]))
                    best = state.best_recent_return
                    state.best_recent_return = recent if best is None else max(recent, best)

    if state.global_step == state.stage_start_step and cfg.curriculum.stages:  # a stage starts now
        logger.scalar("curriculum/stage", state.stage, state.global_step)
    while state.global_step < cfg.ppo.total_steps:
        session.stop.check()  # Ctrl-C / SIGTERM: stop here, between whole updates
        reason = stage.finished(state.global_step - state.stage_start_step, state.stage_returns)
        if reason is not None:
            return reason
        # Linear LR annealing over the whole run (PPO implementation detail #4).
        lr = (
            scfg.ppo.lr * (1.0 - state.global_step / cfg.ppo.total_steps)
            if scfg.ppo.anneal_lr
            else scfg.ppo.lr
        )
        for group in optimizer.param_groups:
            group["lr"] = lr

        agent.eval()  # no dropout/batch-norm today, but keep the modes honest for user heads
        try:
            with autocast(bf16, dev):  # the rollout is forward passes only (no_grad)
                collect_rollout(envs, agent, storage, on_episodes)
                with torch.no_grad():
                    next_value = agent.get_value(storage.next_obs).float()
        except (EOFError, OSError) as err:  # an env worker died: of the same SIGTERM (a whole group's)?
            if session.stop.signum is None:
                raise
            raise StopRequested(session.stop.signum) from err
        session.stop.check()  # asked during the rollout: drop it; the state is the last update's
        if dist.enabled:  # observation / reward statistics pooled: every rank normalises alike
            session.norm_stats.sync(dist.gather)
        record_episodes()
        state.global_step += storage.num_steps * storage.num_envs * dist.world_size
        storage.finish(next_value, scfg.ppo.gamma, scfg.ppo.gae_lambda)
        aux.add_rollout(storage)

        agent.train()
        weights = aux.current_weights(state.global_step) if aux else {}
        metrics = ppo_update(
            scfg.ppo,
            scfg.aux,
            agent,
            optimizer,
            storage,
            aux if aux else None,
            weights,
            session.balancer,
            session.trainable,
            state.global_step,
            dist,
            amp=functools.partial(autocast, bf16, dev),  # each minibatch's forward passes only
        )
        if state.update % scfg.aux.diagnostics_every:  # logging throttle for the per-task diagnostics
            metrics = {k: v for k, v in metrics.items() if not k.endswith(("grad_cosine", "ratio", "/scale"))}
        state.update += 1

        metrics["losses/explained_variance"] = explained_variance(
            storage.values, storage.returns, storage.valid
        )
        # One host sync per update for all logged scalars.
        values = dict(zip(metrics, torch.stack([v.float() for v in metrics.values()]).tolist(), strict=True))
        sps = (state.global_step - session.start_step) / max(time.monotonic() - session.start_time, 1e-9)
        values["charts/learning_rate"] = lr
        values["charts/SPS"] = sps
        for name, w in weights.items():
            values[f"aux/{name}/weight"] = w
        logger.scalars(values, state.global_step)
        recent = state.stage_returns[-window:]
        bar.update(state.global_step, sps, float(np.mean(recent)) if recent else None)

        if state.global_step >= session.next_checkpoint:
            session.save()
            session.next_checkpoint = _next_multiple(state.global_step, cfg.log.checkpoint_every)
    return None
