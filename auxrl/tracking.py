"""Experiment tracking with Weights & Biases (``log.wandb=true``), the way CleanRL's ``--track`` does it.

Every scalar written to TensorBoard is also logged to a W&B run, with the env step as
``global_step`` (the x-axis of every chart), and the resolved config is the run's config. The W&B
run is named after the run directory, and its files live in ``RUN_DIR/wandb/``. A resumed run
(``auxrl train --resume``) continues the same W&B run; unlike TensorBoard, W&B cannot drop the
points logged after the checkpoint, so a resume after a crash may show a few steps twice.

Settings: ``log.wandb_project``, ``log.wandb_entity``, ``log.wandb_group``; W&B's own environment
variables apply as usual (``WANDB_MODE=offline`` logs to disk, ``wandb sync`` uploads later;
``WANDB_API_KEY``). Needs the ``wandb`` extra: ``pip install "auxrl[wandb]"``.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from auxrl.config import LogConfig

RUN_ID_FILE = "wandb_run_id"  # in the run directory: what --resume continues


def check_wandb() -> None:
    """Fail at start-up, before anything is written, when ``log.wandb=true`` cannot work."""
    try:
        import wandb  # noqa: F401
    except ImportError:
        raise ImportError(
            'log.wandb=true needs the wandb package: pip install "auxrl[wandb]" (or drop log.wandb).'
        ) from None


class WandbMirror:
    """A W&B run that receives the Logger's scalars."""

    def __init__(self, cfg: LogConfig, run_dir: Path, config: dict[str, Any], resumed: bool) -> None:
        import wandb

        id_file = run_dir / RUN_ID_FILE
        fresh = not (resumed and id_file.is_file())
        if fresh:
            run_id, resume = secrets.token_hex(8), None
            id_file.write_text(run_id + "\n")
        else:
            run_id, resume = id_file.read_text().strip(), "allow"
        try:
            self.run = wandb.init(
                project=cfg.wandb_project,
                entity=cfg.wandb_entity,
                group=cfg.wandb_group,
                name=run_dir.resolve().name,
                id=run_id,
                resume=resume,
                dir=str(run_dir),
                config=config,
                # A library must not take over the process: no stdout capture, no signal handlers.
                settings=wandb.Settings(console="off", quiet=True),
            )
        except wandb.Error as err:  # e.g. no API key: the user's setup, not a bug in the run
            if fresh:
                id_file.unlink(missing_ok=True)
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise ValueError(
                f"log.wandb=true: W&B did not start ({reason}). Log in with `wandb login` (or set "
                f"WANDB_API_KEY), log offline with WANDB_MODE=offline, or drop log.wandb."
            ) from None
        # Every metric is plotted against the env step, logged with it (several episodes can end
        # at one step, so W&B's own step counter cannot be the env step).
        self.run.define_metric("global_step")
        self.run.define_metric("*", step_metric="global_step")

    def log(self, values: dict[str, float], step: int) -> None:
        self.run.log({**values, "global_step": step})

    def close(self) -> None:
        self.run.finish()
