"""The training loop, top to bottom: collect -> GAE -> PPO update (+ weighted aux losses) -> log
-> checkpoint, once per update, for each curriculum stage.

Data flows one way: env (uint8 frames) -> rollout storage on the training device -> torso ->
heads -> named loss terms -> optimizer. Nothing here knows how a particular auxiliary task works.
"""

from __future__ import annotations

import math
import random
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
import yaml
from torch import nn

from auxrl import checkpoint
from auxrl.config import Config, flatten_dotted, save_config, to_dict
from auxrl.curriculum import Stage, plan_stages
from auxrl.envs import VecEnv, make_envs
from auxrl.logger import Logger, Progress
from auxrl.models.agent import Agent, build_agent, freeze, load_pretrained
from auxrl.perf import autocast, check_bf16, try_compile
from auxrl.ppo.loss import explained_variance, ppo_loss
from auxrl.ppo.rollout import RolloutStorage
from auxrl.tasks.base import AuxTask, TaskContext
from auxrl.tasks.combine import AuxTasks, gradient_diagnostics
from auxrl.tasks.registry import enabled_tasks


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: PyTorch sees no CUDA device here. Use --device cpu or auto.")
    return torch.device(name)


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = deterministic


@dataclass
class TrainState:
    """Everything besides the weights that a resumed run needs."""

    global_step: int = 0
    update: int = 0
    stage: int = 0
    stage_start_step: int = 0
    stage_returns: list[float] = field(default_factory=list)  # returns of the current stage
    best_recent_return: float | None = None
    episodes: int = 0


@dataclass
class TrainResult:
    run_dir: Path
    global_step: int
    stage: int
    episodes: int
    recent_return: float | None
    best_recent_return: float | None


# --------------------------------------------------------------------------------------------
# Building the model
# --------------------------------------------------------------------------------------------


def build_model(cfg: Config, stages: list[Stage], obs_space: gym.Space, action_space: gym.Space) -> Agent:
    """Torso + PPO heads + every auxiliary task enabled in any stage, each checked against the env."""
    agent = build_agent(cfg.model.torso, cfg.model.hidden_sizes, obs_space, action_space)
    ctx = TaskContext(obs_space, action_space, agent.torso.feature_dim, agent.torso)
    for stage in stages:
        for name, (cls, task_cfg) in enabled_tasks(stage.cfg.aux).items():
            if name in agent.heads:
                continue
            if name in ("policy", "value", "torso"):
                raise ValueError(f"aux.tasks.{name}: {name!r} is reserved; give the task another key.")
            cls.check(ctx)
            agent.heads[name] = cls(task_cfg, ctx)
    return agent


def stage_tasks(agent: Agent, stage: Stage) -> dict[str, AuxTask]:
    return {name: agent.heads[name] for name in enabled_tasks(stage.cfg.aux)}


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


# --------------------------------------------------------------------------------------------
# The two phases of an update
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


def ppo_update(
    cfg: Config,
    agent: Agent,
    optimizer: torch.optim.Optimizer,
    storage: RolloutStorage,
    aux: AuxTasks,
    weights: dict[str, float],
    trainable: list[nn.Parameter],
    diagnose: bool,
) -> dict[str, torch.Tensor]:
    """``update_epochs`` passes of shuffled minibatches; returns mean metrics (device tensors)."""
    p = cfg.ppo
    sums: dict[str, torch.Tensor] = defaultdict(lambda: torch.zeros((), device=storage.device))
    count = 0
    diagnostics: dict[str, torch.Tensor] = {}
    for _epoch in range(p.update_epochs):
        for batch in storage.minibatches(p.num_minibatches):
            dist, new_values, _ = agent(batch.obs)  # one torso pass for policy and value
            loss = ppo_loss(
                p,
                batch,
                agent.policy.log_prob(dist, batch.actions),
                agent.policy.entropy(dist),
                new_values,
            )
            aux_out = aux.losses(agent.torso) if aux else {}
            weighted = {name: weights[name] * out.loss for name, out in aux_out.items()}
            total = loss.total + sum(weighted.values())

            if diagnose and not diagnostics and weighted:
                diagnostics = gradient_diagnostics(loss.total, weighted, list(agent.torso.parameters()))

            optimizer.zero_grad(set_to_none=True)
            total.backward()
            nn.utils.clip_grad_norm_(trainable, p.max_grad_norm)
            optimizer.step()
            if aux:
                aux.after_update()

            count += 1
            terms = {
                "losses/policy_loss": loss.policy,
                "losses/value_loss": loss.value,
                "losses/entropy": loss.entropy,
                "losses/approx_kl": loss.approx_kl,
                "losses/old_approx_kl": loss.old_approx_kl,
                "losses/clipfrac": loss.clipfrac,
                "losses/total": total,
            }
            for name, out in aux_out.items():
                terms[f"aux/{name}/loss"] = out.loss
                for key, value in out.metrics.items():
                    terms[f"aux/{name}/{key}"] = torch.as_tensor(value, device=storage.device)
            for key, value in terms.items():
                sums[key] += value.detach().float()
        if p.target_kl is not None and float(loss.approx_kl) > p.target_kl:
            break  # early stop: the policy moved too far from the one that collected the data
    metrics = {key: value / count for key, value in sums.items()}
    metrics.update({k: v.detach() for k, v in diagnostics.items()})
    return metrics


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


def _resume_mismatch(run_dir: Path, saved: dict, cfg: Config, err: Exception) -> str:
    """Why a checkpoint does not fit the model this config builds, in the user's terms."""

    sections = ("env", "model", "aux")  # the ones that shape the network and its optimizer
    old = {k: v for k, v in flatten_dotted(saved).items() if k.split(".")[0] in sections}
    new = {k: v for k, v in flatten_dotted(to_dict(cfg)).items() if k.split(".")[0] in sections}
    changed = [
        f"    {key}: {old.get(key, '(absent)')} in the checkpoint, {new.get(key, '(absent)')} here"
        for key in sorted(old.keys() | new.keys())
        if old.get(key) != new.get(key)
    ]
    first_line = str(err).strip().splitlines()[0]
    return (
        f"Cannot resume {run_dir}: its checkpoint holds a different model or optimizer than this "
        f"config builds ({first_line}).\n"
        + ("  Config keys that differ:\n" + "\n".join(changed) + "\n" if changed else "")
        + f"Resume with `auxrl train --resume {run_dir}` and no config (it uses the run's saved "
        f"config; overrides then may change training settings such as ppo.total_steps, not the "
        f"model), or train the new config in a fresh --run-dir."
    )


def train(
    cfg: Config,
    run_dir: str | Path,
    device: str = "auto",
    progress: bool = True,
    resume: bool = False,
) -> TrainResult:
    """Train ``cfg`` in ``run_dir`` (TensorBoard events, config.yaml, checkpoints/).

    ``resume=True`` continues from the run directory's latest checkpoint: same step count, same
    TensorBoard curves (events written after that checkpoint are purged), same stage.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    dev = resolve_device(device)
    seed_everything(cfg.seed, cfg.torch_deterministic)
    stages = plan_stages(cfg)
    state = TrainState()
    saved = checkpoint.load(run_dir, dev) if resume else None
    if saved is not None:
        state = TrainState(**saved["state"])

    # The model is built once from the first stage's env and carries over between stages.
    first_envs = make_envs(stages[state.stage].cfg.env)
    spaces = (first_envs.single_observation_space, first_envs.single_action_space)
    agent = build_model(cfg, stages, *spaces).to(dev)
    if cfg.model.init_from and saved is None:
        loaded = load_pretrained(agent, cfg.model.init_from, cfg.model.init_modules)
        for name, head in agent.heads.items():
            if isinstance(head, AuxTask) and name not in loaded:
                head.on_torso_loaded()
        print(f"Loaded {', '.join(loaded)} from {cfg.model.init_from}")
    frozen = freeze(agent, cfg.model.freeze)
    if cfg.perf.compile:
        sample = torch.from_numpy(spaces[0].sample()[None]).to(dev)
        print(f"perf.compile: torso {'compiled' if try_compile(agent.torso, sample) else 'runs eagerly'}")
    bf16 = check_bf16(cfg.perf.bf16, dev)
    trainable = [p for p in agent.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError(
            f"model.freeze={cfg.model.freeze} leaves nothing to train. Unfreeze a head or add an "
            f"auxiliary task to train on the frozen torso."
        )
    optimizer = torch.optim.Adam(trainable, lr=cfg.ppo.lr, eps=cfg.ppo.adam_eps)
    if saved is not None:
        try:
            agent.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
        except (RuntimeError, ValueError) as err:
            raise ValueError(_resume_mismatch(run_dir, saved["config"], cfg, err)) from None
        checkpoint.set_rng_state(saved["rng"])
        print(f"Resumed {run_dir} at step {state.global_step:,} (stage {stages[state.stage].name})")
    if frozen:
        print(f"Frozen: {', '.join(frozen)}")

    # Written only now, so a resume that fails above leaves the run's own config.yaml in place.
    save_config(cfg, run_dir / "config.yaml")

    # Events up to the checkpoint step are kept; later ones (written before a crash) are purged.
    logger = Logger(run_dir, cfg.log.flush_secs, purge_step=state.global_step + 1 if saved else None)
    if saved is None:
        logger.text("config", "```\n" + yaml.safe_dump(to_dict(cfg), sort_keys=False) + "\n```")
    bar = Progress(cfg.ppo.total_steps, state.global_step, progress, cfg.log.print_every_secs)

    def save() -> None:
        checkpoint.save(
            run_dir,
            {
                "model": agent.state_dict(),
                "optimizer": optimizer.state_dict(),
                "state": vars(state).copy(),
                "rng": checkpoint.rng_state(),
                "config": to_dict(cfg),
                "spaces": spaces,
            },
            state.global_step,
            cfg.log.keep_checkpoints,
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
        next_checkpoint=_next_multiple(state.global_step, cfg.log.checkpoint_every),
    )
    envs: VecEnv | None = first_envs
    try:
        while state.stage < len(stages) and state.global_step < cfg.ppo.total_steps:
            stage = stages[state.stage]
            if envs is None:
                envs = make_envs(stage.cfg.env)
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
            state.stage_returns = []
        save()
    except KeyboardInterrupt:
        save()  # stopping by hand loses nothing: resume with --resume
        bar.log(
            f"Interrupted: saved a checkpoint at step {state.global_step:,}; continue with --resume {run_dir}"
        )
        raise
    finally:
        if envs is not None:
            envs.close()
        bar.close()
        logger.close()
    recent = state.stage_returns[-cfg.log.return_window :]
    return TrainResult(
        run_dir,
        state.global_step,
        state.stage,
        state.episodes,
        float(np.mean(recent)) if recent else None,
        state.best_recent_return,
    )


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
    next_checkpoint: int
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
    )
    aux = AuxTasks(stage_tasks(agent, stage), scfg.aux, storage, cfg.seed + stage.index)
    # A fresh env per (re)start: resumed runs start new episodes, counted from the saved step.
    storage.next_obs.copy_(
        torch.from_numpy(envs.reset(seed=cfg.seed + 1000 * stage.index + state.global_step))
    )
    window = cfg.log.return_window

    def on_episodes(returns: np.ndarray, lengths: np.ndarray, steps_taken: int) -> None:
        step = state.global_step + steps_taken  # the env step at which these games ended
        for ret, length in zip(returns, lengths, strict=True):
            logger.scalar("charts/episodic_return", ret, step)
            logger.scalar("charts/episodic_length", length, step)
            if len(cfg.curriculum.stages):
                logger.scalar(f"curriculum/{stage.name}/episodic_return", ret, step)
            state.stage_returns.append(float(ret))
            state.episodes += 1
        state.stage_returns[:] = state.stage_returns[-max(window, stage.window) :]
        if len(state.stage_returns) >= window:
            recent = float(np.mean(state.stage_returns[-window:]))
            state.best_recent_return = max(recent, state.best_recent_return or -math.inf)

    if state.global_step == state.stage_start_step:  # the stage starts now (not a resume)
        logger.scalar("curriculum/stage", state.stage, state.global_step)
    while state.global_step < cfg.ppo.total_steps:
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
        with autocast(bf16, dev):
            collect_rollout(envs, agent, storage, on_episodes)
            with torch.no_grad():
                next_value = agent.value(agent.torso(storage.next_obs)).float()
        state.global_step += storage.num_steps * storage.num_envs
        storage.finish(next_value, scfg.ppo.gamma, scfg.ppo.gae_lambda)
        aux.add_rollout(storage)

        agent.train()
        weights = aux.current_weights(state.global_step) if aux else {}
        diagnose = (
            bool(aux) and scfg.aux.diagnostics_every > 0 and state.update % scfg.aux.diagnostics_every == 0
        )
        with autocast(bf16, dev):
            metrics = ppo_update(scfg, agent, optimizer, storage, aux, weights, session.trainable, diagnose)
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
