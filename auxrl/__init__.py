"""auxrl: PPO agents built as multi-headed models (shared torso, policy/value/auxiliary heads).

The Python API (README, "Python API"): :func:`train` a config, :func:`load_agent` a trained run
and :meth:`TrainedAgent.predict` actions with it; :func:`load_config` builds or inspects configs.

The names below are imported on first use (PEP 562), so ``import auxrl.cli`` does not load torch
before the command line runs: ``auxrl --help`` answers at once, and a Ctrl-C while torch loads
ends the command quietly instead of with an import traceback.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_WHERE = {
    "train": "auxrl.api",
    "Config": "auxrl.config",
    "load_config": "auxrl.configfile",
    "TrainedAgent": "auxrl.inference",
    "load_agent": "auxrl.inference",
    "AuxOutput": "auxrl.tasks.base",
    "AuxTask": "auxrl.tasks.base",
    "Needs": "auxrl.tasks.base",
    "Sequences": "auxrl.tasks.base",
    "TaskContext": "auxrl.tasks.base",
    "TaskMismatch": "auxrl.tasks.base",
    "scale_free": "auxrl.tasks.base",
}
__all__ = [
    "AuxOutput",
    "AuxTask",
    "Config",
    "Needs",
    "Sequences",
    "TaskContext",
    "TaskMismatch",
    "TrainedAgent",
    "load_agent",
    "load_config",
    "scale_free",
    "train",
]

if TYPE_CHECKING:
    from auxrl.api import train
    from auxrl.config import Config
    from auxrl.configfile import load_config
    from auxrl.inference import TrainedAgent, load_agent
    from auxrl.tasks.base import AuxOutput, AuxTask, Needs, Sequences, TaskContext, TaskMismatch, scale_free


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name]), name)
    else:  # a submodule, e.g. auxrl.envs after a bare `import auxrl` (as the eager package gave)
        try:
            value = importlib.import_module(f"auxrl.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"auxrl.{name}":
                raise
            raise AttributeError(f"module 'auxrl' has no attribute {name!r}") from None
    globals()[name] = value  # imported once
    return value


def __dir__() -> list[str]:
    return sorted({*__all__, "__version__"})
