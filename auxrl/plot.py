"""Learning curves from runs' TensorBoard event files (``auxrl plot RUN_DIR ... --out curves.png``).

Each run is drawn as its episodic return against environment steps, smoothed like TensorBoard's
slider (a debiased exponential moving average over the logged points). Runs that share a name
(the ``name`` in their ``config.yaml``, e.g. several seeds of one config) are drawn thin, with
their mean in bold over a shaded min..max band, both interpolated on a common step grid that
covers the steps all of them reached. Needs the ``plot`` extra: ``pip install "auxrl[plot]"``.
"""

from __future__ import annotations

import math
import re
import warnings
from pathlib import Path

import numpy as np
import yaml

from auxrl.config import flatten_dotted

EVENT_GLOB = "events.out.tfevents.*"
GRID_POINTS = 400
_RUN_SUFFIX = re.compile(r"__-?\d+__[0-9][0-9_-]*$")  # ``__<seed>__<timestamp>`` of default run dirs


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


def read_scalars(run_dir: Path, tag: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of ``tag`` from all the event files of ``run_dir``, sorted by step."""
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
    acc.Reload()
    tags = acc.Tags().get("scalars", [])
    if tag not in tags:
        have = ", ".join(sorted(tags)) if tags else "none"
        raise ValueError(
            f"{run_dir}: no scalar {tag!r} in its event files (has the run finished an episode "
            f"yet?). Its scalar tags: {have}. Pick one with --tag."
        )
    events = acc.Scalars(tag)
    steps = np.array([e.step for e in events], dtype=np.int64)
    values = np.array([e.value for e in events], dtype=np.float64)
    order = np.argsort(steps, kind="stable")  # one file after another, e.g. after a resume
    return steps[order], values[order]


def _last_per_step(steps: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Strictly increasing steps (several episodes can end at one step: keep the last value)."""
    keep = np.append(steps[1:] != steps[:-1], True)
    return steps[keep], values[keep]


def plot_runs(
    run_dirs: list[str],
    out: str,
    smoothing: float = 0.9,
    tag: str = "charts/episodic_return",
) -> Path:
    """Plot ``tag`` against env steps for each run into ``out`` (a .png, .pdf or .svg); returns its path."""
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"--smoothing {smoothing}: must be in [0, 1) (0: no smoothing; 0.9 is the default)")
    if not run_dirs:
        raise ValueError("auxrl plot needs at least one RUN_DIR")
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import EngFormatter
    except ImportError:
        raise ImportError('matplotlib is needed to plot: pip install "auxrl[plot]"') from None

    # Read everything first, so that a bad directory fails before any drawing.
    groups: dict[str, list[tuple[np.ndarray, np.ndarray, int | None]]] = {}
    configs: dict[str, list[dict]] = {}
    seen: set[Path] = set()
    for run in run_dirs:
        run_dir = Path(run)
        if run_dir.resolve() in seen:
            continue
        seen.add(run_dir.resolve())
        steps, values = read_scalars(run_dir, tag)
        config = read_config(run_dir)
        name = run_name(run_dir, config)
        groups.setdefault(name, []).append((steps, ema_smooth(values, smoothing), run_seed(run_dir, config)))
        configs.setdefault(name, []).append(config)
    for name, group_configs in configs.items():
        differ = config_differences(group_configs)
        if differ:
            shown = ", ".join(differ[:8]) + (f" and {len(differ) - 8} more" if len(differ) > 8 else "")
            warnings.warn(
                f"auxrl plot: the runs named {name!r} are grouped as seeds of one config but their "
                f"config.yaml files also differ in {shown}. Give them different `name`s to plot them apart.",
                stacklevel=2,
            )

    # A Figure without pyplot: the Agg canvas, no display, no global backend switch.
    fig = Figure(figsize=(8, 5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    colors = [c["color"] for c in _color_cycle()]
    notes = []
    for i, (name, runs) in enumerate(groups.items()):
        color = colors[i % len(colors)]
        if len(runs) == 1:
            steps, smoothed, _ = runs[0]
            ax.plot(steps, smoothed, color=color, linewidth=1.8, label=name)
            continue
        for steps, smoothed, _ in runs:
            ax.plot(steps, smoothed, color=color, linewidth=0.8, alpha=0.35)
        start = max(steps[0] for steps, _, _ in runs)
        end = min(steps[-1] for steps, _, _ in runs)
        # "(n seeds)", unless some of them ran with the same seed (then they are not n seeds).
        seeds = [seed for _, _, seed in runs if seed is not None]
        label = f"{name} ({len(runs)} {'seeds' if len(set(seeds)) == len(seeds) else 'runs'})"
        if end <= start:
            notes.append(f"{name}: runs do not overlap in steps, no mean drawn")
            ax.plot([], [], color=color, linewidth=0.8, label=label)
            continue
        grid = np.linspace(start, end, GRID_POINTS)
        curves = np.stack([np.interp(grid, *_last_per_step(steps, smoothed)) for steps, smoothed, _ in runs])
        ax.fill_between(grid, curves.min(axis=0), curves.max(axis=0), color=color, alpha=0.2, linewidth=0)
        ax.plot(grid, curves.mean(axis=0), color=color, linewidth=2.0, label=label)

    metric = tag.rsplit("/", 1)[-1].replace("_", " ")
    title = f"{metric[:1].upper()}{metric[1:]} (EMA smoothing {smoothing:g})"
    if any(len(runs) > 1 for runs in groups.values()):
        title += "; bold: mean of same-name runs, band: min..max"
    ax.set_title(title, fontsize=11)
    ax.set_xlabel("environment steps")
    ax.set_ylabel(tag)
    ax.xaxis.set_major_formatter(EngFormatter(sep=""))
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=9)
    if notes:
        ax.text(0.01, 0.01, "\n".join(notes), transform=ax.transAxes, fontsize=7, va="bottom")
    fig.tight_layout()
    out_path = Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=120)
    return out_path


def _color_cycle():
    from matplotlib import rcParams

    return rcParams["axes.prop_cycle"]
