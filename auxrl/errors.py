"""Errors shown to users as one line (the CLI prints them and exits with code 2)."""

from __future__ import annotations


class ConfigError(ValueError):
    """A config file or override that cannot be turned into a valid :class:`auxrl.config.Config`."""
