"""Finding auxiliary tasks: built-in names, ``package.module:ClassName`` paths, entry points."""

from __future__ import annotations

import importlib
import importlib.metadata
from typing import Any

from auxrl.config import AuxConfig, ConfigError, build
from auxrl.tasks.base import AuxTask

BUILTINS = {
    "reward_prediction": "auxrl.tasks.reward_prediction:RewardPrediction",
    "pixel_control": "auxrl.tasks.pixel_control:PixelControl",
    "next_state": "auxrl.tasks.next_state:NextStatePrediction",
    "state_prediction": "auxrl.tasks.state_prediction:StatePrediction",
    "augment_consistency": "auxrl.tasks.augment_consistency:AugmentConsistency",
}
ENTRY_POINT_GROUP = "auxrl.aux_tasks"


def _entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def _plugin_failed(type_name: str, what: str, err: Exception) -> ConfigError:
    """A plugin's own code raised while it was imported: one line naming it, not a traceback."""
    message = (str(err).strip().splitlines() or [""])[0]
    return ConfigError(
        f"Aux task {type_name!r}: importing {what} raised {type(err).__name__}"
        f"{f': {message}' if message else ''}. Fix that module (importing it in Python shows the "
        f"traceback), or take the task out of the config (a disabled task is still imported)."
    )


def _import_path(path: str, plugin: bool = True) -> Any:
    module_name, _, attr = path.partition(":")
    if not attr:
        raise ConfigError(
            f"Aux task {path!r} is neither a built-in nor a registered name, and not an import "
            f"path of the form package.module:ClassName. Available: {', '.join(available())}."
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(
            f"Aux task {path!r}: cannot import {module_name!r} ({err}). Install it or add its folder "
            f"to PYTHONPATH (e.g. PYTHONPATH=. auxrl ...)."
        ) from None
    except Exception as err:
        if not plugin:  # auxrl's own tasks: a bug, with its traceback
            raise
        raise _plugin_failed(path, repr(module_name), err) from err
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ConfigError(f"Aux task {path!r}: module {module_name!r} has no {attr!r}.") from None


def resolve(type_name: str) -> type[AuxTask]:
    """A task class from a built-in name, an entry-point name or an import path."""
    if type_name in BUILTINS:
        cls = _import_path(BUILTINS[type_name], plugin=False)
    elif type_name in (eps := _entry_points()):
        ep = eps[type_name]
        try:
            cls = ep.load()
        except Exception as err:  # ImportError included: the package's module, or what it imports
            dist = f" of {ep.dist.name}" if getattr(ep, "dist", None) is not None else ""
            raise _plugin_failed(
                type_name, f"its entry point{dist} ({ENTRY_POINT_GROUP}: {ep.value})", err
            ) from err
    else:
        cls = _import_path(type_name)
    if not (isinstance(cls, type) and issubclass(cls, AuxTask)):
        raise ConfigError(f"Aux task {type_name!r} is {cls!r}, not a subclass of auxrl.tasks.AuxTask.")
    if cls.loss is AuxTask.loss:
        what = "the AuxTask base class itself" if cls is AuxTask else f"{cls.__name__} does not define loss()"
        raise ConfigError(
            f"Aux task {type_name!r}: {what}; give a subclass of AuxTask that implements "
            f"loss(seq, encode) (see `auxrl tasks`)."
        )
    return cls


def available() -> list[str]:
    return sorted(set(BUILTINS) | set(_entry_points()))


def describe() -> list[tuple[str, str]]:
    """(name, one-line description) of every built-in and registered task."""
    rows = []
    for name in available():
        try:
            rows.append((name, resolve(name).description))
        except Exception as err:  # a broken third-party plugin must not hide the others
            rows.append((name, f"(failed to load: {err})"))
    return rows


def enabled_tasks(aux: AuxConfig) -> dict[str, tuple[type[AuxTask], Any]]:
    """name -> (task class, its typed Config) for every enabled task; checks every parameter."""
    if not aux.enabled:
        return {}
    out = {}
    for name, spec in aux.tasks.items():
        if not spec.enabled:
            continue
        cls = resolve(spec.type or name)
        out[name] = (cls, build(cls.Config, spec.params, f"aux.tasks.{name}"))
    return out
