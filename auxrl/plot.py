"""Learning curves from runs' TensorBoard event files (``auxrl plot RUN_DIR ... --out curves.png``).

Each run is drawn as its episodic return against environment steps, smoothed like TensorBoard's
slider (a debiased exponential moving average over the logged points). Runs are grouped by what
they are: their config ``name``, their ``env.id``, and every config key (besides the seed and the
``log`` / ``perf`` settings, which do not change what is learned) in which runs of one name and
env differ, e.g. ``aux.enabled``. A group of several runs (the seeds of one setting) is drawn
thin, with its mean in bold over a shaded min..max band, both interpolated on a common step
grid that covers the steps all of them reached; its label names the keys that set it apart.
``labels`` (one per run) or ``group_by`` (config keys) choose the groups instead; runs of
different envs are never averaged. Needs the ``plot`` extra: ``pip install "auxrl[plot]"``.
"""

from __future__ import annotations

import logging
import math
import os
import re
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from auxrl.config import Config, ConfigError, build, to_dict
from auxrl.configfile import flatten_dotted

EVENT_GLOB = "events.out.tfevents.*"
GRID_POINTS = 400
_RUN_SUFFIX = re.compile(r"__-?\d+__[0-9][0-9_-]*$")  # ``__<seed>__<timestamp>`` of default run dirs
# Keys that never set runs apart: the seed is what the band shows; log and perf settings do not
# change what is learned.
_NOT_SETTINGS = ("seed", "log.", "perf.")
MAX_LABEL_KEYS = 3  # key=value pairs spelled out in a label; more are counted


def ema_smooth(values: np.ndarray, smoothing: float) -> np.ndarray:
    """TensorBoard's smoothing: an EMA started at zero and divided by ``1 - smoothing**n``.

    Non-finite values are passed through unchanged and do not enter the average.
    """
    out = np.empty(len(values), dtype=np.float64)
    last, count = 0.0, 0
    for i, value in enumerate(np.asarray(values, dtype=np.float64)):
        if not math.isfinite(value):
            out[i] = value
            continue
        last = last * smoothing + (1.0 - smoothing) * value
        count += 1
        debias = 1.0 - smoothing**count if smoothing > 0 else 1.0
        out[i] = last / debias
    return out


def read_config(run_dir: Path) -> dict:
    """The run's ``config.yaml`` as a dict ({} when missing or unreadable)."""
    config = run_dir / "config.yaml"
    if not config.is_file():
        return {}
    try:
        data = yaml.safe_load(config.read_text())
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def run_name(run_dir: Path, config: dict | None = None) -> str:
    """The run's config name, else its directory name without ``__<seed>__<timestamp>``."""
    config = read_config(run_dir) if config is None else config
    if config.get("name"):
        return str(config["name"])
    return _RUN_SUFFIX.sub("", run_dir.resolve().name) or run_dir.resolve().name


def run_seed(run_dir: Path, config: dict) -> int | None:
    """The run's seed: from its config, else from a ``__<seed>__<timestamp>`` directory name."""
    if isinstance(config.get("seed"), int):
        return config["seed"]
    match = _RUN_SUFFIX.search(run_dir.resolve().name)
    return int(match.group(0).split("__")[1]) if match else None


def config_differences(configs: list[dict]) -> list[str]:
    """Dotted keys whose values differ between ``configs``, besides the seed."""
    flats = [flatten_dotted(c) for c in configs if c]
    if len(flats) < 2:
        return []
    keys = sorted(set().union(*flats) - {"seed"})
    return [k for k in keys if any(f.get(k) != flats[0].get(k) for f in flats[1:])]


@dataclass
class _Run:
    path: Path
    name: str
    env: str | None
    seed: int | None
    settings: dict[str, Any]  # flattened config, without the keys that never set runs apart
    steps: np.ndarray
    smoothed: np.ndarray


def _settings(config: dict) -> dict[str, Any]:
    try:
        # Through the current Config: keys an older auxrl did not write get their defaults (so they
        # do not set old runs apart), and env keys that do not apply to the env are dropped.
        config = to_dict(build(Config, config))
    except (ConfigError, TypeError, ValueError):
        pass  # a config this auxrl cannot read: compare it as written
    flat = flatten_dotted(config)
    return {k: v for k, v in flat.items() if not k.startswith(_NOT_SETTINGS) and k not in ("name", "env.id")}


def _show(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def group_runs(
    runs: list[_Run], labels: list[str] | None = None, group_by: list[str] | None = None
) -> dict[str, list[_Run]]:
    """Label -> runs drawn as one curve (or one mean and band); see the module docstring."""
    if labels is not None:
        if len(labels) != len(runs):
            raise ValueError(
                f"--labels gives {len(labels)} label(s) for {len(runs)} run(s): one per RUN_DIR, in order."
            )
        groups: dict[str, list[_Run]] = {}
        for label, run in zip(labels, runs, strict=True):
            groups.setdefault(label, []).append(run)
        for label, members in groups.items():
            envs = sorted({str(r.env) for r in members})
            if len(envs) > 1:
                raise ValueError(
                    f"--labels: the runs labelled {label!r} are of different envs ({', '.join(envs)}); "
                    f"give them different labels (their returns are not comparable)."
                )
        return groups
    many_envs = len({r.env for r in runs}) > 1
    if group_by is not None and "run" in group_by:
        return _unique_labels([(f"{r.name} ({r.path.name})", r.env, [r]) for r in runs])
    if group_by is not None:
        known = set().union(*(r.settings for r in runs)) | {"name", "env.id"}
        missing = [k for k in group_by if k not in known]
        if missing:
            raise ValueError(
                f"--group-by {','.join(missing)}: no run's config.yaml has that key. Use name, env.id, run "
                f"or a dotted config key such as aux.enabled."
            )
        keys = [k for k in group_by if k not in ("name", "env.id")]
        by_name = "name" in group_by
    else:
        # The keys in which runs of one name and env differ: they make separate curves.
        keys, by_name = [], True
        for base in sorted({(r.name, str(r.env)) for r in runs}):
            members = [r for r in runs if (r.name, str(r.env)) == base]
            for key in sorted(set().union(*(r.settings for r in members))):
                if key not in keys and len({_show(r.settings.get(key)) for r in members}) > 1:
                    keys.append(key)
    # The env is always part of a group's identity: returns of different envs are not comparable.
    # A label names it where the name alone does not tell (a name used with several envs).
    envs_of: dict[str, set[str | None]] = {}
    for run in runs:
        envs_of.setdefault(run.name, set()).add(run.env)
    found: dict[tuple[str, str | None], list[_Run]] = {}
    for run in runs:
        values = [f"{k}={_show(run.settings.get(k))}" for k in keys]
        if len(values) > MAX_LABEL_KEYS:
            values = values[:MAX_LABEL_KEYS] + [f"+{len(values) - MAX_LABEL_KEYS} more"]
        parts = [run.name] if by_name else []
        if run.env is not None and many_envs and (not by_name or len(envs_of[run.name]) > 1):
            parts.append(run.env)
        found.setdefault((" ".join(parts + values) or "runs", run.env), []).append(run)
    if group_by is not None:
        for (label, _), members in found.items():
            differ = [k for k in config_differences([r.settings for r in members]) if k not in keys]
            if differ:
                shown = ", ".join(differ[:8]) + (f" and {len(differ) - 8} more" if len(differ) > 8 else "")
                warnings.warn(
                    f"auxrl plot: the runs of {label!r} are averaged (--group-by) but their configs also "
                    f"differ in {shown}.",
                    stacklevel=2,
                )
    return _unique_labels([(label, env, members) for (label, env), members in found.items()])


def _unique_labels(groups: list[tuple[str, str | None, list[_Run]]]) -> dict[str, list[_Run]]:
    """Label -> runs; a label shared by groups of different envs gets the env, then a number."""
    counts: dict[str, int] = {}
    for label, _, _ in groups:
        counts[label] = counts.get(label, 0) + 1
    out: dict[str, list[_Run]] = {}
    for label, env, members in groups:
        if counts[label] > 1 and env is not None:
            label = f"{label} {env}"
        while label in out:
            label += "'"
        out[label] = members
    return out


def _quiet_purges(record: logging.LogRecord) -> bool:
    """A resumed run's new event file purges the steps after its checkpoint (purge_step), on
    purpose; tensorboard's reader logs each purge as a "TensorFlow restart". Other notes pass."""
    return "likely caused by a TensorFlow restart" not in record.getMessage()


def read_scalars(run_dir: Path, tag: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of ``tag`` from all the event files of ``run_dir``, sorted by step."""
    acc = _load_events(run_dir)
    tags = acc.Tags().get("scalars", [])
    if tag not in tags:
        have = ", ".join(sorted(tags)) if tags else "none"
        raise ValueError(
            f"{run_dir}: no scalar {tag!r} in its event files (has the run finished an episode "
            f"yet?). Its scalar tags: {have}. Pick one with --tag."
        )
    return _scalars(acc, tag)


def read_scalar_tags(
    run_dir: Path, tags: Iterable[str] | None = None, prefix: str | None = None
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(steps, values) of each of ``tags`` that the run logged and of every scalar whose tag
    starts with ``prefix`` (neither given: every scalar), reading its event files once (tags it
    never logged are left out); raises as :func:`read_scalars` for a bad directory."""
    acc = _load_events(run_dir)
    have = acc.Tags().get("scalars", [])
    if tags is None and prefix is None:
        return {tag: _scalars(acc, tag) for tag in have}
    logged = set(have)
    wanted = dict.fromkeys(tag for tag in tags or () if tag in logged)  # once each, in order
    if prefix is not None:
        wanted.update(dict.fromkeys(tag for tag in have if tag.startswith(prefix)))
    return {tag: _scalars(acc, tag) for tag in wanted}


def _load_events(run_dir: Path) -> Any:
    """A loaded EventAccumulator over all the event files of ``run_dir``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    if not run_dir.exists():
        raise FileNotFoundError(f"{run_dir}: no such run directory")
    if not run_dir.is_dir():
        raise ValueError(
            f"{run_dir} is not a directory: pass run directories (holding events.out.tfevents.* files)"
        )
    if not any(run_dir.glob(EVENT_GLOB)):
        nested = sorted({p.parent for p in run_dir.glob(f"*/**/{EVENT_GLOB}")})
        hint = (
            f" It has runs below it: {', '.join(str(p) for p in nested[:5])}"
            f"{' ...' if len(nested) > 5 else ''}; pass those."
            if nested
            else " Pass the directory a training run wrote (auxrl train ... --run-dir DIR)."
        )
        raise ValueError(f"{run_dir}: no TensorBoard event files (events.out.tfevents.*) in it.{hint}")
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    tb_log = logging.getLogger("tensorboard")
    tb_log.addFilter(_quiet_purges)
    try:
        acc.Reload()
    finally:
        tb_log.removeFilter(_quiet_purges)
    return acc


def _scalars(acc: Any, tag: str) -> tuple[np.ndarray, np.ndarray]:
    events = acc.Scalars(tag)
    steps = np.array([e.step for e in events], dtype=np.int64)
    values = np.array([e.value for e in events], dtype=np.float64)
    order = np.argsort(steps, kind="stable")  # one file after another, e.g. after a resume
    return steps[order], values[order]


def _last_per_step(steps: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Strictly increasing steps (several episodes can end at one step: keep the last value)."""
    keep = np.append(steps[1:] != steps[:-1], True)
    return steps[keep], values[keep]


DEFAULT_OUT = "curves.png"


def out_file(out: str | Path) -> Path:
    """The image ``--out`` names: ``DIR/curves.png`` for a folder (an existing one, or a path ending
    in ``/``), ``NAME.png`` for a name without a suffix, else the path itself."""
    text = str(out)
    if text.endswith(("/", os.sep)) or Path(text).is_dir():
        return Path(text) / DEFAULT_OUT
    path = Path(text)
    return path if path.suffix else path.with_name(path.name + ".png")  # what savefig would write


def plot_runs(
    run_dirs: list[str],
    out: str,
    smoothing: float = 0.9,
    tag: str = "charts/episodic_return",
    labels: list[str] | None = None,
    group_by: list[str] | None = None,
) -> Path:
    """Plot ``tag`` against env steps for each run into ``out`` (a .png, .pdf or .svg, or a folder
    to write ``curves.png`` into: see :func:`out_file`); returns the path written.

    ``labels``: one per run (runs sharing a label are averaged); ``group_by``: config keys that
    define the groups (``name``, ``env.id``, dotted keys; ``run``: no grouping). Without either,
    runs are grouped by name, env id and the keys in which runs of one name and env differ.
    """
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"--smoothing {smoothing}: must be in [0, 1) (0: no smoothing; 0.9 is the default)")
    if not run_dirs:
        raise ValueError("auxrl plot needs at least one RUN_DIR")
    if not str(out).strip():
        raise ValueError("--out is empty: give the image file to write, e.g. --out curves.png (.pdf, .svg).")
    if labels is not None and group_by is not None:
        raise ValueError("--labels and --group-by both choose the groups: give one.")
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import EngFormatter
    except ImportError:
        raise ImportError('matplotlib is needed to plot: pip install "auxrl[plot]"') from None

    # Read everything first, so that a bad directory fails before any drawing.
    runs: list[_Run] = []
    seen: set[Path] = set()
    for run in run_dirs:
        run_dir = Path(run)
        if run_dir.resolve() in seen:
            if labels is not None:
                raise ValueError(f"--labels: {run_dir} is given twice; give each RUN_DIR once.")
            continue
        seen.add(run_dir.resolve())
        steps, values = read_scalars(run_dir, tag)
        config = read_config(run_dir)
        env = config.get("env", {}).get("id") if isinstance(config.get("env"), dict) else None
        runs.append(
            _Run(
                run_dir,
                run_name(run_dir, config),
                env,
                run_seed(run_dir, config),
                _settings(config),
                steps,
                ema_smooth(values, smoothing),
            )
        )
    groups = group_runs(runs, labels, group_by)

    # A Figure without pyplot: the Agg canvas, no display, no global backend switch.
    fig = Figure(figsize=(8, 5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    colors = [c["color"] for c in _color_cycle()]
    notes = []
    for i, (name, members) in enumerate(groups.items()):
        color = colors[i % len(colors)]
        if len(members) == 1:
            ax.plot(members[0].steps, members[0].smoothed, color=color, linewidth=1.8, label=name)
            continue
        for run in members:
            ax.plot(run.steps, run.smoothed, color=color, linewidth=0.8, alpha=0.35)
        start = max(run.steps[0] for run in members)
        end = min(run.steps[-1] for run in members)
        # "(n seeds)", unless some of them ran with the same seed (then they are not n seeds).
        seeds = [run.seed for run in members if run.seed is not None]
        label = f"{name} ({len(members)} {'seeds' if len(set(seeds)) == len(seeds) else 'runs'})"
        if end <= start:
            notes.append(f"{name}: runs do not overlap in steps, no mean drawn")
            ax.plot([], [], color=color, linewidth=0.8, label=label)
            continue
        grid = np.linspace(start, end, GRID_POINTS)
        curves = np.stack([np.interp(grid, *_last_per_step(run.steps, run.smoothed)) for run in members])
        ax.fill_between(grid, curves.min(axis=0), curves.max(axis=0), color=color, alpha=0.2, linewidth=0)
        ax.plot(grid, curves.mean(axis=0), color=color, linewidth=2.0, label=label)

    metric = tag.rsplit("/", 1)[-1].replace("_", " ")
    title = f"{metric[:1].upper()}{metric[1:]} (EMA smoothing {smoothing:g})"
    if any(len(members) > 1 for members in groups.values()):
        title += "; bold: mean of a group's runs, band: min..max"
    ax.set_title(title, fontsize=11)
    ax.set_xlabel("environment steps")
    ax.set_ylabel(tag)
    ax.xaxis.set_major_formatter(EngFormatter(sep=""))
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=9)
    if notes:
        ax.text(0.01, 0.01, "\n".join(notes), transform=ax.transAxes, fontsize=7, va="bottom")
    fig.tight_layout()
    out_path = out_file(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=120)
    return out_path


def _color_cycle():
    from matplotlib import rcParams

    return rcParams["axes.prop_cycle"]
