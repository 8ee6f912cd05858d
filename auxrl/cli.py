"""``auxrl`` command line: train, eval, tasks (thin: parse, then call the library)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from auxrl.config import ConfigError, from_dict, load_config, shipped_config_names


def _default_run_dir(cfg_name: str, seed: int) -> Path:
    return Path("runs") / f"{cfg_name}__{seed}__{time.strftime('%Y%m%d-%H%M%S')}"


def cmd_train(args: argparse.Namespace) -> int:
    from auxrl import checkpoint
    from auxrl.trainer import train

    if args.resume:
        # The saved config is the run's config; overrides on resume change it (e.g. total_steps).
        overrides = list(args.overrides)
        if args.config is not None:
            if "=" not in args.config:
                raise ConfigError(
                    f"--resume continues a run with its saved config; drop {args.config!r} (give "
                    f"only key=value overrides, e.g. ppo.total_steps=20000000)."
                )
            overrides.insert(0, args.config)  # argparse put the first override in CONFIG's slot
        cfg = from_dict(checkpoint.load(args.resume)["config"], overrides)
        run_dir = Path(args.resume)
        if run_dir.is_file():
            run_dir = run_dir.parent.parent
    else:
        if args.config is None:
            raise ConfigError(
                "auxrl train needs a CONFIG (a YAML path or a shipped name) or --resume RUN_DIR."
            )
        overrides = list(args.overrides) + ([f"seed={args.seed}"] if args.seed is not None else [])
        cfg = load_config(args.config, overrides)
        run_dir = Path(args.run_dir) if args.run_dir else _default_run_dir(cfg.name, cfg.seed)
    print(f"Run directory: {run_dir}  (tensorboard --logdir {run_dir})")
    result = train(cfg, run_dir, device=args.device, progress=not args.no_progress, resume=bool(args.resume))
    recent = "n/a" if result.recent_return is None else f"{result.recent_return:.2f}"
    print(
        f"Done: {result.global_step:,} steps, {result.episodes} episodes, mean return of the last "
        f"{cfg.log.return_window} episodes {recent}. Checkpoint: {checkpoint.find(run_dir)}"
    )
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from auxrl.evaluate import evaluate, load_agent
    from auxrl.trainer import resolve_device

    device = resolve_device(args.device)
    agent, cfg = load_agent(args.run, device)
    recorder = None
    if args.video:
        from auxrl.video import VideoRecorder

        recorder = VideoRecorder(args.video)
    result = evaluate(
        agent,
        cfg,
        args.episodes,
        device,
        deterministic=args.deterministic,
        num_envs=1 if recorder else args.num_envs,
        seed=args.seed,
        on_step=recorder.on_step if recorder else None,
    )
    if recorder is not None:
        path, frames = recorder.close(result.returns)
        print(f"Video: {path} ({frames} frames)")
    print(
        f"{cfg.env.id}: {len(result.returns)} episodes, score {result.mean:.2f} +- {result.std:.2f} "
        f"(min {min(result.returns):.1f}, max {max(result.returns):.1f})"
    )
    return 0


def cmd_tasks(args: argparse.Namespace) -> int:
    from auxrl.tasks.registry import describe

    rows = describe()
    width = max(len(name) for name, _ in rows)
    for name, description in rows:
        print(f"{name:<{width}}  {description}")
    print("\nAlso: any AuxTask subclass by import path, e.g. aux.tasks.mine.type=my_pkg.tasks:MyTask")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from auxrl.plot import plot_runs

    out = plot_runs(args.runs, args.out, smoothing=args.smoothing, tag=args.tag)
    print(f"Wrote {out}")
    return 0


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="auxrl", description="PPO with auxiliary heads on a shared torso.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "train",
        help="train an agent",
        description=(
            "Train from a YAML config (a path or a shipped name: "
            f"{', '.join(shipped_config_names())}) with dotted key=value overrides."
        ),
    )
    p.add_argument("config", nargs="?", help="config path or shipped config name")
    p.add_argument("overrides", nargs="*", help="overrides such as ppo.lr=1e-4 env.num_envs=16")
    p.add_argument("--run-dir", help="where to write events, config and checkpoints")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--seed", type=int, help="shorthand for seed=N")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its latest checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (plain status lines)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="play whole games with a trained agent")
    p.add_argument("run", metavar="RUN_DIR_OR_CHECKPOINT")
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument("--deterministic", action="store_true", help="greedy actions instead of sampling")
    p.add_argument("--video", metavar="PATH", help="record to an .mp4 (or .gif) file")
    p.add_argument("--num-envs", type=int, default=8)
    p.add_argument("--seed", type=int, default=12345)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("tasks", help="list the available auxiliary tasks")
    p.set_defaults(func=cmd_tasks)

    p = sub.add_parser("plot", help="plot episodic return against steps from TensorBoard files")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", default="curves.png")
    p.add_argument("--smoothing", type=float, default=0.9, help="EMA smoothing in [0, 1)")
    p.add_argument("--tag", default="charts/episodic_return")
    p.set_defaults(func=cmd_plot)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    # Overrides may come after options (`train cfg --no-progress ppo.lr=1e-4`), which plain
    # argparse cannot mix with nargs="*" positionals: collect them from the leftovers.
    args, extra = parser.parse_known_args(argv)
    unknown = [x for x in extra if x.startswith("-") or "=" not in x or args.command != "train"]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.command == "train":
        args.overrides = list(args.overrides) + extra
    try:
        return args.func(args)
    except (ConfigError, ValueError, FileNotFoundError, ImportError) as err:
        print(f"auxrl {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
