"""The training loop, top to bottom: per update, collect -> GAE -> learn -> log -> checkpoint; per
curriculum stage, its envs, rollout storage and auxiliary tasks.

Data flows one way: env (uint8 frames) -> rollout storage on the training device -> torso ->
heads -> named loss terms -> optimizer. Set-up, resume, the checkpoint payload and teardown are
the :class:`~auxrl.run.Run`'s (auxrl/run.py); the update is the learner's (auxrl/learner.py).
Nothing here knows how a particular auxiliary task works.
"""

from __future__ import annotations

import functools
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import gymnasium as gym
import numpy as np
import torch

from auxrl.build import TASK_GROUP, annealed, check_spaces, group_lr, stage_tasks
from auxrl.collect import collect_rollout
from auxrl.config import Config
from auxrl.curriculum import Stage, plan_stages
from auxrl.envs import VecEnv, make_envs
from auxrl.envs.dictobs import transport_space
from auxrl.models.multitask import task_name
from auxrl.perf import autocast, set_torch_threads, torch_threads
from auxrl.ppo.loss import explained_variance
from auxrl.ppo.rollout import RolloutStorage
from auxrl.run import Run, derived_seed, silent
from auxrl.stopping import StopRequested
from auxrl.tasks.combine import AuxTasks
from auxrl.tasks.registry import enabled_tasks

if TYPE_CHECKING:
    from auxrl.inference import TrainedAgent

# Where a per-episode metric <name> is logged, as its mean over every episode of the run so far
# (read back by the study's scoring and benchmarks/crafter_summary.py).
EPISODE_METRIC_TAG = "episode/"


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
        with Run.start(cfg, Path(run_dir), device, progress, resume, overwrite, verbose, threads) as run:
            train_stages(run)
    finally:
        restore_threads()
    state = run.state
    recent = state.stage_returns[-cfg.log.return_window :]
    return TrainResult(
        run.run_dir,
        state.global_step,
        state.stage,
        state.episodes,
        float(np.mean(recent)) if recent else None,
        state.best_recent_return,
    )


def train_stages(run: Run) -> None:
    """Each curriculum stage in turn (one stage without a curriculum), then a final checkpoint."""
    state, stages, bar = run.state, run.stages, run.bar
    while state.stage < len(stages) and state.global_step < run.cfg.ppo.total_steps:
        stage = stages[state.stage]
        if run.envs is None:
            run.envs = make_envs(stage.cfg.env, stats=run.norm_stats)
        check_spaces(run.spaces, run.envs, stage, run.agent.tasks)
        env = stage.cfg.env
        games = ", ".join(env.tasks) if env.tasks else env.id
        per = f" per task ({len(env.tasks) * env.num_envs} in all)" if env.tasks else ""
        bar.log(f"Stage {stage.index} ({stage.name}): {games}, {env.num_envs} envs{per}")
        reason = train_stage(run, stage, run.envs)
        run.envs.close()
        run.envs = None
        if reason is None:
            break  # total_steps reached
        bar.log(f"Stage {stage.index} ({stage.name}) ended at step {state.global_step:,}: {reason}")
        state.stage += 1
        state.stage_start_step = state.global_step
        if state.stage < len(stages):  # after the last stage they stay: the run's recent return
            state.stage_returns = []
    run.save()
    run.finished = True


# --------------------------------------------------------------------------------------------
# One stage
# --------------------------------------------------------------------------------------------


def rollout_storage(scfg: Config, envs: VecEnv, device: torch.device) -> RolloutStorage:
    """The rollout storage of a stage's envs (``ppo.num_steps`` x ``env.num_envs``) on ``device``."""
    obs_space = transport_space(envs.single_observation_space)  # a dict: its packed uint8 rows
    return RolloutStorage(
        scfg.ppo.num_steps,
        envs.num_envs,
        tuple(obs_space.shape),
        torch.uint8 if obs_space.dtype == np.uint8 else torch.float32,
        tuple(envs.single_action_space.shape),
        torch.long if isinstance(envs.single_action_space, gym.spaces.Discrete) else torch.float32,
        device,
        num_labels=len(envs.label_names),
    )


def _env_tasks(run: Run, stage: Stage, envs: VecEnv) -> np.ndarray:
    """The index of the heads each env's task uses (all 0 in a task-blind model)."""
    if not run.agent.task_aware:
        return np.zeros(envs.num_envs, dtype=np.int64)
    names = run.agent.task_names
    ids = getattr(envs, "task_env_ids", None) or [stage.cfg.env.id]
    local = getattr(envs, "task_ids", np.zeros(envs.num_envs, dtype=np.int64))
    return np.array([names.index(task_name(env_id)) for env_id in ids], dtype=np.int64)[local]


def _stage_tasks(run: Run, stage: Stage, storage: RolloutStorage) -> AuxTasks:
    """The stage's auxiliary tasks on its storage; a resumed stage continues their sample stream."""
    cfg, state, dist = run.cfg, run.state, run.dist
    # Several processes: a stream per rank, re-derived from the step on resume (see distributed.py).
    offset = 1000 * dist.rank + state.global_step if dist.enabled else 0
    warn = None if dist.is_main else silent  # several processes: one says it
    aux = AuxTasks(
        stage_tasks(run.agent, stage),
        stage.cfg.aux,
        storage,
        derived_seed(cfg.seed, stage.index, offset),
        env_id=stage.cfg.env.id,
        warn=warn,
    )
    run.learner.balancer.cfg = stage.cfg.aux.balance  # a stage may change the method (its state carries over)
    aux.minibatches_done, run.resume_aux_minibatches = run.resume_aux_minibatches, 0
    if run.resume_aux_rng is not None:  # resumed mid-stage: continue the same sample stream
        if not aux.set_rng_state(run.resume_aux_rng):
            warnings.warn(
                "The aux sampler's saved state is from another device: it starts afresh.", stacklevel=1
            )
        run.resume_aux_rng = None
    if stage.index > 0 and state.global_step == state.stage_start_step:
        # Tasks that start in this stage have not seen the torso move: sync their targets first.
        before = set(enabled_tasks(plan_stages(cfg)[stage.index - 1].cfg.aux))
        for name, task in aux.tasks.items():
            if name not in before:
                task.on_torso_loaded()
    return aux


class _Episodes:
    """Finished games: gathered from every process, logged at the env step each one ended, and
    kept for the curriculum's promotion and the recent return."""

    def __init__(
        self,
        run: Run,
        stage: Stage,
        env_tasks: np.ndarray,
        summarize: Callable[[dict[str, float]], dict[str, float]],
    ) -> None:
        self.run, self.stage, self.num_envs = run, stage, len(env_tasks)
        self.summarize = summarize  # the env's scores from mean episode metrics (Crafter's score)
        self.metrics: list[dict[str, float]] = []  # this process's finished games' metrics
        self.env_tasks = env_tasks  # the task index of each env
        # Multi-task runs also log each task's games under charts/<task>/.
        self.task_names = run.agent.task_names if len(run.agent.tasks) > 1 else []
        self.finished: list[tuple[float, float, int, int]] = []  # (return, length, rollout step, task)

    def __call__(
        self,
        returns: np.ndarray,
        lengths: np.ndarray,
        steps_taken: int,
        first_env: int = 0,
        metrics: dict[str, np.ndarray] | None = None,
    ) -> None:
        """``collect_rollout``'s ``on_episodes``: games of this process as they end."""
        t = steps_taken // self.num_envs  # rollout steps done when these games ended
        task = int(self.env_tasks[first_env])  # a group of envs plays one task
        self.finished.extend((float(r), float(n), t, task) for r, n in zip(returns, lengths, strict=True))
        self.run.local_episodes += len(returns)
        for name, values in (metrics or {}).items():
            self.metrics.extend({name: float(v)} for v in values if np.isfinite(v))

    def record(self) -> None:
        """Log every process's finished games (gathered to every rank, so that promotion and
        the recent return agree everywhere) at the env step at which each one ended."""
        run, state, stage = self.run, self.run.state, self.stage
        window = run.cfg.log.return_window
        games = sorted(run.dist.gather(self.finished), key=lambda game: game[2])  # by step, then rank
        self.finished.clear()
        per_step = self.num_envs * run.dist.world_size  # env steps of all ranks per rollout step
        for i, (ret, length, t, task) in enumerate(games):
            step = state.global_step + t * per_step
            run.logger.scalar("charts/episodic_return", ret, step)
            run.logger.scalar("charts/episodic_length", length, step)
            if self.task_names:
                run.logger.scalar(f"charts/{self.task_names[task]}/episodic_return", ret, step)
                run.logger.scalar(f"charts/{self.task_names[task]}/episodic_length", length, step)
            if len(run.cfg.curriculum.stages):
                run.logger.scalar(f"curriculum/{stage.name}/episodic_return", ret, step)
            state.stage_returns.append(ret)
            state.episodes += 1
            if i + 1 == len(games) or games[i + 1][2] != t:  # after each step's games, as they ended
                state.stage_returns[:] = state.stage_returns[-max(window, stage.window) :]
                if len(state.stage_returns) >= window:
                    recent = float(np.mean(state.stage_returns[-window:]))
                    best = state.best_recent_return
                    state.best_recent_return = recent if best is None else max(recent, best)
        self._record_metrics()

    def _record_metrics(self) -> None:
        """Per-episode metrics over every episode of the run so far (``episode/<name>``, e.g.
        Crafter's success rates) and the env's scores from them (e.g. ``crafter/score``)."""
        run, state = self.run, self.run.state
        new = run.dist.gather(self.metrics)  # every rank's, in rank order
        self.metrics = []
        if not new:
            return
        for metric in new:
            for name, value in metric.items():
                total = state.episode_metrics.setdefault(name, [0.0, 0.0])
                total[0] += value
                total[1] += 1
        means = {name: s / n for name, (s, n) in state.episode_metrics.items() if n}
        tags = {f"{EPISODE_METRIC_TAG}{k}": v for k, v in means.items()}
        for name, mean in {**tags, **self.summarize(means)}.items():
            run.logger.scalar(name, mean, state.global_step)


def train_stage(run: Run, stage: Stage, envs: VecEnv) -> str | None:
    """Train one stage; returns why it ended ("budget", "threshold"), None at total_steps."""
    cfg, scfg, state, agent, dev = run.cfg, stage.cfg, run.state, run.agent, run.device
    storage = rollout_storage(scfg, envs, dev)
    env_tasks = _env_tasks(run, stage, envs)
    storage.task.copy_(torch.from_numpy(env_tasks))
    aux = run.aux = _stage_tasks(run, stage, storage)
    episodes = _Episodes(run, stage, env_tasks, envs.summarize_metrics)
    # A fresh env per (re)start: resumed runs start new episodes, counted from the saved step.
    # Env j of rank r is seeded with seed + r * num_envs + j (plus the stage and step offsets).
    reset_seed = derived_seed(cfg.seed, 1000 * stage.index, state.global_step, run.dist.rank * envs.num_envs)
    storage.next_obs.copy_(torch.from_numpy(envs.reset(seed=reset_seed)))
    if storage.next_labels is not None:
        storage.next_labels.copy_(torch.from_numpy(envs.reset_labels))
    if state.global_step == state.stage_start_step and cfg.curriculum.stages:  # a stage starts now
        run.logger.scalar("curriculum/stage", state.stage, state.global_step)

    while state.global_step < cfg.ppo.total_steps:
        run.stop.check()  # Ctrl-C / SIGTERM: stop here, between whole updates
        reason = stage.finished(state.global_step - state.stage_start_step, state.stage_returns)
        if reason is not None:
            return reason
        lrs = _anneal_lr(run, scfg)

        # 1. Collect a rollout with the current policy.
        agent.eval()  # no dropout/batch-norm today, but keep the modes honest for user heads
        try:
            with autocast(run.bf16, dev):  # the rollout is forward passes only (no_grad)
                collect_rollout(envs, agent, storage, episodes)
                with torch.no_grad():
                    task = storage.task if agent.task_aware else None
                    next_value = agent.get_value(storage.next_obs, task).float()
        except (EOFError, OSError) as err:  # an env worker died: of the same SIGTERM (a whole group's)?
            if run.stop.signum is None:
                raise
            raise StopRequested(run.stop.signum) from err
        run.stop.check()  # asked during the rollout: drop it; the state is the last update's
        if run.dist.enabled:  # observation / reward statistics pooled: every rank normalises alike
            run.norm_stats.sync(run.dist.gather)
        episodes.record()
        state.global_step += storage.num_steps * storage.num_envs * run.dist.world_size

        # 2. Advantages and returns (GAE); the tasks' replay takes the rollout.
        storage.finish(next_value, scfg.ppo.gamma, scfg.ppo.gae_lambda)
        aux.add_rollout(storage)

        # 3. Learn: PPO and the auxiliary objectives, balanced, one optimizer.
        agent.train()
        weights = aux.current_weights(state.global_step) if aux else {}
        metrics = run.learner.update(
            storage, scfg.ppo, scfg.aux, aux if aux else None, weights, state.global_step
        )
        state.update += 1

        # 4. Log, 5. checkpoint.
        _log_update(run, scfg, storage, metrics, weights, lrs)
        run.save_if_due()
    return None


def _anneal_lr(run: Run, scfg: Config) -> dict[str, float]:
    """Each parameter group's learning rate at this step: linear annealing over the whole run (PPO
    implementation detail #4), a task's own group by its ``aux.tasks.NAME.lr`` / ``anneal_lr``
    (build.param_groups). Returns the rates to log: ``charts/learning_rate`` (PPO's) and
    ``aux/NAME/learning_rate`` per task group."""
    step, total = run.state.global_step, run.cfg.ppo.total_steps
    rates = {"charts/learning_rate": annealed(scfg.ppo.lr, scfg.ppo.anneal_lr, step, total)}
    for group in run.learner.optimizer.param_groups:
        task = group.get(TASK_GROUP)
        group["lr"] = (
            rates["charts/learning_rate"] if task is None else annealed(*group_lr(scfg, task), step, total)
        )
        if task is not None:
            rates[f"aux/{task}/learning_rate"] = group["lr"]
    return rates


def _log_update(
    run: Run,
    scfg: Config,
    storage: RolloutStorage,
    metrics: dict[str, torch.Tensor],
    weights: dict[str, float],
    lrs: dict[str, float],
) -> None:
    state = run.state
    if (state.update - 1) % scfg.aux.diagnostics_every:  # logging throttle for the per-task diagnostics
        metrics = {k: v for k, v in metrics.items() if not k.endswith(("grad_cosine", "ratio", "/scale"))}
    metrics["losses/explained_variance"] = explained_variance(storage.values, storage.returns, storage.valid)
    # One host sync per update for all logged scalars.
    values = dict(zip(metrics, torch.stack([v.float() for v in metrics.values()]).tolist(), strict=True))
    sps = (state.global_step - run.start_step) / max(time.monotonic() - run.start_time, 1e-9)
    values.update(lrs)  # charts/learning_rate, aux/NAME/learning_rate
    values["charts/SPS"] = sps
    for name, w in weights.items():
        values[f"aux/{name}/weight"] = w
    run.logger.scalars(values, state.global_step)
    recent = state.stage_returns[-run.cfg.log.return_window :]
    run.bar.update(state.global_step, sps, float(np.mean(recent)) if recent else None)
