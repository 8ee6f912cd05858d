"""Where a config comes from: YAML files (a path or a shipped config's name) and ``key=value``
overrides, read into plain data and validated into a :class:`auxrl.config.Config`.

``load_config("breakout", ["ppo.lr=1e-4"])`` is the whole story for most callers; the pieces
(``load_dict``, ``parse_override``, ``apply_override``) are used by resume, curriculum stages and
``auxrl config``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from auxrl.config import Config, Section, build, to_dict, validate
from auxrl.errors import ConfigError


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
    """Whether ``key`` names a config section (``ppo``, ``aux.balance``: a nested model), as
    opposed to a value, including mapping values such as ``env.kwargs`` or ``aux.tasks``."""
    node: Any = Config
    for part in key.split("."):
        if not (isinstance(node, type) and issubclass(node, Section)) or part not in node.model_fields:
            return False
        node = node.model_fields[part].annotation
    return isinstance(node, type) and issubclass(node, Section)


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
