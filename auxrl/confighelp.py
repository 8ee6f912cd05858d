"""Every config key with its type, default and help, read from the config models themselves.

Used by ``auxrl config`` and ``auxrl train --help``. A key's help is its field's docstring in
``auxrl/config.py`` (pydantic's ``use_attribute_docstrings``), or in a task's or env family's
``Config``/``Options`` (pydantic dataclasses; a plain dataclass's keys are listed without help).
"""

from __future__ import annotations

import dataclasses
import difflib
import textwrap
from dataclasses import dataclass
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from auxrl.config import ATARI_ENV_KEYS, GYM_ENV_KEYS, AuxTaskConfig, Config, ConfigError, to_dict, type_name


@dataclass
class KeyInfo:
    key: str
    type: str
    default: Any
    help: str


def _fields(cls: type) -> list[tuple[str, Any, Any, str]]:
    """(name, annotation, default, help) of a model's or dataclass's fields."""
    infos = cls.model_fields if issubclass(cls, BaseModel) else getattr(cls, "__pydantic_fields__", None)
    if infos is not None:
        out = []
        for name, f in infos.items():
            default = f.get_default(call_default_factory=True)
            default = None if default is PydanticUndefined else default
            out.append((name, f.annotation, default, " ".join((f.description or "").split())))
        return out
    return [
        (
            f.name,
            f.type,
            f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default,
            "",
        )
        for f in dataclasses.fields(cls)
    ]


def config_keys(cls: type = Config, prefix: str = "") -> list[KeyInfo]:
    """Every settable key below ``cls`` (sections expanded; ``aux.tasks`` is listed by
    :func:`task_keys`)."""
    out = []
    for name, tp, default, help_text in _fields(cls):
        key = f"{prefix}{name}"
        if isinstance(tp, type) and issubclass(tp, BaseModel) and tp is not AuxTaskConfig:
            out += config_keys(tp, f"{key}.")
            continue
        if cls.__name__ == "EnvConfig" and name in ATARI_ENV_KEYS + GYM_ENV_KEYS:
            help_text = f"[{'Atari' if name in ATARI_ENV_KEYS else 'gymnasium'} ids only] {help_text}"
        if isinstance(default, BaseModel):
            default = default.model_dump()
        out.append(KeyInfo(key, type_name(tp), default, help_text))
    return out


def task_keys() -> list[KeyInfo]:
    """``aux.tasks.<name>.*``: the keys every task has, then each available task's own keys."""
    from auxrl.tasks.registry import available, resolve

    common = [
        KeyInfo(f"aux.tasks.<name>.{k.key}", k.type, k.default, k.help)
        for k in config_keys(AuxTaskConfig)
        if k.key != "params"
    ]
    own = []
    for name in available():
        try:
            cls = resolve(name)
        except Exception:  # a broken plugin must not hide the other keys
            continue
        own += [
            KeyInfo(f"aux.tasks.{name}.{k.key}", k.type, k.default, k.help) for k in config_keys(cls.Config)
        ]
    return common + own


def _inline(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def _row(r: KeyInfo, width: int, type_width: int) -> str:
    line = f"{r.key:<{width}}  {r.type:<{type_width}}  {_inline(r.default)}"
    return f"{line}  # {r.help}" if r.help else line


def describe_config(cfg: Config, source: str) -> str:
    """``auxrl config``: the resolved config as YAML, then every valid key with type and default."""
    rows = config_keys() + task_keys()
    width = max(len(r.key) for r in rows)
    type_width = min(28, max(len(r.type) for r in rows))
    lines = [
        f"# Resolved config ({source}); this is what `auxrl train` would run and save as config.yaml.",
        yaml.safe_dump(to_dict(cfg), sort_keys=False).rstrip(),
        "",
        "# Every key: override it with key=value (values are YAML). TYPE, DEFAULT, what it does.",
    ]
    return "\n".join(lines + [_row(r, width, type_width) for r in rows])


def describe_keys(keys: list[str], cfg: Config | None = None) -> str:
    """``auxrl config KEY``: each key (or every key below a section such as ``ppo`` or
    ``aux.tasks.pixel_control``) with its type, default, help and, given a config, its value."""
    rows = config_keys() + task_keys()
    lines = []
    flat = to_dict(cfg) if cfg is not None else {}
    for key in keys:
        found = [r for r in rows if r.key == key or r.key.startswith(f"{key}.")]
        if not found:
            close = difflib.get_close_matches(key, [r.key for r in rows], n=1)
            hint = f"Did you mean {close[0]!r}? " if close else ""
            raise ConfigError(f"No config key {key!r}. {hint}(`auxrl config cartpole` lists every key.)")
        for r in found:
            lines.append(f"{r.key}: {r.type} (default {_inline(r.default)})")
            if cfg is not None:
                value = _lookup(flat, r.key)
                if value is not _MISSING:
                    lines.append(f"  value here: {_inline(value)}")
            if r.help:
                lines += textwrap.wrap(r.help, 96, initial_indent="  ", subsequent_indent="  ")
    return "\n".join(lines)


def is_key(text: str) -> bool:
    """Whether ``text`` is a config key or section (``ppo.lr``, ``ppo``, ``aux.tasks.next_state``),
    as opposed to a config file or a shipped config's name."""
    if text.endswith((".yaml", ".yml")) or "=" in text or "/" in text:
        return False
    sections = {r.key.partition(".")[0] for r in config_keys()}
    return text in sections or text.partition(".")[0] in sections and "." in text


_MISSING = object()


def _lookup(data: dict[str, Any], key: str) -> Any:
    node: Any = data
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def key_summary() -> str:
    """The keys of each config section on a few lines (for ``auxrl train --help``)."""
    sections: dict[str, list[str]] = {}
    for r in config_keys():
        head, _, rest = r.key.partition(".")
        sections.setdefault(head if rest else "(top level)", []).append(rest or head)
    aux = sections.setdefault("aux", [])
    aux[aux.index("tasks")] = "tasks.<name>.<key>"
    return "\n".join(
        textwrap.fill(f"{name}: {', '.join(keys)}", 100, initial_indent="  ", subsequent_indent="      ")
        for name, keys in sections.items()
    )
