"""Auxiliary tasks: the interface (base), built-ins, registry, replay and loss combination."""

from auxrl.tasks.base import AuxOutput, AuxTask, Needs, Sequences, TaskContext, TaskMismatch

__all__ = ["AuxOutput", "AuxTask", "Needs", "Sequences", "TaskContext", "TaskMismatch"]
