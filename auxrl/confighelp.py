"""Every config key with its type, default and help, from the config dataclasses themselves.

Used by ``auxrl config`` and ``auxrl train --help``. The help text of a key is the comment next
to (or just above) its field in the dataclass source (``auxrl/config.py``, a task's ``Config``),
so the code stays the one place where keys are documented.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import textwrap
import typing
from dataclasses import dataclass
from typing import Any

import yaml

from auxrl.config import ATARI_ENV_KEYS, GYM_ENV_KEYS, AuxTaskConfig, Config, _type_name, to_dict

_FIELD = re.compile(r"^\s+(\w+)\s*:\s*[^=]+?(?:=.*?)?(?:#\s*(.*))?$")
_COMMENT = re.compile(r"^\s+#\s?(.*)$")


@dataclass
class KeyInfo:
    key: str
    type: str
    default: Any
    help: str


def field_help(cls: type) -> dict[str, str]:
    """Field name -> its comment in ``cls``'s source (trailing, else the comment lines above it)."""
    try:
        lines = inspect.getsource(cls).splitlines()
    except (OSError, TypeError):  # no source (a frozen app): keys are listed without help
        return {}
    names = {f.name for f in dataclasses.fields(cls)}
    out: dict[str, str] = {}
    above: list[str] = []
    for line in lines[1:]:
        comment = _COMMENT.match(line)
        if comment:
            above.append(comment.group(1).strip())
            continue
        match = _FIELD.match(line)
        if match and match.group(1) in names:
            text = (match.group(2) or "").strip() or " ".join(above)
            out[match.group(1)] = text
        above = []
    return out


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def config_keys(cls: type = Config, prefix: str = "") -> list[KeyInfo]:
    """Every settable key below ``cls`` (sections expanded; ``aux.tasks`` is listed by
    :func:`task_keys`)."""
    hints = typing.get_type_hints(cls)
    docs = field_help(cls)
    out = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(tp):
            out += config_keys(tp, f"{key}.")
            continue
        help_text = docs.get(f.name, "")
        if cls.__name__ == "EnvConfig" and f.name in ATARI_ENV_KEYS + GYM_ENV_KEYS:
            only = "[Atari ids only]" if f.name in ATARI_ENV_KEYS else "[gymnasium ids only]"
            help_text = f"{only} {help_text.removeprefix('Atari path only.')}".strip()
        out.append(KeyInfo(key, _pretty(_type_name(tp)), _default(f), help_text))
    return out


def _pretty(type_name: str) -> str:
    return type_name.replace("typing.", "").replace("auxrl.config.", "")


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
    for r in rows:
        default = yaml.safe_dump(r.default, default_flow_style=True).strip().removesuffix("...").strip()
        line = f"{r.key:<{width}}  {r.type:<{type_width}}  {default}"
        lines.append(f"{line}  # {r.help}" if r.help else line)
    return "\n".join(lines)


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
