"""Throughput of auxrl (env steps per second) with and without auxiliary heads, in one table.

One command, one process, one table. Every variant runs with the same env settings:

* ``env_only``: random actions through ``auxrl.envs.make_envs(cfg.env)``; the ceiling.
* ``ppo``: auxrl training with ``aux.enabled=false``.
* ``reward_prediction`` / ``pixel_control`` / ``next_state``: PPO plus that one head.
* ``all_heads``: PPO plus all three heads.
* ``sb3`` (optional peer): Stable-Baselines3 PPO (CnnPolicy) on ``make_atari_env``.

* ``all_heads+groups2`` / ``+compile`` / ``+bf16``: all heads with one fast-path switch
  (``env.groups=2``, ``perf.compile=true``, ``perf.bf16=true``; bf16 on CUDA only). Every
  other training row runs with all three switches off, whatever the config sets.

Training SPS is reported twice: *steady* is env steps / seconds between the first and the last
update, from the TensorBoard events' wall times (start-up, compilation and the first update are
excluded); *wall* is steps / seconds of the whole ``train()`` call.

Example::

    python benchmarks/throughput.py --config breakout --steps 20000 --num-envs 8

Writes ``<out-dir>/<device-slug>-<YYYY-MM-DD>.md`` and ``.json`` and prints the table last.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import importlib.util
import json
import os
import platform
import re
import shlex
import socket
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

HEADS = ("reward_prediction", "pixel_control", "next_state")
# The fast-path switches, each measured on top of all heads (kept only where they pay).
FAST_PATH = {
    "ppo+compile": ["perf.compile=true"],  # PPO alone, compiled (the others: all heads + a switch)
    "all_heads+groups2": ["env.groups=2"],
    "all_heads+compile": ["perf.compile=true"],
    "all_heads+bf16": ["perf.bf16=true"],
}
# All heads with each aux.balance.method (per-task torso gradients; the balancer's cost).
BALANCE_METHODS = ("none", "norm", "cosine", "pcgrad", "olaux")
BALANCE = {f"all_heads/{m}": [f"aux.balance.method={m}"] for m in BALANCE_METHODS}
# All heads on every k-th PPO minibatch only (aux.every): the heads' compute traded for signal.
BALANCE.update({f"all_heads/every{k}": [f"aux.every={k}"] for k in (2, 4)})
# All heads with every task encoding its own replay windows, as before 2026-12-04 (the default
# now: reward_prediction and next_state learn from PPO's minibatch and its torso features).
BALANCE["all_heads/replay"] = [
    "aux.tasks.reward_prediction.source=replay",
    "aux.tasks.next_state.source=replay",
]
TRAINING_VARIANTS = ("ppo", *HEADS, "all_heads", *BALANCE, *FAST_PATH)
ALL_VARIANTS = ("env_only", *TRAINING_VARIANTS, "sb3")
SPS_TAG = "charts/SPS"
REPO_ROOT = Path(__file__).resolve().parent.parent


def use_checkout() -> None:
    """Import auxrl from this checkout when it is not installed (``python benchmarks/...``)."""
    if importlib.util.find_spec("auxrl") is None:
        sys.path.insert(0, str(REPO_ROOT))


@dataclass
class Row:
    """One measured variant. ``sps`` is the steady number used for ratios."""

    variant: str
    steps: int = 0
    sps: float | None = None  # steady SPS (env_only: after warm-up; training: last charts/SPS)
    wall_sps: float | None = None  # steps / seconds of the whole call, start-up included
    wall_s: float | None = None
    note: str = ""
    error: str | None = None


# --------------------------------------------------------------------------------------------
# Metadata
# --------------------------------------------------------------------------------------------


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (or the platform's best guess)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def device_name(device: Any) -> str:
    """``torch.cuda.get_device_name`` on CUDA, else ``"cpu"``."""
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu"


def slug(text: str) -> str:
    """``NVIDIA H100 80GB HBM3`` -> ``nvidia-h100-80gb-hbm3``."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def device_slug(device: Any) -> str:
    """The GPU name for CUDA; ``cpu-<model>`` for CPU runs, so two machines do not collide."""
    name = device_name(device)
    return slug(name) if name != "cpu" else f"cpu-{slug(cpu_model())}"[:60].rstrip("-")


def package_version(module: str) -> str:
    """A module's ``__version__``, or ``"not installed"``."""
    if importlib.util.find_spec(module) is None:
        return "not installed"
    try:
        mod = __import__(module)
        return str(getattr(mod, "__version__", "unknown"))
    except Exception as err:  # a broken install should not stop the benchmark
        return f"import failed: {err}"


def metadata(args: argparse.Namespace, cfg: Any, device: Any) -> dict[str, Any]:
    """Where, when and with what this table was measured."""
    import torch

    now = dt.datetime.now().astimezone()
    return {
        "date": now.date().isoformat(),
        "time": now.isoformat(timespec="seconds"),
        "hostname": socket.gethostname(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "device_name": device_name(device),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "gymnasium": package_version("gymnasium"),
            "ale-py": package_version("ale_py"),
            "auxrl": package_version("auxrl"),
            "auxrl_path": str(Path(__import__("auxrl").__file__).parent),
            "stable-baselines3": package_version("stable_baselines3"),
        },
        "config": args.config,
        "env_id": cfg.env.id,
        "num_envs": args.num_envs,
        "steps": args.steps,
        "ppo": {
            "num_steps": cfg.ppo.num_steps,
            "num_minibatches": cfg.ppo.num_minibatches,
            "update_epochs": cfg.ppo.update_epochs,
            "torso": cfg.model.torso,
            "torch_deterministic": cfg.torch_deterministic,
        },
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
    }


# --------------------------------------------------------------------------------------------
# Variants
# --------------------------------------------------------------------------------------------


def base_overrides(args: argparse.Namespace, steps: int) -> list[str]:
    """Overrides shared by every auxrl training variant.

    The fast-path switches are off here whatever the config says (the shipped Atari configs turn
    compile on), so the plain rows measure the eager path and each ``FAST_PATH`` row one switch.
    """
    return [
        f"ppo.total_steps={steps}",
        f"env.num_envs={args.num_envs}",
        "log.checkpoint_every=0",
        "env.groups=1",
        "perf.compile=false",
        "perf.bf16=false",
    ]


def variant_overrides(variant: str, task_names: list[str]) -> list[str]:
    """``aux.*`` overrides that turn on exactly the heads of ``variant``."""
    if variant == "ppo":
        return ["aux.enabled=false"]
    if variant in FAST_PATH:
        base = "ppo" if variant.startswith("ppo") else "all_heads"
        return variant_overrides(base, task_names) + FAST_PATH[variant]
    if variant in BALANCE:
        return variant_overrides("all_heads", task_names) + BALANCE[variant]
    keep = set(HEADS) if variant == "all_heads" else {variant}
    flags = [f"aux.tasks.{name}.enabled={str(name in keep).lower()}" for name in task_names]
    return ["aux.enabled=true", *flags]


def steady_sps(run_dir: Path, tag: str = SPS_TAG) -> float | None:
    """Steps per second between the first and the last update, from the events' wall times.

    The first update (compilation, allocator and cuDNN warm-up, the first rollout) is excluded;
    falls back to the last logged ``charts/SPS`` when there is a single update.
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    if tag not in acc.Tags().get("scalars", []):
        return None
    events = acc.Scalars(tag)
    if len(events) >= 2 and events[-1].wall_time > events[0].wall_time:
        return (events[-1].step - events[0].step) / (events[-1].wall_time - events[0].wall_time)
    return float(events[-1].value) if events else None


def run_env_only(cfg: Any, steps: int, warmup_steps: int, seed: int) -> Row:
    """Random actions through the same vector env the trainer uses."""
    import gymnasium as gym

    from auxrl.envs import make_envs

    t0 = time.perf_counter()
    envs = make_envs(cfg.env)
    try:
        n = envs.num_envs
        space = envs.single_action_space
        rng = np.random.default_rng(seed)
        if isinstance(space, gym.spaces.Discrete):

            def sample() -> np.ndarray:
                return rng.integers(space.start, space.start + space.n, size=n)
        else:
            space.seed(seed)

            def sample() -> np.ndarray:
                return np.stack([space.sample() for _ in range(n)])

        envs.reset(seed=seed)
        for _ in range(max(1, warmup_steps // n)):
            envs.step(sample())
        vector_steps = max(1, -(-steps // n))
        start = time.perf_counter()
        for _ in range(vector_steps):
            envs.step(sample())
        seconds = time.perf_counter() - start
    finally:
        envs.close()
    total = vector_steps * n
    wall = time.perf_counter() - t0
    return Row(
        "env_only",
        total,
        total / seconds,
        total / wall,
        wall,
        note=f"random actions, {warmup_steps // n * n} warm-up steps excluded",
    )


def run_training(config: str, overrides: list[str], device: str, label: str, workdir: Path) -> Row:
    """One auxrl ``train()`` call in a fresh run directory; SPS from its TensorBoard events."""
    from auxrl.configfile import load_config
    from auxrl.trainer import train

    cfg = load_config(config, overrides)
    run_dir = workdir / label
    t0 = time.perf_counter()
    result = train(cfg, run_dir, device=device, progress=False)
    wall = time.perf_counter() - t0
    steady = steady_sps(run_dir)
    note = "" if steady is not None else f"no {SPS_TAG} in the events; steady = wall"
    return Row(
        label,
        result.global_step,
        steady if steady is not None else result.global_step / wall,
        result.global_step / wall,
        wall,
        note=note,
    )


def run_nproc(args: argparse.Namespace, nproc: int, workdir: Path) -> Row:
    """PPO (no heads) through ``auxrl train --nproc N`` in a subprocess: ``args.steps`` env steps of
    all processes together, ``args.num_envs`` envs in each; steady SPS from rank 0's events."""
    import subprocess

    run_dir = workdir / f"nproc{nproc}"
    overrides = base_overrides(args, args.steps) + variant_overrides("ppo", [])
    cmd = [sys.executable, "-m", "auxrl", "train", args.config, *overrides]
    cmd += ["--run-dir", str(run_dir), "--nproc", str(nproc), "--no-progress", "--device", args.device]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    wall = time.perf_counter() - t0
    from auxrl import checkpoint

    steps = int(checkpoint.load(run_dir)["state"]["global_step"])
    steady = steady_sps(run_dir)
    note = f"{nproc} process(es) x {args.num_envs} envs; torchrun sets OMP_NUM_THREADS=1 per worker"
    return Row(f"ppo --nproc {nproc}", steps, steady or steps / wall, steps / wall, wall, note=note)


def train_subprocess(args: argparse.Namespace, tree: Path, variant: str, label: str, workdir: Path) -> Row:
    """One variant as ``auxrl train`` in a fresh process, with the auxrl package of ``tree`` (a
    checkout) first on the path; steady SPS from its events."""
    import subprocess

    run_dir = workdir / f"sub-{label.replace('/', '_').replace('@', '_')}"
    overrides = base_overrides(args, args.steps) + variant_overrides(variant, list(HEADS))
    cmd = [sys.executable, "-m", "auxrl.cli", "train", args.config, *overrides]
    cmd += ["--run-dir", str(run_dir), "--no-progress", "--device", args.device]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)})
    wall = time.perf_counter() - t0
    where = "this checkout" if tree == REPO_ROOT else f"auxrl at {args.baseline_ref}"
    return Row(label, args.steps, steady_sps(run_dir), args.steps / wall, wall, note=f"own process; {where}")


def run_baseline(args: argparse.Namespace, workdir: Path) -> list[Row]:
    """Rows of an earlier commit (``args.baseline_ref``): each of ``args.baseline_variants`` is an
    ``auxrl train`` of that commit's code, from a temporary git worktree, in its own process, with
    the same overrides as this run's rows."""
    import subprocess

    tree = workdir / "baseline"
    subprocess.run(
        ["git", "-C", str(REPO_ROOT), "worktree", "add", "--detach", str(tree), args.baseline_ref],
        check=True,
        capture_output=True,
    )
    rows = []
    try:
        for variant in args.baseline_variants:
            label = f"{variant}@{args.baseline_ref}"
            print(f"[throughput] {label} ...", flush=True)
            try:
                rows.append(train_subprocess(args, tree, variant, label, workdir))
            except subprocess.CalledProcessError as err:
                rows.append(Row(label, error=f"exit code {err.returncode}"))
                continue
            print(f"[throughput] {label}: {_fmt(rows[-1].sps)} SPS steady", flush=True)
    finally:
        subprocess.run(["git", "-C", str(REPO_ROOT), "worktree", "remove", "--force", str(tree)], check=False)
    return rows


def sb3_available() -> bool:
    return importlib.util.find_spec("stable_baselines3") is not None


def run_sb3(cfg: Any, args: argparse.Namespace, device: str) -> Row:
    """Stable-Baselines3 PPO on SB3's own Atari wrappers, with auxrl's PPO sizes.

    SB3's rl-zoo Atari settings are 8 envs x 128 steps, batch 256, 4 epochs, lr 2.5e-4, clip
    0.1, ent 0.01, vf 0.5; here n_steps, epochs, lr, clip and coefficients come from the auxrl
    config and batch_size = num_envs * num_steps / num_minibatches, so both learners do the
    same work per update.
    """
    import gymnasium as gym
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_atari_env, make_vec_env
    from stable_baselines3.common.vec_env import VecFrameStack

    from auxrl.envs import is_atari_id

    p, e = cfg.ppo, cfg.env
    t0 = time.perf_counter()
    if is_atari_id(e.id):
        import ale_py

        gym.register_envs(ale_py)
        env = make_atari_env(
            e.id,
            n_envs=args.num_envs,
            seed=cfg.seed,
            env_kwargs={"frameskip": 1, "repeat_action_probability": e.sticky_actions},
        )
        env = VecFrameStack(env, e.frame_stack)
        policy, note = "CnnPolicy", f"make_atari_env + VecFrameStack({e.frame_stack}), CnnPolicy"
    else:
        env = make_vec_env(e.id, n_envs=args.num_envs, seed=cfg.seed)
        policy, note = "MlpPolicy", "make_vec_env, MlpPolicy"
    try:
        model = PPO(
            policy,
            env,
            n_steps=p.num_steps,
            batch_size=args.num_envs * p.num_steps // p.num_minibatches,
            n_epochs=p.update_epochs,
            learning_rate=p.lr,
            gamma=p.gamma,
            gae_lambda=p.gae_lambda,
            clip_range=p.clip_coef,
            ent_coef=p.ent_coef,
            vf_coef=p.vf_coef,
            max_grad_norm=p.max_grad_norm,
            seed=cfg.seed,
            device=device,
            verbose=0,
        )
        start = time.perf_counter()
        model.learn(total_timesteps=args.steps)
        seconds = time.perf_counter() - start
        steps = int(model.num_timesteps)
    finally:
        env.close()
    wall = time.perf_counter() - t0
    return Row("sb3", steps, steps / seconds, steps / wall, wall, note=f"{note}; steady = learn() only")


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def _fmt(value: float | None, spec: str = ",.0f") -> str:
    if value is None:
        return "-"
    if spec == ",.0f" and abs(value) < 100:
        spec = ".1f"  # slow CPU runs: keep a digit
    return format(value, spec)


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def ratios(rows: list[Row]) -> dict[str, float]:
    """Steady-SPS ratios: each training variant / env_only, all_heads / ppo, ppo / sb3."""
    sps = {r.variant: r.sps for r in rows if r.sps}
    out: dict[str, float] = {}
    for variant in (*TRAINING_VARIANTS, "sb3"):
        if variant in sps and "env_only" in sps:
            out[f"{variant}/env_only"] = sps[variant] / sps["env_only"]
    for variant in sps:
        if variant not in ("env_only", "ppo", "sb3") and "ppo" in sps:
            out[f"{variant}/ppo"] = sps[variant] / sps["ppo"]
    if "ppo" in sps and "sb3" in sps:
        out["ppo/sb3"] = sps["ppo"] / sps["sb3"]
    # Like with like: the heads' cost when compiled, and the same pairs at the baseline commit.
    for suffix in ("", *{"@" + v.split("@", 1)[1] for v in sps if "@" in v}):
        for heads, ppo in (("all_heads", "ppo"), ("all_heads+compile", "ppo+compile")):
            if heads + suffix in sps and ppo + suffix in sps:
                out[f"{heads}{suffix}/{ppo}{suffix}"] = sps[heads + suffix] / sps[ppo + suffix]
    return out


def markdown_table(rows: list[Row]) -> str:
    """The results as one Markdown table (ratios use steady SPS)."""
    sps = {r.variant: r.sps for r in rows if r.sps}
    lines = [
        "| variant | env steps | steady SPS | wall SPS | wall s | x env_only | x ppo | note |",
        "|---|--:|--:|--:|--:|--:|--:|---|",
    ]
    for r in rows:
        vs_env = r.sps / sps["env_only"] if r.sps and "env_only" in sps else None
        vs_ppo = r.sps / sps["ppo"] if r.sps and "ppo" in sps and r.variant != "env_only" else None
        note = f"FAILED: {r.error}" if r.error else r.note
        note = note.replace("|", "\\|").replace("\n", " ")
        lines.append(
            f"| {r.variant} | {r.steps:,} | {_fmt(r.sps)} | {_fmt(r.wall_sps)} | {_fmt(r.wall_s, '.1f')} "
            f"| {_ratio(vs_env)} | {_ratio(vs_ppo)} | {note} |"
        )
    return "\n".join(lines)


def markdown_report(meta: dict[str, Any], rows: list[Row], ratio: dict[str, float]) -> str:
    """Table, ratios, metadata and the command, as one Markdown document."""
    v = meta["versions"]
    where = meta["device_name"]
    if where == "cpu":
        where = f"CPU ({meta['cpu']}, {meta['cores']} cores)"
    parts = [
        f"# auxrl throughput: {meta['env_id']} on {where} ({meta['date']})",
        "",
        markdown_table(rows),
        "",
        "Steady SPS: env_only after a warm-up; auxrl variants env steps / seconds between their first "
        "and last update (from the TensorBoard events' wall times, so start-up, compilation and the "
        "first update are excluded); sb3 the `learn()` call alone. Wall SPS: steps / seconds of the "
        "whole call.",
        "",
        "## Ratios (steady SPS)",
        "",
        *(f"- {name}: {value:.3f}" for name, value in ratio.items()),
        "",
        "## Setup",
        "",
        f"- date: {meta['time']}",
        f"- host: {meta['hostname']}; CPU: {meta['cpu']}; cores: {meta['cores']}; "
        f"torch threads: {meta['torch_threads']}",
        f"- device: {meta['device']} ({meta['device_name']})",
        f"- config: {meta['config']} ({meta['env_id']}); num_envs: {meta['num_envs']}; "
        f"steps per variant: {meta['steps']:,}; PPO: {json.dumps(meta['ppo'])}",
        f"- versions: python {v['python']}, torch {v['torch']}, gymnasium {v['gymnasium']}, "
        f"ale-py {v['ale-py']}, auxrl {v['auxrl']}, stable-baselines3 {v['stable-baselines3']}",
        "",
        *command_section(meta["command"]),
    ]
    return "\n".join(parts)


def command_section(command: str) -> list[str]:
    """The report's last section: the command that produced it, as a code block."""
    return ["## Command", "", "```", command, "```", ""]


def output_paths(out_dir: Path, stem: str) -> tuple[Path, Path]:
    """``<stem>.md``/``.json``, with ``-2``, ``-3``... so an earlier result is never overwritten."""
    out_dir.mkdir(parents=True, exist_ok=True)
    candidate, i = stem, 1
    while (out_dir / f"{candidate}.md").exists() or (out_dir / f"{candidate}.json").exists():
        i += 1
        candidate = f"{stem}-{i}"
    return out_dir / f"{candidate}.md", out_dir / f"{candidate}.json"


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="auxrl throughput (env steps/s): env only, PPO, each aux head, all heads, SB3.",
    )
    parser.add_argument("--config", default="breakout", help="shipped config name or YAML path")
    parser.add_argument("--steps", type=int, default=20_000, help="env steps per measured variant")
    parser.add_argument("--num-envs", type=int, default=8)
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument(
        "--variants",
        default=",".join(ALL_VARIANTS),
        help=f"comma-separated subset of {','.join(ALL_VARIANTS)} (default: all)",
    )
    parser.add_argument("--out-dir", default="benchmarks/results")
    parser.add_argument(
        "--sb3",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="measure Stable-Baselines3 PPO as a peer (default: when stable_baselines3 is importable)",
    )
    parser.add_argument(
        "--nproc",
        type=int,
        nargs="+",
        default=[],
        metavar="N",
        help="also measure PPO with N processes (auxrl train --nproc N; env.num_envs per process), "
        "one row per N, e.g. --nproc 1 2",
    )
    parser.add_argument(
        "--subprocess",
        action="store_true",
        help="train every row in a fresh process (as the --baseline-ref rows are), instead of "
        "train() calls in this one: no state carried from row to row",
    )
    parser.add_argument(
        "--baseline-ref",
        metavar="GIT_REF",
        help="also measure the all_heads row of an earlier commit (e.g. the summed-backward learner "
        "before per-task gradients), from a temporary git worktree, in this same run",
    )
    parser.add_argument(
        "--baseline-variants",
        default="ppo,ppo+compile,all_heads,all_heads+compile",
        help="variants measured at --baseline-ref (comma-separated)",
    )
    parser.add_argument(
        "--warmup-steps",
        type=int,
        default=None,
        help="env steps of an unreported auxrl warm-up run before the measured training variants "
        "(default: one PPO update, num_envs x ppo.num_steps; 0: none)",
    )
    args = parser.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in ALL_VARIANTS]
    if unknown:
        parser.error(f"--variants: unknown {', '.join(unknown)}; choose from {', '.join(ALL_VARIANTS)}")
    args.variants = variants
    args.baseline_variants = [v.strip() for v in args.baseline_variants.split(",") if v.strip()]
    if args.steps < 1 or args.num_envs < 1:
        parser.error("--steps and --num-envs must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    """Measure every requested variant, write the .md and .json, print the table."""
    args = parse_args(argv)
    use_checkout()
    from auxrl.configfile import load_config, load_dict
    from auxrl.device import resolve_device

    common = base_overrides(args, args.steps)
    cfg = load_config(args.config, common)
    device = resolve_device(args.device)
    meta = metadata(args, cfg, device)
    task_names = sorted(set(HEADS) | set((load_dict(args.config).get("aux") or {}).get("tasks") or {}))
    rows: list[Row] = []

    def record(variant: str, fn: Callable[[], Row]) -> None:
        print(f"[throughput] {variant} ...", flush=True)
        try:
            row = fn()
        except Exception as err:
            traceback.print_exc()
            row = Row(variant, error=f"{type(err).__name__}: {err}".strip())
        if row.sps is not None:
            print(f"[throughput] {variant}: {_fmt(row.sps)} SPS steady, {_fmt(row.wall_sps)} SPS wall")
        rows.append(row)

    with tempfile.TemporaryDirectory(prefix="auxrl-throughput-") as tmp:
        workdir = Path(tmp)
        if "env_only" in args.variants:
            warm = max(args.num_envs * 32, 256)
            record("env_only", lambda: run_env_only(cfg, args.steps, warm, cfg.seed))

        training = [v for v in args.variants if v in TRAINING_VARIANTS]
        warmup = cfg.ppo.num_steps * args.num_envs if args.warmup_steps is None else args.warmup_steps
        if training and warmup > 0:
            # First-call costs (imports, allocator, kernels/cuDNN autotuning) land here, not on ppo.
            print(f"[throughput] warm-up: {warmup:,} steps with all heads (not reported)", flush=True)
            try:
                run_training(
                    args.config,
                    base_overrides(args, warmup) + variant_overrides("all_heads", task_names),
                    args.device,
                    "warmup",
                    workdir,
                )
            except Exception:
                traceback.print_exc()
                print("[throughput] warm-up failed; measuring anyway", flush=True)

        for variant in training:
            if variant == "all_heads+bf16" and device.type != "cuda":
                rows.append(Row(variant, note="skipped: bf16 autocast applies on CUDA only"))
                continue
            overrides = common + variant_overrides(variant, task_names)
            if args.subprocess:
                measure = functools.partial(train_subprocess, args, REPO_ROOT, variant, variant, workdir)
            else:
                measure = functools.partial(
                    run_training, args.config, overrides, args.device, variant, workdir
                )
            record(variant, measure)

        for n in args.nproc:
            record(f"ppo --nproc {n}", functools.partial(run_nproc, args, n, workdir))

        if args.baseline_ref:
            rows.extend(run_baseline(args, workdir))

        if "sb3" in args.variants:
            wanted = args.sb3 if args.sb3 is not None else sb3_available()
            if not sb3_available():
                rows.append(
                    Row(
                        "sb3",
                        note="skipped: stable_baselines3 is not installed "
                        "(pip install 'auxrl[bench]' or stable-baselines3)",
                    )
                )
            elif not wanted:
                rows.append(Row("sb3", note="skipped: --no-sb3"))
            else:
                record("sb3", lambda: run_sb3(cfg, args, str(device)))

    ratio = ratios(rows)
    report = markdown_report(meta, rows, ratio)
    md_path, json_path = output_paths(Path(args.out_dir), f"{device_slug(device)}-{meta['date']}")
    md_path.write_text(report)
    json_path.write_text(
        json.dumps(
            {"metadata": meta, "rows": [asdict(r) for r in rows], "ratios": ratio, "markdown": report},
            indent=2,
        )
        + "\n"
    )
    print(f"\nWrote {md_path} and {json_path}\n")
    print(markdown_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
