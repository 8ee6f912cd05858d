"""The Python API: :func:`train` a config from a script or a notebook, then act with
``result.agent`` (or :func:`auxrl.load_agent`) and its ``predict(obs, deterministic=True)``. The
README's "Python API" section has a runnable example (tests/test_readme.py runs it)."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from auxrl import rundir
from auxrl.config import Config, to_dict
from auxrl.configfile import from_dict, load_config, override_texts


def train(
    config: str | Path | Config,
    overrides: Sequence[str] | Mapping[str, Any] | None = None,
    run_dir: str | Path | None = None,
    *,
    device: str = "auto",
    verbose: bool = True,
    resume: bool = False,
    overwrite: bool = False,
):
    """Train an agent and return a :class:`~auxrl.trainer.TrainResult` (``result.agent`` acts).

    :param config: a shipped config's name (``"cartpole"``), a YAML path, or a :class:`Config`.
    :param overrides: ``["ppo.lr=3e-4", "env.num_envs=4"]`` or ``{"ppo.lr": 3e-4}``, read as on the
        command line (configuring an ``aux.tasks.NAME`` turns the heads on; another ``env.id``
        names the run after it).
    :param run_dir: where the run is written (default ``runs/<name>__<seed>__<time>``).
    :param device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
    :param verbose: False: print nothing (no progress, no status lines); warnings still show.
    :param resume: continue the run in ``run_dir`` from its latest checkpoint.
    :param overwrite: delete a run already in ``run_dir`` and start anew (e.g. re-running a
        notebook cell).
    """
    from auxrl.trainer import train as _train

    texts = override_texts(overrides)
    if isinstance(config, Config):
        cfg = from_dict(to_dict(config), texts, follow=True)
    else:
        cfg = load_config(config, texts)
    run = functools.partial(
        _train, cfg, device=device, progress=verbose, resume=resume, overwrite=overwrite, verbose=verbose
    )
    try:
        if run_dir is None:  # made now: a run started in the same second gets another directory
            with rundir.default_run_dir(cfg.name, cfg.seed) as default:
                return run(default)
        return run(run_dir)
    except ValueError as err:  # the run-directory messages name the command line's options
        flags = [f for f in _FLAGS if f in str(err)]
        if not flags:
            raise
        said = ", ".join(f"{f} is {_FLAGS[f]}" for f in flags)
        raise type(err)(f"{err} (In Python: {said}.)") from None


_FLAGS = {"--resume": "resume=True", "--overwrite": "overwrite=True", "--run-dir": "run_dir"}
