"""Building what a run trains: the model for a config (torso, PPO heads, the auxiliary tasks of
every stage), checked against the envs before anything is written, and its optimizer."""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any

import gymnasium as gym
import torch
from torch import nn

from auxrl.config import AuxConfig, AuxTaskConfig, Config, ConfigError
from auxrl.curriculum import Stage
from auxrl.envs import VecEnv, make_envs
from auxrl.envs.labels import label_spec
from auxrl.models.agent import Agent, build_agent
from auxrl.models.multitask import TaskSpec, popart_enabled, task_name
from auxrl.tasks.base import AuxTask, PPOHeads, TaskContext
from auxrl.tasks.registry import enabled_tasks, resolve

# An optimizer parameter group's key naming the task whose head it holds (aux.tasks.NAME.lr).
TASK_GROUP = "aux_task"


def make_optimizer(
    params: list[nn.Parameter] | list[dict[str, Any]], lr: float, eps: float
) -> torch.optim.Optimizer:
    """Adam with its fused kernel where this torch and device have one (one kernel for every
    parameter: ~5x faster steps on CPU than the default loop), else the multi-tensor one.
    Same update rule either way, up to float rounding; checkpoints load into both. ``params``:
    the parameters, or :func:`param_groups`' groups (``lr``: the default of a group without one)."""
    try:
        return torch.optim.Adam(params, lr=lr, eps=eps, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(params, lr=lr, eps=eps, foreach=True)


def own_lr_tasks(stages: list[Stage]) -> list[str]:
    """The tasks that set ``aux.tasks.NAME.lr`` or ``anneal_lr`` in any stage, in order of appearance:
    each gets a parameter group of its own."""
    names: dict[str, None] = {}
    for stage in stages:
        for name, spec in stage.cfg.aux.tasks.items():
            if spec.lr is not None or spec.anneal_lr is not None:
                names[name] = None
    return list(names)


def group_lr(cfg: Config, task: str | None) -> tuple[float, bool]:
    """(learning rate, annealed?) of a parameter group under ``cfg`` (a stage's config): ``ppo.lr``
    and ``ppo.anneal_lr``, or for the group of ``task``'s head the task's own where it sets them."""
    spec = cfg.aux.tasks.get(task) if task is not None else None
    if spec is None:
        return cfg.ppo.lr, cfg.ppo.anneal_lr
    return (
        spec.lr if spec.lr is not None else cfg.ppo.lr,
        spec.anneal_lr if spec.anneal_lr is not None else cfg.ppo.anneal_lr,
    )


def annealed(lr: float, anneal: bool, step: int, total: int) -> float:
    """Linear LR annealing to 0 over the whole run (PPO implementation detail #4), or ``lr``."""
    return lr * (1.0 - step / total) if anneal else lr


def param_groups(
    agent: nn.Module, trainable: list[nn.Parameter], stages: list[Stage]
) -> list[nn.Parameter] | list[dict[str, Any]]:
    """The optimizer's parameters. Where no task sets ``aux.tasks.NAME.lr`` / ``anneal_lr``:
    ``trainable`` itself, one group, exactly as before those keys existed (same group, same order,
    so fixed-seed runs and older checkpoints are unchanged). Otherwise a first group of every other
    trainable parameter, in the same order, then one group per such task (:func:`own_lr_tasks`)
    with its head's own parameters, tagged ``TASK_GROUP``, at its first stage's rate. A parameter
    a task shares with the agent (the torso, PPO's heads) stays in the first group."""
    tasks = own_lr_tasks(stages)
    if not tasks:
        return trainable
    owner: dict[int, str] = {}
    for key, param in agent.named_parameters():  # each once, under its first owner: torso before task
        parts = key.split(".")
        if len(parts) > 2 and parts[0] == "heads" and parts[1] in tasks:
            owner[id(param)] = parts[1]
    groups: list[dict[str, Any]] = [{"params": [p for p in trainable if id(p) not in owner]}]
    for name in tasks:
        lr = group_lr(stages[0].cfg, name)[0]
        groups.append(
            {"params": [p for p in trainable if owner.get(id(p)) == name], "lr": lr, TASK_GROUP: name}
        )
    return [group for group in groups if group["params"]]


def check_param_groups(optimizer: torch.optim.Optimizer, saved: dict[str, Any]) -> None:
    """A ValueError when a checkpoint's optimizer state (``saved``) has other parameter groups than
    ``optimizer``: loading it would give one group's Adam moments to another's parameters."""
    mine = [group.get(TASK_GROUP) for group in optimizer.param_groups]
    theirs = [group.get(TASK_GROUP) for group in saved.get("param_groups", [])]
    if mine != theirs:
        describe = lambda tags: ", ".join(t or "the rest" for t in tags) or "none"  # noqa: E731
        raise ValueError(
            f"its optimizer's parameter groups are [{describe(theirs)}], this config's [{describe(mine)}]: "
            f"aux.tasks.NAME.lr / anneal_lr give a task's head a group of its own, set or unset them as "
            f"the run had them"
        )


def task_specs(
    cfg: Config, stages: list[Stage], envs: VecEnv | None = None, envs_stage: int = 0
) -> list[TaskSpec]:
    """The model's tasks: every env of ``env.tasks`` in any stage (each stage's ``env.id`` where a
    stage has no tasks), in order of appearance, with its action space (from ``envs``, the envs of
    stage ``envs_stage``, where they have it, else from one probe env). Empty: a task-blind model
    (one task, no PopArt)."""
    multi = any(stage.cfg.env.tasks for stage in stages)
    popart = cfg.model.popart if cfg.model.popart is not None else multi
    if not multi and not popart:
        return []
    known: dict[str, gym.Space] = {}
    if envs is not None:
        env_cfg = stages[envs_stage].cfg.env
        ids = getattr(envs, "task_env_ids", None) or [env_cfg.id]
        spaces = getattr(envs, "task_action_spaces", None) or [envs.single_action_space]
        known.update(zip(ids, spaces, strict=True))
    specs: dict[str, TaskSpec] = {}
    for stage in stages:
        for env_id in stage.cfg.env.tasks or [stage.cfg.env.id]:
            name = task_name(env_id)
            if name in specs:
                if specs[name].env_id != env_id:
                    raise ValueError(
                        f"env.tasks: {specs[name].env_id} and {env_id} would share the task name {name!r} "
                        f"(its heads and logs); train one of them."
                    )
                continue
            if env_id not in known:
                probe = stage.cfg.env.model_copy(
                    update=dict(id=env_id, tasks=[], num_envs=1, groups=1, vector_mode="sync")
                )
                with make_envs(probe) as one:
                    known[env_id] = one.single_action_space
            specs[name] = TaskSpec(name, env_id, known[env_id])
    return list(specs.values())


def build_model(
    cfg: Config,
    stages: list[Stage],
    obs_space: gym.Space,
    action_space: gym.Space,
    tasks: list[TaskSpec] | None = None,
) -> Agent:
    """Torso + PPO heads (per task with ``tasks``, see :func:`task_specs`) + every auxiliary task
    enabled in any stage, each checked against the env."""
    agent = build_agent(
        cfg.model.torso,
        cfg.model.hidden_sizes,
        obs_space,
        action_space,
        cfg.model.separate_value,
        tasks=tasks,
        popart=bool(tasks) and popart_enabled(cfg.model.popart, len(tasks)),
        popart_beta=cfg.model.popart_beta,
    )
    heads = PPOHeads(agent.policy, agent.value)  # for tasks that train them (augment_consistency)
    ctx = TaskContext(
        obs_space,
        action_space,
        agent.torso.feature_dim,
        agent.torso,
        ppo_heads=heads,
        image_key=cfg.aux.image_key,
    )
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
    common = [name for name in AuxTaskConfig.model_fields if name != "params"]
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
            length, steps = task.needs.span, stage.cfg.ppo.num_steps
            if length > steps:
                raise ValueError(
                    f"aux.tasks.{name} needs windows of {length} steps, more than a rollout holds "
                    f"(ppo.num_steps={steps}{f', stage {stage.name!r}' if len(stages) > 1 else ''}): "
                    f"shorten the task's window (its horizon / n_steps) or raise ppo.num_steps."
                )


def check_spaces(
    agent_env: tuple[gym.Space, gym.Space], envs: VecEnv, stage: Stage, tasks: list[TaskSpec] | None = None
) -> None:
    obs_space, action_space = agent_env
    if tasks:  # per-task heads: each task's env against its own policy head
        own = {t.env_id: t.action_space for t in tasks}
        ids = getattr(envs, "task_env_ids", None) or [stage.cfg.env.id]
        spaces = getattr(envs, "task_action_spaces", None) or [envs.single_action_space]
        for env_id, space in zip(ids, spaces, strict=True):
            if own.get(env_id) != space:
                raise ValueError(
                    f"Stage {stage.name!r}: {env_id} has action space {space}, but its policy head was "
                    f"built for {own.get(env_id)}."
                )
    elif envs.single_action_space != action_space:
        raise ValueError(
            f"Stage {stage.name!r} ({stage.cfg.env.id}) has action space "
            f"{envs.single_action_space}, but the policy head was built for {action_space}. For a "
            f"multi-game Atari curriculum set env.full_action_space=true so every game uses the "
            f"same 18 actions."
        )
    theirs = envs.single_observation_space
    mismatch = (
        theirs != obs_space  # a dict's keys, shapes and dtypes
        if isinstance(obs_space, gym.spaces.Dict) or isinstance(theirs, gym.spaces.Dict)
        else theirs.shape != obs_space.shape
    )
    if mismatch:
        described = lambda s: s if isinstance(s, gym.spaces.Dict) else f"shape {s.shape}"  # noqa: E731
        raise ValueError(
            f"Stage {stage.name!r}: observations of {described(theirs)} do not fit the torso built for "
            f"{described(obs_space)}."
        )


def check_stage_spaces(
    agent_env: tuple[gym.Space, gym.Space], stages: list[Stage], tasks: list[TaskSpec] | None = None
) -> None:
    """Check every later stage's env against the model before training (one env copy each)."""
    probed: list = []
    for stage in stages:
        probe = stage.cfg.env.model_copy(update=dict(num_envs=1, groups=1, vector_mode="sync"))
        if probe not in probed:
            probed.append(probe)
            with make_envs(probe) as envs:
                check_spaces(agent_env, envs, stage, tasks)
