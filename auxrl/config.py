"""Typed run configuration: pydantic models, YAML loading, dotted overrides and validation.

A run is described by one :class:`Config`. It is built from a YAML file (a path, or the name of
a config shipped with auxrl) plus ``key=value`` overrides such as ``ppo.lr=1e-4``. Every key and
every value type is checked before anything is trained, and errors name the offending key and
the valid choices. Each key's type, default, range and help text live in its field definition
(``auxrl config KEY`` prints them).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Annotated, Any, Literal, Union

import pydantic.dataclasses
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from auxrl.errors import ConfigError

# --------------------------------------------------------------------------------------------
# The configuration tree: each key's type, default, range and help (its docstring) in one place
# --------------------------------------------------------------------------------------------


def _whole_number(value: Any) -> Any:
    # YAML reads 1e6 as a float; a whole float is the integer the user means.
    return int(value) if isinstance(value, float) and value.is_integer() else value


# Strict integers ("5" and true are refused) that take a whole float such as 1e6.
Int = Annotated[int, BeforeValidator(_whole_number)]


class Section(BaseModel):
    """A config section: unknown keys, wrong types and non-finite numbers are errors."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, use_attribute_docstrings=True)


def config_dataclass(cls: type) -> type:
    """A task's ``Config`` or an env family's ``Options`` as a checked dataclass (pydantic's): the
    rules of the config sections (unknown keys, wrong types, ranges given with ``Field``), and
    each field's docstring as its help in ``auxrl config``."""
    return pydantic.dataclasses.dataclass(cls, config=Section.model_config)


class EnvConfig(Section):
    """Which environment to train on and how it is preprocessed.

    Each id belongs to an env family (auxrl/envs/family.py): ``ALE/<Game>-v5`` ids to ``atari``
    (ale-py's native C++ ``AtariVectorEnv``), ids of a registered plugin family to it, every
    other id to ``gymnasium`` (``gymnasium.vector``). The Atari defaults follow CleanRL's
    ``ppo_atari_envpool.py``; the Machado et al. (2018) protocol is ``sticky_actions=0.25
    episodic_life=false full_action_space=true``.
    """

    id: str = "CartPole-v1"
    """The env id, e.g. ALE/Breakout-v5 or CartPole-v1."""
    num_envs: Int = Field(8, ge=1)
    """Envs stepped together (per task with env.tasks)."""
    family: str | None = None
    """The env family: atari, gymnasium, a registered plugin's name or package.module:Class.
    null: the family that takes env.id (atari for ALE/..., a plugin's own ids, else gymnasium)."""
    options: dict[str, Any] = {}
    """The family's own settings, checked against its Options (e.g. {scenario: basic}). {}: none."""
    vector_mode: Literal["sync", "async"] = "sync"
    """gymnasium.vector: sub-environments in this process (sync) or in subprocesses (async)."""
    kwargs: dict[str, Any] = {}
    """Extra keyword arguments for gymnasium.make."""
    frameskip: Int = Field(4, ge=1)
    """Emulator frames per agent step."""
    frame_stack: Int = Field(4, ge=1)
    """Frames stacked per observation."""
    noop_max: Int = Field(30, ge=0)
    """Up to this many no-op actions after a reset."""
    episodic_life: bool = True
    """A lost life ends the episode for the value targets."""
    reward_clip: bool = True
    """Rewards clipped to their sign for training."""
    fire_reset: bool = True
    """Press FIRE after a reset in games that need it."""
    sticky_actions: float = Field(0.0, ge=0, le=1)
    """Probability that the emulator repeats the previous action."""
    full_action_space: bool = False
    """All 18 actions in every game."""
    max_episode_frames: Int = Field(108_000, ge=1)
    """Emulator frames before an episode is truncated."""
    num_threads: Int = Field(0, ge=0)
    """Emulator threads. 0: one per env, capped by the core count."""
    groups: Int = Field(1, ge=1)
    """Envs split into this many groups stepped in turn: the policy acts for one group while the
    others' emulators run. 1: step all envs together."""
    mode: Int | None = None
    """ALE game mode. null: the game's default."""
    difficulty: Int | None = None
    """ALE difficulty. null: the game's default."""
    normalize_obs: bool = False
    """Running mean/std normalisation of vector observations, clipped to +-clip_obs (saved in
    checkpoints and used by eval; SB3's VecNormalize)."""
    normalize_reward: bool = False
    """Rewards scaled by the running std of the discounted return, clipped to +-clip_reward
    (training only)."""
    clip_obs: float = Field(10.0, gt=0)
    """Bound of the normalised observations."""
    clip_reward: float = Field(10.0, gt=0)
    """Bound of the scaled rewards."""
    labels: list[str] = []
    """State labels per step for auxiliary tasks (state_prediction; auxrl/envs/labels.py): ram (the
    game's AtariARI RAM variables; Atari then runs through gymnasium's slower ALE env) and/or
    info:KEY (a numeric entry of the env's info dict). []: none, no cost."""
    tasks: list[str] = []
    """Multi-task training: several env ids at once (e.g. [ALE/Pong-v5, ALE/Breakout-v5]), each
    with env.num_envs envs, one shared torso, a policy and a value head per task. Same observation
    shape and Discrete actions; env.id is then one of them. []: one task."""


class ModelConfig(Section):
    """The shared torso and how it is initialised."""

    torso: Literal["nature_cnn", "impala", "grid_cnn", "mlp"] = "nature_cnn"
    """nature_cnn (84x84 frames), impala (any frames), grid_cnn (MiniGrid's small symbolic grids,
    read as numbers, not brightness), mlp (vectors)."""
    hidden_sizes: list[Annotated[Int, Field(ge=1)]] = [64, 64]
    """mlp torso: hidden layer sizes (the last one is the feature size)."""
    init_from: str | None = None
    """Load the torso and matching heads from an earlier run directory or checkpoint file."""
    init_modules: list[str] | None = None
    """Modules to load from init_from. null: the torso and every same-named, same-shaped head;
    [torso] gives fresh heads on a trained torso."""
    freeze: list[str] = []
    """Modules to freeze: torso, policy, value or an auxiliary task's name."""
    separate_value: bool = False
    """mlp torso only: the value head gets its own MLP (same hidden_sizes) on the observation, as
    in CleanRL's continuous-control agent."""
    popart: bool | None = None
    """PopArt (Hessel et al. 2019): value targets normalised per task, outputs preserved when the
    statistics move, advantages divided by the task's scale. null: on with env.tasks, else off."""
    popart_beta: float = Field(0.01, gt=0, le=1)
    """Step of PopArt's moving averages per update (each update sees a whole rollout)."""


class PPOConfig(Section):
    """PPO hyper-parameters; defaults are CleanRL's Atari settings."""

    total_steps: Int = Field(10_000_000, ge=1)
    """Env steps in all (every env, every curriculum stage)."""
    num_steps: Int = Field(128, ge=1)
    """Steps per env per rollout."""
    lr: float = Field(2.5e-4, gt=0, lt=1)
    """Adam's learning rate."""
    anneal_lr: bool = True
    """Learning rate annealed linearly to 0 over the run."""
    adam_eps: float = Field(1e-5, gt=0)
    """Adam's epsilon."""
    gamma: float = Field(0.99, ge=0, le=1)
    """Discount factor."""
    gae_lambda: float = Field(0.95, ge=0, le=1)
    """GAE's lambda."""
    num_minibatches: Int = Field(4, ge=1)
    """Minibatches per epoch; must divide env.num_envs x ppo.num_steps."""
    update_epochs: Int = Field(4, ge=1)
    """Epochs over each rollout."""
    norm_adv: bool = True
    """Advantages normalised per minibatch."""
    clip_coef: float = Field(0.1, gt=0)
    """PPO's probability-ratio clip."""
    clip_vloss: bool = True
    """Value loss clipped around the old values."""
    ent_coef: float = Field(0.01, ge=0)
    """Entropy bonus weight."""
    vf_coef: float = Field(0.5, ge=0)
    """Value loss weight."""
    max_grad_norm: float = Field(0.5, gt=0)
    """Global gradient-norm clip of PPO's step."""
    target_kl: float | None = Field(None, gt=0)
    """Stop an update's epochs once the approximate KL passes this. null: never."""
    augment: Literal["none", "shift", "shift_intensity"] = "none"
    """RAD (Laskin et al. 2020): augment the minibatch frames PPO's loss sees (image observations):
    shift (+-4 px random shift, replicate padding) or shift_intensity (plus SPR's brightness
    noise). Acting and stored frames stay unaugmented."""
    task_balance: Literal["none", "norm", "pcgrad"] = "none"
    """Multi-task (env.tasks): the tasks' gradients on the shared torso combined as their mean
    (none), each rescaled to the mean of their norms (norm) or with each one's conflicts with the
    others projected out (pcgrad, Yu et al. 2020), then their mean."""


class WeightSchedule(Section):
    """A loss weight that moves linearly from ``start`` to ``end`` over the run's first ``steps``
    env steps (counted from the start of the run, across curriculum stages)."""

    start: float = Field(ge=0)
    end: float = Field(ge=0)
    steps: Int = Field(ge=0)


def _weight_kind(value: Any) -> str:
    return "schedule" if isinstance(value, (dict, WeightSchedule)) else "number"


# A number or a {start, end, steps} mapping, told apart by the value's shape, so that an error
# speaks of the one that was meant.
Weight = Annotated[
    Annotated[Annotated[float, Field(ge=0)], Tag("number")] | Annotated[WeightSchedule, Tag("schedule")],
    Discriminator(_weight_kind),
]


class AuxTaskConfig(Section):
    """One auxiliary task. Keys other than these are the task's own parameters (``params``),
    checked against the task's own ``Config`` when the task is resolved."""

    type: str = ""
    """A built-in task's name or package.module:ClassName. "": the entry's name."""
    weight: Weight | None = None
    """Loss weight, or {start, end, steps} for a linear schedule. null: the task's default."""
    enabled: bool = True
    """Train this task."""
    batch_size: Int | None = Field(None, ge=1)
    """Sequences per minibatch. null: aux.batch_size."""
    lr: float | None = Field(None, gt=0, lt=1)
    """Adam's learning rate for this task's own head (its own parameter group; the torso's share of
    its gradient steps with ppo.lr). null: ppo.lr."""
    anneal_lr: bool | None = None
    """This task's head's learning rate annealed linearly to 0 over the run. null: as ppo.anneal_lr."""
    params: dict[str, Any] = {}
    """The task's own parameters (written beside type and weight)."""

    @model_validator(mode="before")
    @classmethod
    def _collect_params(cls, data: Any) -> Any:
        if not isinstance(data, dict) or all(k in cls.model_fields for k in data):
            return data
        own = {k: v for k, v in data.items() if k not in cls.model_fields}
        known = {k: v for k, v in data.items() if k in cls.model_fields}
        return {**known, "params": {**known.get("params", {}), **own}}


class BalanceConfig(Section):
    """How each task's gradient on the shared torso is balanced against PPO's (auxrl/balance.py)."""

    method: Literal["none", "norm", "cosine", "pcgrad", "olaux"] = "norm"
    """none: weights as configured; norm: at most relax x PPO's gradient norm (MetaBalance); cosine:
    only where it agrees with PPO's (Du et al.); pcgrad: conflicting part projected out (Yu et
    al.); olaux: weights learned online from gradient agreement (Lin et al.). Default norm: the
    best of the five in the Atari 100k screening (benchmarks/README.md)."""
    relax: float = Field(1.0, gt=0)
    """norm: bound on ||g_task|| / ||g_ppo|| on the torso."""
    cosine_weighted: bool = False
    """cosine: scale by max(cos, 0) instead of keeping or dropping."""
    olaux_lr: float = Field(1.0, ge=0)
    """olaux: step of the weight multiplier per unit of summed cosine."""
    olaux_every: Int = Field(5, ge=1)
    """olaux: updates between steps of the weight multipliers."""
    olaux_max: float = Field(10.0, gt=0)
    """olaux: upper bound of a multiplier (lower bound 0)."""


class AuxConfig(Section):
    """Auxiliary heads trained beside PPO on the shared torso."""

    enabled: bool = True
    """false turns every task off (for side-by-side runs). Naming a task in an override
    (aux.tasks.NAME.KEY=...) turns it back on unless aux.enabled=false is also given."""
    replay_size: Int = Field(8192, ge=1)
    """Transitions kept on the training device for replay-based tasks."""
    batch_size: Int = Field(32, ge=1)
    """Sequences sampled per task per PPO minibatch."""
    max_grad_norm: float | None = Field(0.5, gt=0)
    """Each aux head's own parameters clipped to this norm (PPO's by ppo.max_grad_norm alone, as in
    CleanRL). null: no clip."""
    balance: BalanceConfig = BalanceConfig()
    every: Int = Field(1, ge=1)
    """Aux losses on every k-th PPO minibatch only (1: every minibatch): trades the heads' compute
    for their signal."""
    diagnostics_every: Int = Field(1, ge=1)
    """Updates between logs of the gradient diagnostics (computed every update at no extra cost)."""
    image_key: str | None = None
    """Dict observations: the image key that pixel tasks and ppo.augment work on. null: the dict's
    only image key."""
    tasks: dict[str, AuxTaskConfig] = {}
    """The auxiliary tasks by name: aux.tasks.NAME.KEY (auxrl tasks lists them)."""


class CurriculumStage(Section):
    """One stage of a curriculum: overrides applied on top of the base config."""

    name: str = ""
    """The stage's name in logs."""
    steps: Int = Field(0, ge=0)
    """Env steps in this stage (0: no step budget)."""
    return_threshold: float | None = None
    """Promote early when the mean unclipped return of the last `window` episodes reaches this."""
    window: Int = Field(20, ge=1)
    """Episodes averaged for return_threshold."""
    overrides: dict[str, Any] = {}
    """Dotted overrides for this stage, e.g. {env.id: ALE/Pong-v5, aux.tasks.x.weight: 0}."""


class CurriculumConfig(Section):
    stages: list[CurriculumStage] = []
    """The stages, in order. []: no curriculum."""


class LogConfig(Section):
    """Logging and checkpointing."""

    checkpoint_every: Int = Field(500_000, ge=0)
    """Env steps between checkpoints (0: only at the end)."""
    keep_checkpoints: Int = Field(3, ge=0)
    """Newest checkpoints kept, the latest included (0: all)."""
    flush_secs: Int = Field(10, ge=1)
    """TensorBoard flush interval."""
    print_every_secs: float = Field(10.0, ge=0)
    """Seconds between status lines when no progress bar is shown."""
    return_window: Int = Field(20, ge=1)
    """Episodes in the "recent return" shown and used for promotion."""
    wandb: bool = False
    """Mirror the TensorBoard scalars and the config to Weights & Biases (pip install
    "auxrl[wandb]"; WANDB_MODE=offline logs without a network)."""
    wandb_project: str = "auxrl"
    """W&B project."""
    wandb_entity: str | None = None
    """W&B entity. null: your default entity."""
    wandb_group: str | None = None
    """W&B group."""


class PerfConfig(Section):
    """Speed settings (see auxrl/perf.py): CPU threads, and two opt-in switches that fall back
    cleanly off CUDA / without a compiler."""

    compile: bool = False
    """torch.compile the torso."""
    bf16: bool = False
    """bfloat16 autocast for forward passes on CUDA."""
    threads: Int = Field(0, ge=0)
    """torch's CPU threads. 0: 1 for the mlp torso, else every core this process may use; left
    alone when OMP_NUM_THREADS or MKL_NUM_THREADS is set."""


class Config(Section):
    """Everything that defines a run."""

    name: str = "run"
    """The run's name: its folder under runs/ and its label in plots."""
    seed: Int = Field(1, ge=0, le=2**32 - 1)
    """Seeds torch, numpy and the envs."""
    torch_deterministic: bool = True
    """Deterministic cuDNN kernels."""
    env: EnvConfig = EnvConfig()
    model: ModelConfig = ModelConfig()
    ppo: PPOConfig = PPOConfig()
    aux: AuxConfig = AuxConfig()
    curriculum: CurriculumConfig = CurriculumConfig()
    log: LogConfig = LogConfig()
    perf: PerfConfig = PerfConfig()

    @field_validator("name")
    @classmethod
    def _plain_folder_name(cls, name: str) -> str:
        if name in ("", ".", "..") or any(c in name for c in "/\\"):
            raise ValueError(
                f"{name!r} must be a plain folder name (no '/', '\\' or '..'); use --run-dir to write the "
                f"run elsewhere"
            )
        return name


# --------------------------------------------------------------------------------------------
# Validating plain data into the typed tree, with one-line errors
# --------------------------------------------------------------------------------------------


def _suggest(key: Any, valid: list[str]) -> str:
    close = difflib.get_close_matches(str(key), valid, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return f"Valid keys: {', '.join(sorted(valid))}.{hint}"


def _fields(tp: Any) -> dict[str, Any]:
    """Field name -> annotation of a config model or dataclass ({} for anything else)."""
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return {name: f.annotation for name, f in tp.model_fields.items()}
    if dataclasses.is_dataclass(tp):
        return {f.name: f.type for f in dataclasses.fields(tp)}
    return {}


_TYPE_WORDS = {
    "int": "an integer", "float": "a number", "bool": "true or false", "str": "a string",
    "list": "a list", "dict": "a mapping", "model": "a mapping", "dataclass": "a mapping",
    "finite": "a finite number",
}  # fmt: skip


def _message(err: dict[str, Any], where: str, parent: Any) -> str:
    """One pydantic error as the line a user reads: the key, what is wrong, the fix."""
    kind, ctx, value = err["type"], err.get("ctx") or {}, err.get("input")
    name = where.rpartition(".")[2]
    if kind in ("extra_forbidden", "unexpected_keyword_argument", "invalid_key") or err["loc"][-1:] == (
        "[key]",
    ):
        return f"Unknown config key {where!r}. {_suggest(name, list(_fields(parent)))}"
    if kind in ("missing", "missing_argument"):
        return f"{where}: missing; give every one of {', '.join(_fields(parent))}"
    if kind == "literal_error":
        return f"{where}: {value!r} is not a valid choice. Valid choices: {ctx.get('expected', '')}."
    bounds = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}
    if kind in bounds:
        info = getattr(parent, "model_fields", getattr(parent, "__pydantic_fields__", {})).get(name)
        default = info.get_default(call_default_factory=True) if info is not None else None
        hint = f" (default {default})" if isinstance(default, (int, float)) else ""
        return f"{where} must be {bounds[kind]} {next(iter(ctx.values()))}, got {value!r}{hint}"
    if kind in ("value_error", "assertion_error"):
        return f"{where}: {err['msg'].removeprefix('Value error, ').removeprefix('Assertion failed, ')}"
    word = next((w for k, w in _TYPE_WORDS.items() if kind.startswith(k)), None)
    return f"{where}: expected {word}, got {value!r}" if word else f"{where}: {err['msg']}, got {value!r}"


def _error_line(error: ValidationError, tp: Any, path: str) -> str:
    """The first error of a pydantic ValidationError as one line, the key spelled as in the YAML
    (``aux.tasks.pc.weight``, ``curriculum.stages[1].steps``), union branches left out."""
    err = error.errors()[0]
    loc = err["loc"]
    where, node, parent = path, tp, tp
    for i, part in enumerate(loc):
        if part in ("number", "schedule", "[key]"):  # a branch of Weight; a mapping's key
            node = WeightSchedule if part == "schedule" else node
            continue
        parent = node
        key = isinstance(part, str) or loc[i + 1 : i + 2] == ("[key]",) or err["type"] == "invalid_key"
        where = (f"{where}.{part}" if where else str(part)) if key else f"{where}[{part}]"
        node = _inner(_fields(node).get(part, node))
    return _message(err, where or getattr(tp, "__name__", "config"), parent)


def _inner(tp: Any) -> Any:
    """The model or dataclass inside an annotation (through Annotated, Optional, list and dict)."""
    for _ in range(6):
        tp = _strip_annotated(tp)
        if _fields(tp) or not typing.get_args(tp):
            return tp
        tp = [a for a in typing.get_args(tp) if a is not type(None)][-1]
    return tp


_ADAPTERS: dict[type, TypeAdapter] = {}


def build(cls: type, data: Any, path: str = "") -> Any:
    """Validate plain ``data`` into ``cls`` (a config model, or a task's or env family's dataclass):
    unknown keys, wrong types and out-of-range values raise a one-line ConfigError naming the key."""
    if not isinstance(data, dict) and not isinstance(data, cls):
        raise ConfigError(f"{path or cls.__name__}: expected a mapping of {cls.__name__} keys, got {data!r}")
    try:
        if issubclass(cls, BaseModel):
            return cls.model_validate(data)
        if pydantic.dataclasses.is_pydantic_dataclass(cls) and isinstance(data, dict):
            return cls(**data)  # strict fields; TypeAdapter's strict mode would want an instance
        if isinstance(data, dict):  # a plain dataclass takes unknown keys silently: check them here
            names = [f.name for f in dataclasses.fields(cls) if f.init]
            for key in data:
                if key not in names:
                    where = f"{path}.{key}" if path else str(key)
                    raise ConfigError(f"Unknown config key {where!r}. {_suggest(key, names)}")
        if cls not in _ADAPTERS:
            _ADAPTERS[cls] = TypeAdapter(cls)
        return _ADAPTERS[cls].validate_python(data)
    except ValidationError as err:
        raise ConfigError(_error_line(err, cls, path)) from None
    except TypeError as err:  # e.g. a task Config's __post_init__ comparing a value of a wrong type
        raise ConfigError(f"{path or cls.__name__}: {err}") from None


def type_name(tp: Any) -> str:
    """A field's type as a user reads it: ``int``, ``float | null``, ``'sync' | 'async'``."""
    tp = _strip_annotated(tp)
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(type_name(a) for a in typing.get_args(tp))
    if origin in (list, dict):
        return f"{origin.__name__}[{', '.join(type_name(a) for a in typing.get_args(tp))}]"
    if tp is type(None):
        return "null"
    if tp is Any:
        return "any"
    if _fields(tp):
        return f"mapping ({tp.__name__})"
    return getattr(tp, "__name__", str(tp))


def _strip_annotated(tp: Any) -> Any:
    while typing.get_origin(tp) is Annotated:
        tp = typing.get_args(tp)[0]
    return tp


# Env keys that only one env path reads: each is left out of a saved config where it does not apply
# (at its default), and setting it there is an error rather than silently ignored.
ATARI_ENV_KEYS = (
    "frameskip", "frame_stack", "noop_max", "episodic_life", "reward_clip", "fire_reset",
    "sticky_actions", "full_action_space", "max_episode_frames", "num_threads", "groups", "mode",
    "difficulty",
)  # fmt: skip
GYM_ENV_KEYS = ("kwargs", "normalize_obs", "normalize_reward", "clip_obs", "clip_reward")


def env_family_name(env: EnvConfig, env_id: str | None = None) -> str:
    """The name of the family that runs ``env_id`` (default ``env.id``) under this config."""
    from auxrl.envs.family import family_for  # the families import this module

    return family_for(env_id or env.id, env.family).name


def inapplicable_env_keys(env: EnvConfig) -> tuple[str, ...]:
    """The env keys that other families read and this config's family does not."""
    from auxrl.envs.family import family_keys

    mine = env_family_name(env)
    keys = family_keys()
    return tuple(
        dict.fromkeys(
            k for name, ks in keys.items() if name != mine for k in ks if k not in keys.get(mine, ())
        )
    )


def family_options(family: Any, env: EnvConfig) -> Any:
    """``env.options`` checked against the env family's ``Options`` (a dataclass; None when it
    takes none): a ConfigError naming the key otherwise."""
    if family.Options is None:
        if env.options:
            raise ConfigError(
                f"env.options {sorted(env.options)}: the {family.name} family takes no options; drop them."
            )
        return None
    return build(family.Options, dict(env.options), "env.options")


def to_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain data (what is written to ``config.yaml``), without the env keys that do
    not apply to its env (at their defaults: loading it gives the same config)."""
    data = cfg.model_dump()
    for task in data.get("aux", {}).get("tasks", {}).values():
        task.update(task.pop("params"))  # written back in the flat form users write
    env = data.get("env")
    if isinstance(cfg, Config) and isinstance(env, dict):
        defaults = EnvConfig().model_dump()
        for key in inapplicable_env_keys(cfg.env):
            if env.get(key) == defaults[key]:
                env.pop(key, None)
    return data


# The agent's own modules: aux tasks live beside them (agent.heads) and cannot take their names.
RESERVED_MODULE_NAMES = ("policy", "value", "torso")


def validate(cfg: Config) -> None:
    """The checks that involve several keys (each key's own type and range are in its field)."""
    p, e = cfg.ppo, cfg.env
    rollout = e.num_envs * p.num_steps
    checks = [
        (
            rollout % p.num_minibatches == 0,
            f"env.num_envs x ppo.num_steps ({rollout}) must be divisible by ppo.num_minibatches "
            f"({p.num_minibatches})",
        ),
        (
            p.total_steps >= rollout,
            f"ppo.total_steps ({p.total_steps:,}) is less than one rollout (env.num_envs x ppo.num_steps "
            f"= {rollout:,}), so nothing would be trained: raise ppo.total_steps or lower ppo.num_steps",
        ),
        (e.num_envs % e.groups == 0, f"env.groups ({e.groups}) must divide env.num_envs ({e.num_envs})"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    for name in cfg.aux.tasks:
        if name in RESERVED_MODULE_NAMES:
            raise ConfigError(
                f"aux.tasks.{name}: {name!r} is reserved for the model's own modules "
                f"({', '.join(RESERVED_MODULE_NAMES)}); give the aux task another name, "
                f"e.g. aux.tasks.my_{name}"
            )
    for i, stage in enumerate(cfg.curriculum.stages):
        if stage == CurriculumStage():  # `- {}`: a stage that neither changes nor ends anything
            raise ConfigError(
                f"curriculum.stages[{i}] is empty: a stage needs `overrides` (the env.* / aux.* keys it "
                f"changes, e.g. overrides: {{env.id: ALE/Pong-v5}}) and, unless it is the last, `steps` "
                f"or `return_threshold` to end it."
            )
        if stage.steps <= 0 and stage.return_threshold is None and i < len(cfg.curriculum.stages) - 1:
            raise ConfigError(f"curriculum.stages[{i}] never ends: give it `steps` or `return_threshold`.")
    _check_applicable(cfg)


def _label_checks(e: EnvConfig) -> list[tuple[bool, str]]:
    """``env.labels``: each entry ``ram`` (Atari ids) or ``info:KEY``, none twice."""
    bad = [x for x in e.labels if x != "ram" and not (x.startswith("info:") and x[5:])]
    return [
        (
            not bad,
            f"env.labels: {bad[0] if bad else ''!r} is not a label; give ram (the AtariARI RAM "
            f"variables, Atari ids) or info:KEY (a numeric entry of the env's info dict)",
        ),
        (
            "ram" not in e.labels or env_family_name(e) == "atari",
            f"env.labels=[ram] reads Atari RAM, but {e.id} is not an Atari id (ALE/<Game>-v5); label "
            f"a numeric info entry with info:KEY instead",
        ),
        (len(set(e.labels)) == len(e.labels), f"env.labels {e.labels} lists a label twice"),
    ]


def _task_checks(cfg: Config) -> list[tuple[bool, str]]:
    """``env.tasks`` (multi-task): distinct ids of one family, env.id among them, no labels."""
    e = cfg.env
    if not e.tasks:
        return [
            (
                cfg.ppo.task_balance == "none",
                "ppo.task_balance applies to multi-task runs only (set env.tasks)",
            ),
        ]
    return [
        (len(set(e.tasks)) == len(e.tasks), f"env.tasks {e.tasks} lists a task twice"),
        (
            e.id in e.tasks,
            f"env.id={e.id} is not one of env.tasks {e.tasks}: set env.id to one of them (its family, "
            f"Atari or gymnasium, decides which env.* keys apply)",
        ),
        (
            len({env_family_name(e, t) for t in e.tasks}) == 1,
            f"env.tasks {e.tasks} mixes env families (e.g. Atari and gymnasium ids): train one family "
            f"at a time",
        ),
        (not e.labels, "env.labels is not supported with env.tasks yet (each game has its own labels)"),
        (
            not cfg.model.separate_value,
            "model.separate_value=true is not supported with env.tasks (the value heads read the torso)",
        ),
    ]


def _check_applicable(cfg: Config) -> None:
    """Keys that this env path or model would ignore are errors, not silent no-ops."""
    from auxrl.envs.family import family_for, family_keys

    e, defaults = cfg.env, EnvConfig()
    family = family_for(e.id, e.family)  # a ConfigError for an unknown or broken env.family
    owners = family_keys()
    for key in inapplicable_env_keys(e):
        if getattr(e, key) != getattr(defaults, key):
            names = [name for name, keys in owners.items() if key in keys]
            if "gymnasium" in names:
                where = "gymnasium ids (not ALE/...)"
            elif "atari" in names:
                where = "Atari ids (ALE/<Game>-v5)"
            else:
                where = f"the {' / '.join(names)} family"
            raise ConfigError(
                f"env.{key}={getattr(e, key)!r} applies to {where} only; {e.id} would ignore it. Drop it "
                f"(or set it back to {getattr(defaults, key)!r})."
            )
    family_options(family, e)
    checks = [
        (
            not cfg.model.separate_value or cfg.model.torso == "mlp",
            f"model.separate_value=true needs model.torso=mlp (got {cfg.model.torso!r})",
        ),
        *_label_checks(e),
        *_task_checks(cfg),
        (
            cfg.ppo.augment == "none" or cfg.model.torso != "mlp",
            f"ppo.augment={cfg.ppo.augment} shifts image frames, but model.torso=mlp takes vector "
            f"observations; use ppo.augment=none (or an image env with nature_cnn / impala)",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
