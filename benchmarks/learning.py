"""Learning curves of one game with and without auxiliary heads, over several seeds.

For every seed, trains the config twice in ``<out-dir>``:

* ``no_aux__<seed>``: ``aux.enabled=false`` (config ``name=no_aux``);
* ``with_aux__<seed>``: ``aux.enabled=true`` with the config's heads (``name=with_aux``);

then plots every run with ``auxrl.plot.plot_runs`` to ``<out-dir>/curves.png`` and writes the
final returns (mean unclipped return of the last 20 episodes of each run, then mean +- std over
seeds) to ``<out-dir>/results.md`` and ``results.json``.

Example::

    python benchmarks/learning.py --config pong --steps 2000000 --seeds 1 2 3

Rerunning the same command continues: finished runs are skipped, interrupted runs resume from
their latest checkpoint.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import math
import os
import platform
import shlex
import socket
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
VARIANTS = ("no_aux", "with_aux")
RETURN_TAG = "charts/episodic_return"


@dataclass
class RunSummary:
    """One training run and its final return."""

    variant: str
    seed: int
    run_dir: str
    status: str  # "trained", "resumed", "skipped (finished)" or "failed: ..."
    final_return: float | None = None  # mean of the last `last_n` episodes
    episodes: int = 0  # episodes logged in the run
    counted: int = 0  # episodes in final_return (fewer than last_n if the run had fewer)
    seconds: float = 0.0


def use_checkout() -> None:
    """Import auxrl from this checkout when it is not installed (``python benchmarks/...``)."""
    if importlib.util.find_spec("auxrl") is None:
        sys.path.insert(0, str(REPO_ROOT))


def game_slug(env_id: str) -> str:
    """``ALE/Pong-v5`` -> ``pong``; ``CartPole-v1`` -> ``cartpole``."""
    from auxrl.envs.atari import is_atari_id, rom_name

    if is_atari_id(env_id):
        return rom_name(env_id).replace("_", "-")
    return env_id.split("/")[-1].rsplit("-v", 1)[0].lower()


def read_scalars(run_dir: Path, tag: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of ``tag`` in a run directory's TensorBoard events (empty if absent)."""
    from auxrl.plot import read_scalars as read

    try:
        return read(run_dir, tag)
    except (ValueError, FileNotFoundError):  # no events yet, or no finished episode
        return np.zeros(0, dtype=np.int64), np.zeros(0)


def final_return(run_dir: Path, last_n: int) -> tuple[float | None, int, int]:
    """(mean of the last ``last_n`` episodic returns, episodes logged, episodes averaged), from the
    run's TensorBoard events or else its committed ``curve.json`` (auxrl study's)."""
    from auxrl.study.analysis import read_curve

    curve = read_curve(run_dir, RETURN_TAG)
    values = curve[1] if curve is not None else np.zeros(0)
    if len(values) == 0:
        return None, 0, 0
    tail = values[-last_n:]
    return float(np.mean(tail)), len(values), len(tail)


def saved_step(run_dir: Path) -> int | None:
    """The step of the run directory's latest checkpoint, or None when it has none."""
    from auxrl import checkpoint

    try:
        saved = checkpoint.load(run_dir)
    except FileNotFoundError:
        return None
    return int(saved["state"]["global_step"])


def train_one(config: str, overrides: list[str], run_dir: Path, steps: int, device: str) -> tuple[str, float]:
    """Train (or resume, or skip) one run; returns (status, seconds)."""
    from auxrl.configfile import load_config
    from auxrl.trainer import train

    cfg = load_config(config, overrides)
    step = saved_step(run_dir)
    if step is not None and step >= steps:
        return "skipped (finished)", 0.0
    if step is None and run_dir.exists() and any(run_dir.iterdir()):
        raise RuntimeError(
            f"{run_dir} exists without a checkpoint (a run killed before its first checkpoint?). "
            f"Remove it to train this run from scratch."
        )
    t0 = time.perf_counter()
    train(cfg, run_dir, device=device, progress=False, resume=step is not None)
    return ("resumed" if step is not None else "trained"), time.perf_counter() - t0


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (ddof=1; None with fewer than two values)."""
    if not values:
        return None, None
    std = float(np.std(values, ddof=1)) if len(values) > 1 else None
    return float(np.mean(values)), std


def _fmt(value: float | None, std: float | None = None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.2f}" if std is None else f"{value:.2f} ± {std:.2f}"


def results_markdown(meta: dict[str, Any], runs: list[RunSummary], plot_note: str) -> str:
    """The final-return table, the per-run table and the setup, as Markdown."""
    lines = [
        f"# {meta['env_id']}: with vs without auxiliary heads ({meta['date']})",
        "",
        f"Final return: mean unclipped episodic return of the last {meta['last_n']} episodes of each run, "
        f"then mean ± sample std over seeds; {meta['steps']:,} env steps per run.",
        "",
        "| variant | seeds | final return | per seed |",
        "|---|--:|--:|---|",
    ]
    for variant in VARIANTS:
        finals = [r.final_return for r in runs if r.variant == variant and r.final_return is not None]
        mean, std = mean_std(finals)
        per_seed = ", ".join(f"{r.seed}: {_fmt(r.final_return)}" for r in runs if r.variant == variant)
        lines.append(f"| {variant} | {len(finals)} | {_fmt(mean, std)} | {per_seed} |")
    lines += [
        "",
        f"Curves: {plot_note}",
        "",
        "## Runs",
        "",
        "| run | status | episodes | averaged | final return | train s |",
        "|---|---|--:|--:|--:|--:|",
    ]
    for r in runs:
        status = r.status.replace("|", "\\|").replace("\n", " ")
        lines.append(
            f"| {Path(r.run_dir).name} | {status} | {r.episodes} | {r.counted} | {_fmt(r.final_return)} "
            f"| {r.seconds:.0f} |"
        )
    v = meta["versions"]
    lines += [
        "",
        "## Setup",
        "",
        f"- date: {meta['time']}; host: {meta['hostname']}; CPU: {meta['cpu']}; "
        f"device: {meta['device_name']}",
        f"- config: {meta['config']}; seeds: {', '.join(map(str, meta['seeds']))}; "
        f"extra overrides: {' '.join(meta['extra']) or '(none)'}",
        f"- versions: python {v['python']}, torch {v['torch']}, gymnasium {v['gymnasium']}, "
        f"ale-py {v['ale-py']}, auxrl {v['auxrl']}",
        "",
        "## Command",
        "",
        "```",
        meta["command"],
        "```",
        "",
    ]
    return "\n".join(lines)


def make_plot(run_dirs: list[Path], out: Path) -> str:
    """Plot with ``auxrl.plot.plot_runs``; a failure is reported, never raised."""
    try:
        from auxrl.plot import plot_runs
    except ImportError as err:
        message = f"not plotted: auxrl.plot is not available ({err})"
        print(f"[learning] {message}", file=sys.stderr)
        return message
    try:
        path = plot_runs([str(d) for d in run_dirs], out=str(out))
    except Exception as err:
        traceback.print_exc()
        message = f"not plotted: plot_runs failed ({type(err).__name__}: {err})"
        print(f"[learning] {message}", file=sys.stderr)
        return message
    return f"![curves]({Path(path).name})"


def setup_info(device: str) -> dict[str, Any]:
    """When and where this runs: date, host, CPU model, device name and package versions."""
    import ale_py
    import gymnasium
    import torch

    import auxrl
    from auxrl.device import resolve_device

    dev = resolve_device(device)
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.lower().startswith("model name")), cpu)
    except OSError:
        pass
    now = dt.datetime.now().astimezone()
    return {
        "date": now.date().isoformat(),
        "time": now.isoformat(timespec="seconds"),
        "hostname": socket.gethostname(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "gymnasium": gymnasium.__version__,
            "ale-py": ale_py.__version__,
            "auxrl": auxrl.__version__,
        },
    }


def metadata(args: argparse.Namespace, cfg: Any) -> dict[str, Any]:
    """When, where and with what the runs were trained."""
    return {
        **setup_info(args.device),
        "config": args.config,
        "env_id": cfg.env.id,
        "steps": args.steps,
        "seeds": args.seeds,
        "extra": args.extra,
        "last_n": args.last_n,
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Train one game with and without auxiliary heads over several seeds; "
        "plot the curves and tabulate final returns.",
    )
    parser.add_argument("--config", default="pong", help="shipped config name or YAML path")
    parser.add_argument("--steps", type=int, default=2_000_000, help="env steps per run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument(
        "--out-dir",
        default=None,
        help="where the runs, curves.png and results.md go "
        "(default: benchmarks/results/learning-<game>-<YYYY-MM-DD>)",
    )
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument(
        "--extra",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="config overrides for every run, e.g. env.num_envs=16 ppo.lr=1e-4",
    )
    parser.add_argument("--last-n", type=int, default=20, help="episodes averaged for the final return")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.last_n < 1:
        parser.error("--steps and --last-n must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    """Train every (variant, seed), then plot and write results.md; 1 if any run failed."""
    args = parse_args(argv)
    use_checkout()
    from auxrl.configfile import load_config
    from auxrl.tasks.registry import enabled_tasks

    base = load_config(args.config, [*args.extra, f"ppo.total_steps={args.steps}"])
    with_aux = load_config(args.config, [*args.extra, "aux.enabled=true"])
    heads = list(enabled_tasks(with_aux.aux))
    meta = metadata(args, base)
    out = Path(args.out_dir or f"benchmarks/results/learning-{game_slug(base.env.id)}-{meta['date']}")
    out.mkdir(parents=True, exist_ok=True)
    print(f"[learning] {base.env.id}: seeds {args.seeds} x {VARIANTS}, {args.steps:,} steps per run -> {out}")
    if heads:
        print(f"[learning] with_aux heads: {', '.join(heads)}")
    else:
        print("[learning] warning: the config enables no auxiliary task, so with_aux equals no_aux")

    runs: list[RunSummary] = []
    for seed in args.seeds:  # seed-major: an interrupted benchmark still has matched pairs
        for variant in VARIANTS:
            run_dir = out / f"{variant}__{seed}"
            overrides = [
                *args.extra,
                f"ppo.total_steps={args.steps}",
                f"seed={seed}",
                f"name={variant}",
                f"aux.enabled={'true' if variant == 'with_aux' else 'false'}",
            ]
            print(f"[learning] {run_dir.name} ...", flush=True)
            try:
                status, seconds = train_one(args.config, overrides, run_dir, args.steps, args.device)
            except Exception as err:
                traceback.print_exc()
                status, seconds = f"failed: {type(err).__name__}: {err}", 0.0
            final, episodes, counted = (None, 0, 0)
            if run_dir.exists():
                final, episodes, counted = final_return(run_dir, args.last_n)
            runs.append(RunSummary(variant, seed, str(run_dir), status, final, episodes, counted, seconds))
            print(f"[learning] {run_dir.name}: {status}, final return {_fmt(final)} ({counted} episodes)")

    plot_note = make_plot([Path(r.run_dir) for r in runs if Path(r.run_dir).exists()], out / "curves.png")
    report = results_markdown(meta, runs, plot_note)
    (out / "results.md").write_text(report)
    (out / "results.json").write_text(
        json.dumps({"metadata": meta, "runs": [asdict(r) for r in runs], "plot": plot_note}, indent=2) + "\n"
    )
    print(f"\nWrote {out / 'results.md'}\n")
    print(report.split("\n## Runs")[0].rstrip())
    return 1 if any(r.status.startswith("failed") for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
