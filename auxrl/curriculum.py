"""Curriculum stages and their promotion rules.

A stage is the base config with the stage's dotted overrides applied (env settings, aux
weights, ...). It ends when its step budget is spent or when the mean unclipped return of its
last ``window`` episodes reaches ``return_threshold``, whichever comes first. The torso and the
heads carry over; the env, rollout storage and replay are rebuilt for each stage.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from auxrl.config import Config, ConfigError, to_dict
from auxrl.configfile import from_dict


@dataclass
class Stage:
    index: int
    name: str
    cfg: Config  # the resolved config for this stage
    steps: int  # step budget (0: until ppo.total_steps)
    return_threshold: float | None
    window: int

    def finished(self, steps_in_stage: int, recent_returns: list[float]) -> str | None:
        """Why the stage is over ("budget" / "threshold"), or None while it goes on."""
        if self.steps > 0 and steps_in_stage >= self.steps:
            return "budget"
        if (
            self.return_threshold is not None
            and len(recent_returns) >= self.window
            and float(np.mean(recent_returns[-self.window :])) >= self.return_threshold
        ):
            return "threshold"
        return None


def plan_stages(cfg: Config) -> list[Stage]:
    """The run's stages; a config without a curriculum is one stage."""
    if not cfg.curriculum.stages:
        return [Stage(0, "main", cfg, 0, None, cfg.log.return_window)]
    base = to_dict(cfg)
    base["curriculum"] = {"stages": []}
    stages = []
    for i, spec in enumerate(cfg.curriculum.stages):
        # Only env.* and aux.* are read per stage; the rest is the run's (a stage's log.* or ppo.*
        # would be ignored or break the optimizer and schedule), so say so rather than ignore it.
        bad = [k for k in spec.overrides if k.split(".")[0] not in ("env", "aux")]
        if bad:
            raise ConfigError(
                f"curriculum.stages[{i}].overrides: {bad} cannot change between stages; stages "
                f"may change env.* and aux.* (the rest is the run's: set it in the base config)."
            )
        overrides = [f"{k}={_yaml(v)}" for k, v in spec.overrides.items()]
        try:
            stage_cfg = from_dict(base, overrides)
        except ConfigError as err:
            raise ConfigError(f"curriculum.stages[{i}] ({spec.name or i}): {err}") from None
        stages.append(
            Stage(i, spec.name or f"stage{i}", stage_cfg, spec.steps, spec.return_threshold, spec.window)
        )
    return stages


def _yaml(value: object) -> str:
    import yaml

    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
