"""A study spec: which settings to compare, on which envs, with how many seeds and steps.

A YAML file validated by :class:`StudySpec` (the rules of the run config: unknown keys, wrong
types and out-of-range values are one-line errors naming the key; each field's docstring is its
help). :func:`load_spec` also builds every env x variant run config once, so a typo in an
override stops the study before anything is trained, not an hour into it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from auxrl.config import ConfigError, Int, build
from auxrl.configfile import (
    DuplicateKey,
    _floats_in_yaml,
    _UniqueKeyLoader,
    _yaml_problem,
    apply_override,
    load_config,
    override_texts,
    parse_override,
    resolve_config_path,
    run_name_for_env,
    shipped_config_names,
)
from auxrl.study.scores import ATARI_100K_GAMES, RANDOM_SCORES, atari_game

# Keys every run gets from the spec itself: a variant or extra_overrides setting them would make
# runs that the directory names and the report mislabel.
RESERVED_KEYS = {
    "seed": "seeds",
    "env.id": "envs",
    "ppo.total_steps": "steps",
    "name": "the variant's name",
}
_VARIANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_SCORE_TAG = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)+$")  # a TensorBoard tag: crafter/score


class StudySpec(BaseModel):
    """A study: every env x variant x seed is one run of ``base`` with the variant's overrides."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, use_attribute_docstrings=True)

    base: str
    """The run config every run starts from: a shipped config's name (cartpole, atari100k, ...) or
    a YAML path, relative to the spec file."""
    envs: list[str] = Field(min_length=1)
    """Env ids to train on (each run sets env.id), e.g. [CartPole-v1] or [ALE/MsPacman-v5]."""
    variants: dict[str, list[str] | dict[str, Any]] = Field(min_length=1)
    """The settings compared, by name: each a list of key=value overrides or a mapping of dotted
    keys to values ([] or {}: the base config as it is)."""
    seeds: list[Int] = Field(min_length=1)
    """Seeds: every env x variant is trained once per seed."""
    steps: Int = Field(ge=1)
    """ppo.total_steps of every run."""
    eval_episodes: Int = Field(10, ge=1)
    """Whole games played on each run's final checkpoint (auxrl eval); their mean is its score."""
    score: str = "return"
    """What a run's score is: return (the mean return of its eval_episodes games), or an env score
    that its env family logs over the training episodes, e.g. crafter/score (the geometric mean of
    Crafter's 22 success rates over every training episode, as its paper scores agents), read at the
    run's final step (score.json's train_scores)."""
    baseline: str | None = None
    """The variant P(improvement) compares every other one with. null: the first variant."""
    normalize: Literal["none", "hns", "minmax"] = "none"
    """How the envs' scores are put on one scale before aggregating: hns (Atari ids: 0 random
    agent, 1 human), minmax (each env's [min, max] from ranges), none (the raw score; one env only)."""
    ranges: dict[str, list[float]] = {}
    """With normalize: minmax, each env's [min, max] score (e.g. random play and the best
    possible), mapped to 0 and 1."""
    extra_overrides: list[str] | dict[str, Any] = []
    """key=value overrides (or a mapping) applied to every run before the variant's own."""
    description: str = ""
    """What the study asks, in a line: the report's title."""
    probe_frames: Int | None = Field(None, ge=1000)
    """auxrl probe on every run's final checkpoint, with this many random-agent frames (10000: about
    a minute of CPU per run), where the probe has labels for the env (the AtariARI games; other envs
    are not probed); the report puts the probe F1 beside the scores. null: no probe."""


@dataclass(frozen=True)
class Run:
    """One run of a study: an env, a variant and a seed."""

    env: str
    variant: str
    seed: int

    @property
    def name(self) -> str:
        """Its directory name under ``OUT/runs``: ``<env>__<variant>__<seed>``."""
        return f"{env_slug(self.env)}__{self.variant}__{self.seed}"


def env_slug(env_id: str) -> str:
    """An env id as a directory-name part: ``ALE/Pong-v5`` -> ``Pong-v5``."""
    return run_name_for_env(env_id)


@dataclass(frozen=True)
class Study:
    """A checked spec with its base config resolved to a file."""

    spec: StudySpec
    path: Path  # the spec file
    base_path: Path  # the base config file (absolute), for the training commands

    @property
    def baseline(self) -> str:
        return self.spec.baseline or next(iter(self.spec.variants))

    @property
    def variants(self) -> list[str]:
        return list(self.spec.variants)

    def runs(self) -> list[Run]:
        """Seed-major, baseline first: an interrupted study has matched runs on most envs."""
        order = sorted(self.variants, key=lambda v: v != self.baseline)
        return [Run(e, v, s) for s in self.spec.seeds for e in self.spec.envs for v in order]

    # What the runner (auxrl/study/runner.py, its Plan) asks of every run.
    @property
    def eval_episodes(self) -> int:
        return self.spec.eval_episodes

    def describe(self) -> str:
        """The matrix, e.g. ``2 envs x 2 variants x 3 seeds``."""
        parts = [(self.spec.envs, "env"), (self.variants, "variant"), (self.spec.seeds, "seed")]
        return " x ".join(f"{len(xs)} {noun}{'' if len(xs) == 1 else 's'}" for xs, noun in parts)

    def steps_of(self, run: Run) -> int:
        return self.spec.steps

    def train_args(self, run: Run, runs_dir: Path) -> list[str]:
        """``auxrl train``'s config and overrides for ``run``."""
        return [str(self.base_path), *self.overrides(run)]

    def ready(self, run: Run, runs_dir: Path) -> bool:
        """Every run of a spec can start at once (they depend on none of the others)."""
        return True

    def probe_frames(self, run: Run) -> int | None:
        """Frames of ``run``'s probe, or None: not probed (no probe_frames, or no labels for its env)."""
        from auxrl.envs.atari_ram import game_of

        frames = self.spec.probe_frames
        return frames if frames is not None and game_of(run.env) is not None else None

    def overrides_of(self, variant: str) -> list[str]:
        """A variant's own overrides as key=value strings."""
        return override_texts(self.spec.variants[variant])

    def overrides(self, run: Run) -> list[str]:
        """The ``auxrl train`` overrides of ``run``: the spec's keys, extra_overrides, the variant's."""
        return [
            f"env.id={run.env}",
            f"seed={run.seed}",
            f"name={run.variant}",
            f"ppo.total_steps={self.spec.steps}",
            *override_texts(self.spec.extra_overrides),
            *self.overrides_of(run.variant),
        ]


def read_yaml(path: Path) -> dict[str, Any]:
    """A YAML mapping (a key given twice in one mapping is an error, as in config files)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"No study spec {str(path)!r}: give the path of a YAML file.") from None
    except IsADirectoryError:
        raise ConfigError(
            f"{path} is a folder; give a study spec YAML file (`auxrl study report {path}` reports a study's "
            f"output folder)."
        ) from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 YAML file.") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except DuplicateKey as err:
        raise ConfigError(
            f"{path}, line {err.line}: key {err.key!r} is given twice in one mapping (first at line "
            f"{err.first_line}); keep one of them."
        ) from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({_yaml_problem(err)}).") from None
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: a study spec is a YAML mapping with base, envs, variants, seeds and steps "
            f"(see configs/studies/cartpole_heads.yaml)."
        )
    return _floats_in_yaml(data)


def parse_spec(data: dict[str, Any], where: str) -> StudySpec:
    """Validate plain data into a spec and check what involves several keys."""
    try:
        spec = build(StudySpec, data)
    except ConfigError as err:
        raise ConfigError(f"{where}: {str(err).replace('Unknown config key', 'Unknown key')}") from None
    try:
        check(spec)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None
    return spec


def check(spec: StudySpec) -> None:
    """The checks across keys; a ConfigError naming the key otherwise."""
    for key, values in (("envs", spec.envs), ("seeds", spec.seeds)):
        twice = sorted({str(x) for x in values if values.count(x) > 1})
        if twice:
            raise ConfigError(f"{key}: {twice[0]} is listed twice")
    slugs: dict[str, str] = {}
    for env in spec.envs:
        if env_slug(env) in slugs:
            raise ConfigError(
                f"envs: {slugs[env_slug(env)]} and {env} would share the run directories {env_slug(env)}__*"
            )
        slugs[env_slug(env)] = env
    for name in spec.variants:
        if not _VARIANT_NAME.match(name) or "__" in name:
            raise ConfigError(
                f"variants: {name!r} cannot name a variant: a name is part of its runs' directory names, "
                f"so letters, digits, '_', '.' and '-' only, no '__' (e.g. lr_hi)"
            )
    if spec.baseline is not None and spec.baseline not in spec.variants:
        raise ConfigError(
            f"baseline: {spec.baseline!r} is not one of the variants ({', '.join(spec.variants)})"
        )
    for where, overrides in (
        ("extra_overrides", spec.extra_overrides),
        *((f"variants.{name}", given) for name, given in spec.variants.items()),
    ):
        _check_overrides(where, overrides)
    if spec.score != "return" and not _SCORE_TAG.match(spec.score):
        raise ConfigError(
            f"score: {spec.score!r} is neither return nor the tag of an env score its family logs "
            f"(e.g. crafter/score)"
        )
    _check_normalize(spec)


def _check_overrides(where: str, overrides: list[str] | dict[str, Any]) -> None:
    for text in override_texts(overrides):
        try:
            pairs = apply_override({}, *parse_override(text))
        except ConfigError as err:
            raise ConfigError(f"{where}: {err}") from None
        for key, _ in pairs:
            if key in RESERVED_KEYS:
                raise ConfigError(
                    f"{where}: {key} is set by the study ({RESERVED_KEYS[key]}); drop it from the overrides"
                )


def _check_normalize(spec: StudySpec) -> None:
    if spec.normalize == "hns":
        for env in spec.envs:
            game = atari_game(env)
            if game not in RANDOM_SCORES:
                raise ConfigError(
                    f"normalize: hns has no human / random reference scores for {env} (it has them for "
                    f"ALE/<Game>-v5 of {', '.join(ATARI_100K_GAMES)}); use normalize: minmax with ranges"
                )
    if spec.normalize != "minmax" and spec.ranges:
        raise ConfigError(f"ranges: given, but normalize is {spec.normalize}; set normalize: minmax")
    if spec.normalize == "minmax":
        for env in spec.envs:
            pair = spec.ranges.get(env)
            if pair is None:
                raise ConfigError(f"ranges: no [min, max] for {env} (normalize: minmax needs one per env)")
            if len(pair) != 2 or not pair[0] < pair[1]:
                raise ConfigError(f"ranges.{env}: give [min, max] with min < max, got {pair}")
        unknown = sorted(set(spec.ranges) - set(spec.envs))
        if unknown:
            raise ConfigError(f"ranges: {unknown[0]} is not one of the envs ({', '.join(spec.envs)})")
    if spec.normalize == "none" and len(spec.envs) > 1:
        raise ConfigError(
            "normalize: none aggregates raw scores, which mixes the envs' scales; with several envs "
            "use hns (Atari ids) or minmax with ranges"
        )


def resolve_base(base: str, spec_path: Path) -> Path:
    """The base config file: a path relative to the spec file, else a shipped name or a path."""
    beside = spec_path.parent / base
    if beside.is_file():
        return beside.resolve()
    try:
        return resolve_config_path(base).resolve()
    except ConfigError:
        raise ConfigError(
            f"{spec_path}: base: no config {base!r}: give a shipped config's name "
            f"({', '.join(shipped_config_names())}) or a YAML path relative to the spec file"
        ) from None


def load_spec(path: str | Path, *, check_configs: bool = True) -> Study:
    """Read, validate and resolve a spec; with ``check_configs`` also build every env x variant
    run config (and resolve its tasks), as ``auxrl train`` would before training."""
    path = Path(path)
    spec = parse_spec(read_yaml(path), str(path))
    study = Study(spec, path, resolve_base(spec.base, path))
    if check_configs:
        from auxrl.build import load_tasks
        from auxrl.curriculum import plan_stages

        for env in spec.envs:
            for variant in spec.variants:
                try:
                    cfg = load_config(study.base_path, study.overrides(Run(env, variant, spec.seeds[0])))
                    for stage in plan_stages(cfg):
                        load_tasks(stage.cfg.aux)
                except ConfigError as err:
                    raise ConfigError(f"{path}: variants.{variant} on {env}: {err}") from None
            _check_score(spec.score, env, cfg.env.family)
    return study


def _check_score(score: str, env: str, family_name: str | None) -> None:
    """An env score must be one that ``env``'s family logs: a typo fails here, not after training."""
    if score == "return":
        return
    from auxrl.envs.family import family_for

    family = family_for(env, family_name)
    if score not in family.scores:
        has = ", ".join(family.scores) or "none"
        raise ConfigError(
            f"score: {env} ({family.name} family) logs no {score!r} (its env scores: {has}); "
            f"give one of them, or return"
        )
