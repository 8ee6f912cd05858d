"""The seam between a study's runner and where its runs execute: the types of auxrl/study/backends.py.

:class:`Work` (what one run needs done), :class:`Outcome` (how it ended), :class:`Backend` (what
runs works: ``slots``, ``submit``, ``wait``, ``running``, ``stop``, ``close``) and
:class:`BackendOptions` (where and with what). Their contract is backends.py's module docstring;
they live here so that the backends in other modules (auxrl/study/cluster.py) and the registry
in backends.py, which imports those modules when a backend is chosen, import them from one place
without importing each other.
"""

from __future__ import annotations

import shlex
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Work:
    """What one run needs done now: commands run in order, each after the previous exited 0."""

    key: str  # the run's name, unique in a study
    commands: tuple[tuple[str, ...], ...]
    log: Path  # output of every command, appended (each after a ``$ command`` line)
    env: Mapping[str, str] = field(default_factory=dict)  # added to the environment (e.g. threads)
    cwd: Path | None = None


@dataclass(frozen=True)
class Outcome:
    """How a work ended: the index of its last command run and that command's exit code."""

    work: Work
    returncode: int  # 0: every command succeeded
    command: int
    interrupted: bool = False  # stopped by Backend.stop()


class Backend(ABC):
    """Runs :class:`Work` items; see the module docstring for the contract."""

    name: str
    slots: int

    @abstractmethod
    def submit(self, work: Work) -> None: ...

    @abstractmethod
    def wait(self, timeout: float) -> list[Outcome]: ...

    @abstractmethod
    def running(self) -> dict[str, tuple[Work, int]]: ...

    @abstractmethod
    def stop(self) -> list[Outcome]: ...

    def close(self) -> None:  # noqa: B027 (optional: most backends hold nothing)
        """Release what the backend holds (a cluster connection); called once, at the end."""


@dataclass(frozen=True)
class BackendOptions:
    """Where and with what each run executes (``auxrl study`` options); each backend reads its own."""

    cpus_per_run: int = 1  # ray: num_cpus, slurm: cpus_per_task (and every run's OMP_NUM_THREADS)
    gpus_per_run: float = 0.0  # ray: num_gpus (a fraction shares a GPU), slurm: gpus_per_node
    ray_address: str = "auto"  # ray.init(address=...); "local": start a Ray instance here
    slurm: Mapping[str, Any] = field(default_factory=dict)  # submitit parameters (--slurm KEY=VALUE)
    folder: Path | None = None  # where a backend keeps its own files (submitit's job folder)


def command_index(work: Work, text: str) -> int | None:
    """The index of the last of ``work``'s commands whose ``$ command`` line is in ``text`` (a log's
    part written since the work started), or None: how the cluster backends follow a remote work."""
    found = None
    for index, command in enumerate(work.commands):
        if f"$ {shlex.join(command)}\n" in text:
            found = index
    return found
