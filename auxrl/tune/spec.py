"""A tuning spec: which config keys to search, over what, at which budget, and how to prune.

A YAML file validated by :class:`TuneSpec` with the rules of the run config (unknown keys, wrong
types and out-of-range values are one-line errors naming the key; each field's docstring is its
help). :func:`load_tune_spec` also builds the run config at both ends of every range and with
every choice, so a typo in a key or a value the config refuses stops the search before anything
trains.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from auxrl.config import ConfigError, Int, build
from auxrl.configfile import apply_override, load_config, override_texts, parse_override
from auxrl.study.spec import read_yaml, resolve_base

EXAMPLE = "configs/tune/cartpole.yaml"

STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, use_attribute_docstrings=True)
# Keys the tuner sets on every trial's runs; the search space and extra_overrides may not.
RESERVED_KEYS = {
    "seed": "seeds",
    "ppo.total_steps": "steps",
    "log.checkpoint_every": "evals (a checkpoint at each evaluation)",
    "log.keep_checkpoints": "the tuner (it keeps every checkpoint until it has evaluated it)",
}


class SearchParam(BaseModel):
    """One key's range: float or int from ``low`` to ``high`` (``log``: log-uniform; ``step``: a
    grid), or one of ``choices``."""

    model_config = STRICT

    type: Literal["float", "int", "categorical"]
    """float, int (a range from low to high), or categorical (one of choices)."""
    low: float | None = None
    """The smallest value (float and int)."""
    high: float | None = None
    """The largest value (float and int)."""
    log: bool = False
    """Sample on a log scale (float and int; low > 0): for learning rates and weights."""
    step: float | None = None
    """Only values low + k * step (float and int; not with log)."""
    choices: list[Any] | None = None
    """The values to choose from (categorical): numbers, strings, true / false."""


class SamplerSpec(BaseModel):
    """Optuna's sampler: which settings the next trial tries."""

    model_config = STRICT

    type: Literal["tpe", "random"] = "tpe"
    """tpe: Optuna's TPESampler (models which settings did well); random: uniform at random."""
    seed: Int = 0
    """The sampler's seed: one process with --jobs 1 then tries the same settings every time."""
    startup_trials: Int = Field(10, ge=1)
    """tpe: trials sampled at random before the model takes over (Optuna's n_startup_trials)."""


class PrunerSpec(BaseModel):
    """Optuna's pruner: which trials stop early."""

    model_config = STRICT

    type: Literal["median", "none"] = "median"
    """median: MedianPruner (stop a trial whose best evaluation so far is below the median of the
    complete trials' at the same evaluation); none: every trial trains to the end."""
    startup_trials: Int = Field(5, ge=0)
    """Complete trials before any trial is pruned (Optuna's n_startup_trials)."""
    warmup_evals: Int = Field(0, ge=0)
    """Evaluations of a trial that never prune it: 1 lets it pass the first one (Optuna's
    n_warmup_steps)."""


class TuneSpec(BaseModel):
    """A search: every trial trains ``base`` with sampled values of the search space's keys."""

    model_config = STRICT

    base: str
    """The run config every trial starts from: a shipped config's name or a YAML path, relative to
    the spec file."""
    env: str | None = None
    """The env id every trial trains on (env.id). null: the base config's."""
    steps: Int = Field(ge=1)
    """ppo.total_steps of every run."""
    seeds: list[Int] = Field([1], min_length=1)
    """The seeds of a trial: one run each, in parallel; the trial's score is their mean."""
    eval_episodes: Int = Field(10, ge=1)
    """Whole games played on each evaluated checkpoint (auxrl eval's evaluation); their mean is
    its score."""
    evals: Int = Field(4, ge=1)
    """Evaluations per trial, at steps * k / evals (k = 1..evals): what the pruner compares.
    The last one, on the final checkpoint, is the trial's value."""
    direction: Literal["maximize", "minimize"] = "maximize"
    """maximize the score (returns), or minimize it."""
    search_space: dict[str, SearchParam] = Field(min_length=1)
    """Dotted config keys and their ranges, e.g. ppo.lr: {type: float, low: 1.0e-4, high: 3.0e-3,
    log: true} or aux.balance.method: {type: categorical, choices: [none, norm]}."""
    sampler: SamplerSpec = SamplerSpec()
    """How the next trial's values are picked."""
    pruner: PrunerSpec = PrunerSpec()
    """How trials are stopped early."""
    extra_overrides: list[str] | dict[str, Any] = []
    """key=value overrides (or a mapping) applied to every run before the searched values."""
    description: str = ""
    """What the search is for, in a line: the trials table's title."""


@dataclass(frozen=True)
class Tuning:
    """A checked spec with its base config resolved to a file."""

    spec: TuneSpec
    path: Path  # the spec file
    base_path: Path  # the base config file (absolute)

    def fixed_overrides(self) -> list[str]:
        """What every run of every trial gets before the searched values: the env, extra_overrides."""
        env = [f"env.id={self.spec.env}"] if self.spec.env else []
        return [*env, *override_texts(self.spec.extra_overrides)]

    def overrides(self, params: dict[str, Any], seed: int, checkpoint_every: int) -> list[str]:
        """The ``auxrl train`` overrides of one run of a trial."""
        return [
            *self.fixed_overrides(),
            *override_texts(params),
            f"seed={seed}",
            f"ppo.total_steps={self.spec.steps}",
            f"log.checkpoint_every={checkpoint_every}",
            "log.keep_checkpoints=0",
        ]


def _check_param(key: str, p: SearchParam) -> None:
    where = f"search_space.{key}"
    if p.type == "categorical":
        if not p.choices:
            raise ConfigError(f"{where}: type categorical needs choices, e.g. choices: [none, norm]")
        for choice in p.choices:
            if choice is not None and not isinstance(choice, (str, int, float, bool)):
                raise ConfigError(
                    f"{where}: choices are numbers, strings, true / false or null (Optuna stores them), "
                    f"got {choice!r}"
                )
        for name in ("low", "high", "step"):
            if getattr(p, name) is not None:
                raise ConfigError(f"{where}: {name} is for float and int; categorical takes choices only")
        if p.log:
            raise ConfigError(f"{where}: log is for float and int; categorical takes choices only")
        return
    if p.choices is not None:
        raise ConfigError(f"{where}: choices are for type categorical; {p.type} takes low and high")
    if p.low is None or p.high is None:
        raise ConfigError(f"{where}: type {p.type} needs low and high")
    if not p.low < p.high:
        raise ConfigError(f"{where}: low ({p.low:g}) must be below high ({p.high:g})")
    if p.type == "int":
        for name in ("low", "high", "step"):
            value = getattr(p, name)
            if value is not None and not float(value).is_integer():
                raise ConfigError(f"{where}: {name} of an int range must be a whole number, got {value:g}")
    if p.log and p.low <= 0:
        raise ConfigError(f"{where}: a log range needs low > 0, got {p.low:g}")
    if p.log and p.step is not None:
        raise ConfigError(f"{where}: give log or step, not both (Optuna samples one or the other)")
    if p.step is not None and p.step <= 0:
        raise ConfigError(f"{where}: step must be > 0, got {p.step:g}")


def sample_values(p: SearchParam) -> list[Any]:
    """Values that span a param's range (its ends, or every choice): checked before any trial."""
    if p.type == "categorical":
        return list(p.choices or [])
    if p.type == "int":
        return [int(p.low or 0), int(p.high or 0)]
    return [p.low, p.high]


def _check_keys(where: str, overrides: list[str]) -> None:
    for text in overrides:
        try:
            pairs = apply_override({}, *parse_override(text))
        except ConfigError as err:
            raise ConfigError(f"{where}: {err}") from None
        for key, _ in pairs:
            if key in RESERVED_KEYS:
                raise ConfigError(f"{where}: {key} is set by the tuner ({RESERVED_KEYS[key]}); drop it")


def parse_tune_spec(data: dict[str, Any], where: str) -> TuneSpec:
    """Validate plain data into a spec and check what involves several keys."""
    try:
        spec = build(TuneSpec, data)
    except ConfigError as err:
        raise ConfigError(f"{where}: {str(err).replace('Unknown config key', 'Unknown key')}") from None
    try:
        twice = sorted({str(s) for s in spec.seeds if spec.seeds.count(s) > 1})
        if twice:
            raise ConfigError(f"seeds: {twice[0]} is listed twice")
        for key, param in spec.search_space.items():
            _check_param(key, param)
            _check_keys(f"search_space.{key}", [f"{key}=0"])
        _check_keys("extra_overrides", override_texts(spec.extra_overrides))
        if spec.env is not None and "env.id" in spec.search_space:
            raise ConfigError("search_space: env.id is set by env; search one or the other")
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None
    return spec


def load_tune_spec(path: str | Path, *, check_configs: bool = True) -> Tuning:
    """Read, validate and resolve a spec; with ``check_configs`` also build the run config with
    each end of every range and each choice (the others at their first value)."""
    path = Path(path)
    try:
        data = read_yaml(path)
    except ConfigError as err:  # its words are a study spec's
        text = str(err).replace("study spec", "tuning spec")
        if "a tuning spec is a YAML mapping" in text:
            text = f"{path}: a tuning spec is a YAML mapping of base, steps and search_space (see {EXAMPLE})."
        elif "is a folder" in text:
            text = f"{path} is a folder; give a tuning spec YAML file (e.g. {EXAMPLE})."
        raise ConfigError(text) from None
    spec = parse_tune_spec(data, str(path))
    tuning = Tuning(spec, path, resolve_base(spec.base, path))
    if check_configs:
        from auxrl.build import load_tasks
        from auxrl.curriculum import plan_stages

        first = {key: sample_values(p)[0] for key, p in spec.search_space.items()}
        for key, param in spec.search_space.items():
            for value in sample_values(param):
                params = {**first, key: value}
                try:
                    cfg = load_config(tuning.base_path, tuning.overrides(params, spec.seeds[0], 0))
                    for stage in plan_stages(cfg):
                        load_tasks(stage.cfg.aux)
                except ConfigError as err:
                    raise ConfigError(f"{path}: search_space.{key} = {value!r}: {err}") from None
    return tuning
