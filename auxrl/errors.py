"""Errors shown to users as one line: the CLI prints them and exits with code 2 (their input) or 1
(a failure outside it)."""

from __future__ import annotations


class ConfigError(ValueError):
    """A config file or override that cannot be turned into a valid :class:`auxrl.config.Config`."""


class EnvWorkerDied(EOFError):
    """An async env worker process ended (crashed, killed) without answering: one line naming the
    env, the worker and how it ended (exit code 1). An ``EOFError``, as gymnasium's own error for
    it is, so the trainer's check for workers ended by a signal that stopped the whole run still
    sees it."""
