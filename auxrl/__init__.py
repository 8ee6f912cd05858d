"""auxrl: PPO agents built as multi-headed models (shared torso, policy/value/auxiliary heads).

The Python API (README, "Python API"): :func:`train` a config, :func:`load_agent` a trained run
and :meth:`TrainedAgent.predict` actions with it; :func:`load_config` builds or inspects configs.
"""

from auxrl.api import train
from auxrl.config import Config, load_config
from auxrl.inference import TrainedAgent, load_agent
from auxrl.tasks.base import AuxOutput, AuxTask, Needs, Sequences, TaskContext, TaskMismatch

__version__ = "0.1.0"

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
    "train",
]
