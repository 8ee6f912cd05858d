"""Typed run configuration: dataclasses, YAML loading, dotted overrides and validation.

A run is described by one :class:`Config`. It is built from a YAML file (a path, or the name of
a config shipped with auxrl) plus ``key=value`` overrides such as ``ppo.lr=1e-4``. Every key and
every value type is checked before anything is trained, and errors name the offending key and
the valid choices.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from auxrl.errors import ConfigError

# --------------------------------------------------------------------------------------------
# The configuration tree
# --------------------------------------------------------------------------------------------


@dataclass
class EnvConfig:
    """Which environment to train on and how it is preprocessed.

    Each id belongs to an env family (auxrl/envs/family.py): ``ALE/<Game>-v5`` ids to ``atari``
    (ale-py's native C++ ``AtariVectorEnv``), ids of a registered plugin family to it, every
    other id to ``gymnasium`` (``gymnasium.vector``). The Atari defaults follow CleanRL's
    ``ppo_atari_envpool.py``; the Machado et al. (2018) protocol is ``sticky_actions=0.25
    episodic_life=false full_action_space=true``.
    """

    id: str = "CartPole-v1"
    num_envs: int = 8
    # The env family (atari, gymnasium, a registered plugin's name or package.module:Class).
    # null: the family that takes env.id (atari for ALE/..., a plugin's own ids, else gymnasium).
    family: str | None = None
    # The family's own settings, checked against its Options (e.g. {scenario: basic}). {}: none.
    options: dict[str, Any] = field(default_factory=dict)
    # gymnasium path: run sub-environments in this process ("sync") or in subprocesses ("async").
    vector_mode: Literal["sync", "async"] = "sync"
    # Extra keyword arguments for gymnasium.make (gymnasium path only).
    kwargs: dict[str, Any] = field(default_factory=dict)
    # Atari path only.
    frameskip: int = 4
    frame_stack: int = 4
    noop_max: int = 30
    episodic_life: bool = True
    reward_clip: bool = True
    fire_reset: bool = True
    sticky_actions: float = 0.0
    full_action_space: bool = False
    max_episode_frames: int = 108_000
    num_threads: int = 0  # 0: one C++ thread per env, capped by the core count
    # Split the envs into this many groups stepped in turn (Atari): the policy acts for one
    # group while the others' emulators run. 1: step all envs together.
    groups: int = 1
    # ALE game mode / difficulty (None: the game's default).
    mode: int | None = None
    difficulty: int | None = None
    # gymnasium path only (vector observations): running mean/std normalisation of observations
    # (saved in checkpoints and used by eval) and scaling of rewards by the running std of the
    # discounted return (training only), each clipped to +-clip (CleanRL's continuous-control
    # wrappers; SB3's VecNormalize).
    normalize_obs: bool = False
    normalize_reward: bool = False
    clip_obs: float = 10.0
    clip_reward: float = 10.0
    # State labels per step for auxiliary tasks (state_prediction; auxrl/envs/labels.py): ram (the
    # AtariARI RAM variables of the game; Atari then runs through gymnasium's ALE env, slower than
    # the native one) and/or info:KEY (a numeric entry of the env's info dict). []: none, no cost.
    labels: list[str] = field(default_factory=list)
    # Multi-task training: several env ids at once (e.g. [ALE/Pong-v5, ALE/Breakout-v5]), each with
    # env.num_envs envs, one shared torso, a policy and a value head per task (PopArt by default).
    # Same observation shape and Discrete actions; env.id is then one of them. []: one task.
    tasks: list[str] = field(default_factory=list)


@dataclass
class ModelConfig:
    """The shared torso and how it is initialised."""

    # nature_cnn (84x84 frames), impala (any frames), grid_cnn (MiniGrid's small symbolic grids,
    # read as numbers, not brightness), mlp (vectors).
    torso: Literal["nature_cnn", "impala", "grid_cnn", "mlp"] = "nature_cnn"
    # mlp torso: hidden layer sizes (the last one is the feature size).
    hidden_sizes: list[int] = field(default_factory=lambda: [64, 64])
    # Load the torso and matching heads from an earlier run directory or checkpoint file.
    init_from: str | None = None
    # Which modules to load from init_from (None: the torso and every same-named, same-shaped
    # head). [torso] gives fresh heads on a trained torso.
    init_modules: list[str] | None = None
    # Modules to freeze: "torso", "policy", "value" or an auxiliary task's name.
    freeze: list[str] = field(default_factory=list)
    # mlp torso only: the value head gets its own MLP (same hidden_sizes) on the observation, as
    # in CleanRL's continuous-control agent; the policy and the aux heads share the torso.
    separate_value: bool = False
    # PopArt (Hessel et al. 2019): value targets normalised per task, outputs preserved when the
    # statistics move, advantages divided by the task's scale. null: on with env.tasks, off without.
    popart: bool | None = None
    # Step of PopArt's moving averages per update (each update sees a whole rollout).
    popart_beta: float = 0.01


@dataclass
class PPOConfig:
    """PPO hyper-parameters; defaults are CleanRL's Atari settings."""

    total_steps: int = 10_000_000
    num_steps: int = 128
    lr: float = 2.5e-4
    anneal_lr: bool = True
    adam_eps: float = 1e-5
    gamma: float = 0.99
    gae_lambda: float = 0.95
    num_minibatches: int = 4
    update_epochs: int = 4
    norm_adv: bool = True
    clip_coef: float = 0.1
    clip_vloss: bool = True
    ent_coef: float = 0.01
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    target_kl: float | None = None
    # RAD (Laskin et al. 2020): augment the minibatch frames PPO's loss sees (image observations
    # only): none, shift (+-4 px random shift, replicate padding) or shift_intensity (plus SPR's
    # x (1 + 0.05 clip(N(0,1), -2, 2)) brightness noise). Acting and stored frames stay unaugmented.
    augment: Literal["none", "shift", "shift_intensity"] = "none"
    # Multi-task (env.tasks): how the tasks' gradients on the shared torso are combined: none (their
    # mean), norm (each rescaled to the mean of their norms: no game dominates the torso) or pcgrad
    # (each one's conflicts with the others projected out, Yu et al. 2020), then their mean.
    task_balance: Literal["none", "norm", "pcgrad"] = "none"


@dataclass
class WeightSchedule:
    """A loss weight that moves linearly from ``start`` to ``end`` over the run's first ``steps``
    env steps (counted from the start of the run, across curriculum stages)."""

    start: float
    end: float
    steps: int


@dataclass
class AuxTaskConfig:
    """One auxiliary task. Keys other than these are the task's own parameters."""

    type: str = ""  # built-in name or "package.module:ClassName"; defaults to the entry's key
    weight: float | WeightSchedule | None = None  # None: the task's documented default
    enabled: bool = True
    batch_size: int | None = None  # sequences per minibatch (None: aux.batch_size)
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class BalanceConfig:
    """How each task's gradient on the shared torso is balanced against PPO's (auxrl/balance.py)."""

    # none: weights as configured; norm: at most relax x PPO's gradient norm (MetaBalance);
    # cosine: only where it agrees with PPO's (Du et al.); pcgrad: conflicting part projected
    # out (Yu et al.); olaux: weights learned online from gradient agreement (Lin et al.).
    # Default norm: the best of the five in the Atari 100k screening (benchmarks/README.md).
    method: Literal["none", "norm", "cosine", "pcgrad", "olaux"] = "norm"
    relax: float = 1.0  # norm: bound on ||g_task|| / ||g_ppo|| on the torso
    cosine_weighted: bool = False  # cosine: scale by max(cos, 0) instead of keeping or dropping
    olaux_lr: float = 1.0  # olaux: step of the weight multiplier per unit of summed cosine
    olaux_every: int = 5  # olaux: updates between steps of the weight multipliers
    olaux_max: float = 10.0  # olaux: upper bound of a multiplier (lower bound 0)


@dataclass
class AuxConfig:
    """Auxiliary heads trained beside PPO on the shared torso."""

    # aux.enabled=false turns every task off (for side-by-side runs). Naming a task in a command-line
    # override (aux.tasks.NAME.KEY=...) turns it back on unless aux.enabled=false is also given.
    enabled: bool = True
    replay_size: int = 8192  # transitions kept on the training device for replay-based tasks
    batch_size: int = 32  # sequences sampled per task per PPO minibatch
    # Each aux head's own parameters are clipped to this norm (PPO's are clipped by
    # ppo.max_grad_norm alone, as in CleanRL). None: no clip.
    max_grad_norm: float | None = 0.5
    balance: BalanceConfig = field(default_factory=BalanceConfig)
    # Run the aux losses on every k-th PPO minibatch only (1: every minibatch): trades the heads'
    # compute (their frames through the torso) for their signal.
    every: int = 1
    # Gradient diagnostics are computed every update at no extra cost; this only throttles
    # how often they are logged (1: every update).
    diagnostics_every: int = 1
    # Dict observations: the image key that pixel tasks (pixel_control, augment_consistency,
    # next_state's augmentation) and ppo.augment work on. null: the dict's only image key.
    image_key: str | None = None
    tasks: dict[str, AuxTaskConfig] = field(default_factory=dict)


@dataclass
class CurriculumStage:
    """One stage of a curriculum: overrides applied on top of the base config."""

    name: str = ""
    steps: int = 0  # env steps in this stage (0: no step budget)
    # Promote early when the mean unclipped return of the last `window` episodes reaches this.
    return_threshold: float | None = None
    window: int = 20
    # Dotted overrides for this stage, e.g. {"env.id": "ALE/Pong-v5", "aux.tasks.x.weight": 0}.
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class CurriculumConfig:
    stages: list[CurriculumStage] = field(default_factory=list)


@dataclass
class LogConfig:
    """Logging and checkpointing."""

    checkpoint_every: int = 500_000  # env steps between checkpoints (0: final only)
    keep_checkpoints: int = 3  # newest checkpoints kept, the latest included (0: all)
    flush_secs: int = 10  # TensorBoard flush interval
    print_every_secs: float = 10.0  # status lines when no progress bar is shown
    return_window: int = 20  # episodes in the "recent return" shown and used for promotion
    # Mirror the TensorBoard scalars and the config to Weights & Biases (pip install "auxrl[wandb]";
    # WANDB_MODE=offline logs without a network).
    wandb: bool = False
    wandb_project: str = "auxrl"
    wandb_entity: str | None = None  # None: your default entity
    wandb_group: str | None = None


@dataclass
class PerfConfig:
    """Speed settings (see auxrl/perf.py): CPU threads, and two opt-in switches that fall back cleanly
    off CUDA / without a compiler."""

    compile: bool = False  # torch.compile the torso
    bf16: bool = False  # bfloat16 autocast for forward passes on CUDA
    # torch's CPU threads. 0: 1 for the mlp torso, else every core this process may use (the
    # emulator threads sleep while a CNN updates); left alone when OMP_NUM_THREADS or
    # MKL_NUM_THREADS is set.
    threads: int = 0


@dataclass
class Config:
    """Everything that defines a run."""

    name: str = "run"
    seed: int = 1
    torch_deterministic: bool = True
    env: EnvConfig = field(default_factory=EnvConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    aux: AuxConfig = field(default_factory=AuxConfig)
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    log: LogConfig = field(default_factory=LogConfig)
    perf: PerfConfig = field(default_factory=PerfConfig)


# --------------------------------------------------------------------------------------------
# Building typed objects from plain dicts
# --------------------------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        return getattr(tp, "_name", None) or str(tp)
    if dataclasses.is_dataclass(tp):
        return f"mapping ({tp.__name__})"
    return "None" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _suggest(key: Any, valid: list[str]) -> str:
    close = difflib.get_close_matches(str(key), valid, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return f"Valid keys: {', '.join(sorted(valid))}.{hint}"


def convert(value: Any, tp: Any, path: str) -> Any:
    """Check ``value`` against the type annotation ``tp`` and convert it (dicts to dataclasses)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        mapping_error = None
        for option in typing.get_args(tp):
            try:
                return convert(value, option, path)
            except ConfigError as err:
                if isinstance(value, dict) and dataclasses.is_dataclass(option):
                    mapping_error = err  # a mapping was meant for this option: say what is wrong in it
        if mapping_error is not None:
            raise mapping_error
        raise ConfigError(f"{path}: expected {_type_name(tp)}, got {value!r}")
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"{path}: expected None, got {value!r}")
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(
                f"{path}: {value!r} is not a valid choice. Valid choices: "
                f"{', '.join(repr(c) for c in choices)}."
            )
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        (item_tp,) = typing.get_args(tp)
        return [convert(v, item_tp, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        _, val_tp = typing.get_args(tp)
        return {str(k): convert(v, val_tp, f"{path}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping of {tp.__name__} keys, got {value!r}")
        return build(tp, value, path)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)  # 1e6 in YAML is a float
        raise ConfigError(f"{path}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{path}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{path}: expected a string, got {value!r}")
    raise ConfigError(f"{path}: unsupported type {tp!r}")  # pragma: no cover - programming error


def build(cls: type, data: dict[str, Any], path: str = "") -> Any:
    """Build dataclass ``cls`` from ``data``; unknown keys and wrong types raise ConfigError."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    if cls is AuxTaskConfig:
        # Task-specific parameters sit beside type/weight/enabled; they are checked against the
        # task's own Config when the task is resolved (see check_aux_tasks).
        data = dict(data)
        params = {k: data.pop(k) for k in list(data) if k not in fields}
        data["params"] = {**data.get("params", {}), **params}
    kwargs = {}
    for key, value in data.items():
        where = f"{path}.{key}" if path else key
        if key not in fields:
            raise ConfigError(f"Unknown config key {str(where)!r}. {_suggest(key, list(fields))}")
        kwargs[key] = convert(value, hints[key], where)
    required = [
        name
        for name, f in fields.items()
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    missing = [name for name in required if name not in kwargs]
    if missing:
        raise ConfigError(
            f"{path or cls.__name__}: missing {', '.join(missing)} (give all of {', '.join(required)})."
        )
    try:
        return cls(**kwargs)
    except TypeError as err:  # e.g. a task Config's __post_init__ comparing a value of a wrong type
        raise ConfigError(f"{path or cls.__name__}: {err}") from None


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
    """``env.options`` checked against the env family's ``Options`` dataclass (None when it takes
    none): a ConfigError naming the key otherwise."""
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
    data = dataclasses.asdict(cfg)
    for task in data.get("aux", {}).get("tasks", {}).values():
        task.update(task.pop("params"))  # written back in the flat form users write
    env = data.get("env")
    if isinstance(cfg, Config) and isinstance(env, dict):
        defaults = dataclasses.asdict(EnvConfig())
        for key in inapplicable_env_keys(cfg.env):
            if env.get(key) == defaults[key]:
                env.pop(key, None)
    return data


# --------------------------------------------------------------------------------------------
# Files and overrides
# --------------------------------------------------------------------------------------------


def shipped_configs_dir() -> Path:
    """Where the shipped configs are: inside the wheel, or ``configs/`` in a checkout."""
    packaged = Path(__file__).parent / "configs"
    return packaged if packaged.is_dir() else Path(__file__).parent.parent / "configs"


def shipped_config_names() -> list[str]:
    return sorted(p.stem for p in shipped_configs_dir().glob("*.yaml"))


def resolve_config_path(name_or_path: str) -> Path:
    """A config path, or the name of a shipped config (``cartpole`` or ``cartpole.yaml``)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = shipped_configs_dir() / f"{path.stem}.yaml"
    if path.parent == Path(".") and shipped.is_file():
        return shipped
    if path.is_dir():
        run = (
            f" (a run? continue it: auxrl train --resume {path})" if (path / "config.yaml").is_file() else ""
        )
        raise ConfigError(
            f"{name_or_path!r} is a folder{run}, not a config file. Give a path to a YAML file or one "
            f"of the shipped configs: {', '.join(shipped_config_names())}."
        )
    raise ConfigError(
        f"No config file {name_or_path!r}. Give a path to a YAML file or one of the shipped "
        f"configs: {', '.join(shipped_config_names())}."
    )


def parse_override(text: str) -> tuple[str, Any]:
    """``ppo.lr=1e-4`` -> ("ppo.lr", 0.0001). Values are read as YAML (numbers, bools, lists)."""
    if "=" not in text:
        raise ConfigError(f"Override {text!r} is not of the form key=value (e.g. ppo.lr=1e-4).")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"Override {text!r} has an empty key.")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, _floats_in_yaml(value)  # in mappings and lists too: 'ppo={lr: 1e-3}'


def _yaml_float(text: str) -> Any:
    # YAML 1.1 reads "1e-4" as a string (it wants "1.0e-4"); users mean a number.
    try:
        return float(text) if any(c.isdigit() for c in text) else text
    except ValueError:
        return text


def flatten_dotted(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested dict as ``{"a.b.c": value}``: the inverse of ``set_dotted``."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(flatten_dotted(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    """Set ``a.b.c`` in a nested dict, creating intermediate mappings."""
    node = data
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"Cannot set {key!r}: {'.'.join(parts[: i + 1])!r} is a value, not a section.")
        node = child
    node[parts[-1]] = value


def is_section(key: str) -> bool:
    """Whether ``key`` names a config section (``ppo``, ``aux.balance``: a dataclass field), as
    opposed to a value, including mapping values such as ``env.kwargs`` or ``aux.tasks``."""
    node: Any = Config
    for part in key.split("."):
        if not (isinstance(node, type) and dataclasses.is_dataclass(node)):
            return False
        hints = typing.get_type_hints(node)
        if part not in hints:
            return False
        node = hints[part]
    return isinstance(node, type) and dataclasses.is_dataclass(node)


def apply_override(data: dict[str, Any], key: str, value: Any) -> list[tuple[str, Any]]:
    """Set ``key`` to ``value`` in ``data``; returns the (dotted key, value) pairs it set.

    A mapping given for a section is applied key by key (``ppo={total_steps: 5000}`` is
    ``ppo.total_steps=5000``: the section's other keys stay; replacing it would silently bring
    back the built-in defaults). A mapping given for a value (``env.kwargs={}``,
    ``aux.tasks={...}``, one task's settings) replaces it.
    """
    if isinstance(value, dict) and is_section(key):
        return [
            pair
            for sub, sub_value in value.items()
            for pair in apply_override(data, f"{key}.{sub}", sub_value)
        ]
    set_dotted(data, key, value)
    return [(key, value)]


def _floats_in_yaml(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _floats_in_yaml(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_floats_in_yaml(v) for v in node]
    return _yaml_float(node) if isinstance(node, str) else node


class DuplicateKey(yaml.constructor.ConstructorError):
    """A key given twice in one mapping of a YAML file (PyYAML would silently keep the last)."""

    def __init__(self, key: Any, first: yaml.Mark, again: yaml.Mark) -> None:
        super().__init__(problem=f"duplicate key {key!r}", problem_mark=again)
        self.key, self.first_line, self.line = key, first.line + 1, again.line + 1


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping. Keys brought in by a
    merge (``<<: *defaults``) may still be overridden: that is what merges are for."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Mark] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node)
            if key in seen:
                raise DuplicateKey(key, seen[key], key_node.start_mark)
            seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


def load_dict(name_or_path: str | Path) -> dict[str, Any]:
    path = resolve_config_path(str(name_or_path))
    with open(path, encoding="utf-8") as f:
        try:
            data = yaml.load(f, Loader=_UniqueKeyLoader)  # a SafeLoader: plain data only
        except DuplicateKey as err:
            raise ConfigError(
                f"{path}, line {err.line}: key {err.key!r} is given twice in one mapping (first at line "
                f"{err.first_line}); YAML would silently keep the last one. Keep one of them."
            ) from None
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML ({_yaml_problem(err)}).") from None
        except UnicodeDecodeError as err:
            raise ConfigError(
                f"{path}: not a UTF-8 YAML file (byte {err.object[err.start]:#04x} at position {err.start}); "
                f"give a YAML config file."
            ) from None
    if data is None:  # nothing but comments or blank lines
        raise ConfigError(
            f"{path}: the file is empty; a config is a YAML mapping of sections, e.g. `env: {{id: "
            f"CartPole-v1}}` and `model: {{torso: mlp}}` (start from a shipped one: "
            f"{', '.join(shipped_config_names())}; `auxrl config cartpole` prints one in full)."
        )
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of config sections.")
    return _floats_in_yaml(data)


def _yaml_problem(err: yaml.YAMLError) -> str:
    """PyYAML's multi-line error as one line: what is wrong and where."""
    mark = getattr(err, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return where + str(getattr(err, "problem", None) or err).replace("\n", " ")


def from_dict(
    data: dict[str, Any], overrides: list[str] | tuple[str, ...] = (), *, follow: bool = False
) -> Config:
    """Build and validate a :class:`Config` from plain data and ``key=value`` overrides.

    ``follow=True`` also applies what a user's overrides imply (see :func:`follow_overrides`);
    resumed runs and curriculum stages apply their overrides literally.
    """
    data = _deepcopy(data)
    file_env_id = data.get("env", {}).get("id") if isinstance(data.get("env"), dict) else None
    given = []
    for text in overrides:
        given += apply_override(data, *parse_override(text))
    if follow:
        follow_overrides(data, given, file_env_id)
    cfg = build(Config, data)
    validate(cfg)
    return cfg


def follow_overrides(data: dict[str, Any], given: list[tuple[str, Any]], file_env_id: Any) -> None:
    """What command-line overrides imply beyond their own keys (changes ``data`` in place).

    - Configuring an auxiliary task (``aux.tasks.NAME.KEY=...``) asks for it to be trained: a
      file's ``aux.enabled: false`` is turned on, unless ``aux.enabled`` is overridden too.
    - A different ``env.id`` names the run after that env (``ALE/Pong-v5`` -> ``Pong-v5``): the
      file's ``name`` describes the file's env, and plots and run directories go by the name.
      Unless ``name`` is overridden too.
    """
    keys = [key for key, _ in given]
    configures_task = any(
        (key == "aux.tasks" and isinstance(value, dict) and bool(value))
        or (key.startswith("aux.tasks.") and not (key.endswith(".enabled") and value is False))
        for key, value in given
    )
    aux = data.get("aux")
    if configures_task and "aux.enabled" not in keys and isinstance(aux, dict):
        if aux.get("enabled") is False:
            aux["enabled"] = True
    env_id = data.get("env", {}).get("id") if isinstance(data.get("env"), dict) else None
    if "env.id" in keys and "name" not in keys and isinstance(env_id, str) and env_id != file_env_id:
        data["name"] = run_name_for_env(env_id)


def run_name_for_env(env_id: str) -> str:
    """A run name (and directory name) for an env id: ``ALE/Pong-v5`` -> ``Pong-v5``,
    ``mypkg.envs:Maze-v0`` -> ``Maze-v0``."""
    return env_id.rpartition(":")[2].removeprefix("ALE/").replace("/", "-")


def override_texts(overrides: Sequence[str] | Mapping[str, Any] | None) -> list[str]:
    """``["ppo.lr=3e-4"]`` or ``{"ppo.lr": 3e-4}`` (Python callers) as ``key=value`` strings."""
    if overrides is None:
        return []
    if isinstance(overrides, str):
        raise TypeError(f"overrides: a list of key=value strings or a dict, not the string {overrides!r}")
    if isinstance(overrides, Mapping):
        # JSON is YAML: each value is read back exactly as given (numbers, bools, lists, strings).
        return [f"{key}={json.dumps(value)}" for key, value in overrides.items()]
    return list(overrides)


def load_config(name_or_path: str | Path, overrides: Sequence[str] | Mapping[str, Any] | None = ()) -> Config:
    """Load a YAML config (path or shipped name), apply overrides and validate.

    ``overrides``: ``["ppo.lr=3e-4"]`` or ``{"ppo.lr": 3e-4}``. They are read as a user means them
    (:func:`follow_overrides`): configuring an auxiliary task turns the heads on, and another
    ``env.id`` renames the run after it.
    """
    return from_dict(load_dict(name_or_path), override_texts(overrides), follow=True)


def save_config(cfg: Config, path: str | Path) -> None:
    with open(path, "w") as f:
        yaml.safe_dump(to_dict(cfg), f, sort_keys=False)


def _deepcopy(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _deepcopy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deepcopy(v) for v in data]
    return data


# The agent's own modules: aux tasks live beside them (agent.heads) and cannot take their names.
RESERVED_MODULE_NAMES = ("policy", "value", "torso")


def validate(cfg: Config) -> None:
    """Range checks that types alone cannot express."""
    p, e, b = cfg.ppo, cfg.env, cfg.aux.balance
    checks = [
        (
            0 <= cfg.seed <= 2**32 - 1,
            f"seed must be an integer in [0, 2**32 - 1], got {cfg.seed:g}",
        ),
        (
            cfg.name not in ("", ".", "..") and not any(c in cfg.name for c in "/\\"),
            f"name {cfg.name!r} must be a plain folder name (no '/', '\\' or '..'); use --run-dir to "
            f"write the run elsewhere",
        ),
        (
            all(size >= 1 for size in cfg.model.hidden_sizes),
            f"model.hidden_sizes {cfg.model.hidden_sizes}: every layer size must be >= 1, e.g. [64, 64]",
        ),
        (e.num_envs >= 1, "env.num_envs must be >= 1"),
        (p.num_steps >= 1, "ppo.num_steps must be >= 1"),
        (p.total_steps >= 1, "ppo.total_steps must be >= 1"),
        (p.num_minibatches >= 1, "ppo.num_minibatches must be >= 1"),
        (
            p.num_minibatches < 1 or (e.num_envs * p.num_steps) % p.num_minibatches == 0,
            f"env.num_envs x ppo.num_steps ({e.num_envs * p.num_steps}) must be divisible by "
            f"ppo.num_minibatches ({p.num_minibatches})",
        ),
        (0.0 <= p.gamma <= 1.0, "ppo.gamma must be in [0, 1]"),
        (0.0 <= p.gae_lambda <= 1.0, "ppo.gae_lambda must be in [0, 1]"),
        (0 < p.lr < 1, "ppo.lr must be a number in (0, 1), e.g. 2.5e-4"),
        (0.0 <= e.sticky_actions <= 1.0, "env.sticky_actions must be in [0, 1]"),
        (
            e.groups >= 1 and e.num_envs % e.groups == 0,
            f"env.groups ({e.groups}) must be >= 1 and divide env.num_envs ({e.num_envs})",
        ),
        (cfg.aux.replay_size >= 1, "aux.replay_size must be >= 1"),
        (cfg.aux.batch_size >= 1, "aux.batch_size must be >= 1"),
        (
            cfg.aux.max_grad_norm is None or 0 < cfg.aux.max_grad_norm < math.inf,
            "aux.max_grad_norm must be a positive number (or null for no clip)",
        ),
        (cfg.aux.every >= 1, "aux.every must be >= 1 (1: aux losses on every PPO minibatch)"),
        (cfg.aux.diagnostics_every >= 1, "aux.diagnostics_every must be >= 1 (updates between logs)"),
        (0 < b.relax < math.inf, "aux.balance.relax must be a positive number"),
        (0 <= b.olaux_lr < math.inf, "aux.balance.olaux_lr must be a number >= 0"),
        (b.olaux_every >= 1, "aux.balance.olaux_every must be >= 1"),
        (0 < b.olaux_max < math.inf, "aux.balance.olaux_max must be a positive number"),
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
    _check_ranges(cfg)
    _check_applicable(cfg)


def _check_ranges(cfg: Config) -> None:
    """Finite numbers, and bounds wherever a range is obvious (NaN fails every comparison)."""
    p, e, log = cfg.ppo, cfg.env, cfg.log
    rollout = e.num_envs * p.num_steps
    checks = [
        (0 < p.adam_eps < math.inf, "ppo.adam_eps must be a positive number"),
        (p.update_epochs >= 1, "ppo.update_epochs must be >= 1"),
        (0 < p.clip_coef < math.inf, "ppo.clip_coef must be a positive number"),
        (0 <= p.ent_coef < math.inf, "ppo.ent_coef must be a number >= 0"),
        (0 <= p.vf_coef < math.inf, "ppo.vf_coef must be a number >= 0"),
        (0 < p.max_grad_norm < math.inf, "ppo.max_grad_norm must be a positive number"),
        (
            p.target_kl is None or 0 < p.target_kl < math.inf,
            "ppo.target_kl must be a positive number (or null)",
        ),
        (
            p.total_steps >= rollout,
            f"ppo.total_steps ({p.total_steps:,}) is less than one rollout (env.num_envs x ppo.num_steps "
            f"= {rollout:,}), so nothing would be trained: raise ppo.total_steps or lower ppo.num_steps",
        ),
        (e.frameskip >= 1, "env.frameskip must be >= 1"),
        (e.frame_stack >= 1, "env.frame_stack must be >= 1"),
        (e.noop_max >= 0, "env.noop_max must be >= 0"),
        (e.max_episode_frames >= 1, "env.max_episode_frames must be >= 1"),
        (e.num_threads >= 0, "env.num_threads must be >= 0 (0: one per env, capped by the cores)"),
        (
            log.checkpoint_every >= 0,
            f"log.checkpoint_every must be >= 0 (env steps between checkpoints; 0: only at the end), "
            f"got {log.checkpoint_every}",
        ),
        (log.keep_checkpoints >= 0, "log.keep_checkpoints must be >= 0 (0: keep every checkpoint)"),
        (log.flush_secs >= 1, "log.flush_secs must be >= 1"),
        (0 <= log.print_every_secs < math.inf, "log.print_every_secs must be a number >= 0"),
        (log.return_window >= 1, "log.return_window must be >= 1"),
    ]
    for name, task in cfg.aux.tasks.items():
        w = task.weight
        numbers = [] if w is None else [w] if isinstance(w, float) else [w.start, w.end]
        checks.append(
            (all(0 <= x < math.inf for x in numbers), f"aux.tasks.{name}.weight must be a number >= 0")
        )
        if isinstance(w, WeightSchedule):
            checks.append((w.steps >= 0, f"aux.tasks.{name}.weight.steps must be >= 0"))
        checks.append(
            (task.batch_size is None or task.batch_size >= 1, f"aux.tasks.{name}.batch_size must be >= 1")
        )
    for i, stage in enumerate(cfg.curriculum.stages):
        checks += [
            (stage.steps >= 0, f"curriculum.stages[{i}].steps must be >= 0"),
            (stage.window >= 1, f"curriculum.stages[{i}].window must be >= 1"),
            (
                stage.return_threshold is None or math.isfinite(stage.return_threshold),
                f"curriculum.stages[{i}].return_threshold must be a finite number or null",
            ),
        ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


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
            (0 < cfg.model.popart_beta <= 1, "model.popart_beta must be in (0, 1]"),
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
        (0 < cfg.model.popart_beta <= 1, "model.popart_beta must be in (0, 1]"),
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
        (cfg.perf.threads >= 0, "perf.threads must be >= 0 (0: choose automatically)"),
        (0 < e.clip_obs < math.inf, "env.clip_obs must be a positive number"),
        (0 < e.clip_reward < math.inf, "env.clip_reward must be a positive number"),
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
