"""auxrl: PPO agents built as multi-headed models (shared torso, policy/value/auxiliary heads)."""

from auxrl.config import Config, load_config
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
    "load_config",
    "train",
]


def train(*args, **kwargs):
    """Shortcut for :func:`auxrl.trainer.train` (imported lazily: it pulls in gymnasium)."""
    from auxrl.trainer import train as _train

    return _train(*args, **kwargs)
