"""The learner's hot-path changes (issue 14, item 1), each timed against the code before it.

One process, one run, the shapes of ``configs/breakout.yaml`` with all three heads (8 envs x 128
steps, 4 minibatches of 256 x 4 epochs, aux batches 32 / 8 / 32):

* ``adam``: one optimizer step over every trainable parameter of the all-heads agent. Before:
  ``torch.optim.Adam(params, lr, eps)`` (torch's default, the per-parameter loop on CPU; what
  the baseline ref built). After: ``auxrl.build.make_optimizer`` (fused where the device has
  it). The multi-tensor ``foreach`` form is timed too.
* ``scale``: one PPO minibatch of uint8 frame stacks to float32 in [0, 1]. Before:
  ``obs.float() / 255.0``; after: ``auxrl.models.torsos.scale_frames`` (one full-size copy,
  scaled in place); each eager and under ``torch.compile`` (does compile already fuse it?).
* ``replay``: every auxiliary window of one update (16 minibatches x 3 tasks) from a full replay.
  Before: the baseline ref's ``Replay.sample`` once per minibatch and task (a multinomial over
  every candidate for reward prediction's skewed draw; the newest ``next_obs`` patched in by a
  full-size ``torch.where``), loaded from git. After: ``AuxTasks.draw`` once per update, then a
  gather per minibatch and task, as the learner runs it.

Times are medians over ``--repeats`` calls after ``--warmup`` calls; the whole-training effect
(PPO-only and all heads, before and after, eager and compiled) is ``benchmarks/throughput.py``'s.

    OMP_NUM_THREADS=1 python benchmarks/hot_path.py                 # baseline: e6b27ba
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import (  # noqa: E402
    REPO_ROOT,
    command_section,
    cpu_model,
    device_name,
    device_slug,
    output_paths,
    use_checkout,
)

use_checkout()

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from auxrl.build import build_model, make_optimizer  # noqa: E402
from auxrl.configfile import load_config  # noqa: E402
from auxrl.curriculum import plan_stages  # noqa: E402
from auxrl.models.torsos import scale_frames  # noqa: E402
from auxrl.ppo.rollout import RolloutStorage  # noqa: E402
from auxrl.tasks.base import AuxOutput, AuxTask, Needs  # noqa: E402
from auxrl.tasks.combine import AuxTasks  # noqa: E402

BASELINE_REF = "e6b27ba"  # the code before the learner work (issues 9 and 14)
OBS_SHAPE = (4, 84, 84)
NUM_ACTIONS = 4  # Breakout's minimal action set
REWARD_RATE = 0.02  # share of stored steps with a non-zero reward (sparse, as on Atari)


@dataclass
class Row:
    component: str
    variant: str  # "before", "after", or a named alternative
    ms: float  # median milliseconds per call
    note: str = ""


def timed(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int) -> float:
    """Median milliseconds of ``fn()`` (the device synchronised around each call)."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


def module_at(ref: str, path: str, name: str) -> Any:
    """``path`` as it was at git ``ref``, imported as module ``name`` (its imports: this checkout)."""
    try:
        source = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "show", f"{ref}:{path}"], capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError) as err:
        raise SystemExit(f"hot_path.py: cannot read {path} at {ref} ({err}); pass --baseline-ref") from None
    with tempfile.TemporaryDirectory(prefix="hot_path_") as folder:
        file = Path(folder) / f"{name}.py"
        file.write_text(source)
        spec = importlib.util.spec_from_file_location(name, file)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------------------------
# The components
# --------------------------------------------------------------------------------------------


def adam_rows(cfg: Any, device: torch.device, repeats: int, warmup: int) -> list[Row]:
    obs_space = gym.spaces.Box(0, 255, OBS_SHAPE, np.uint8)
    agent = build_model(cfg, plan_stages(cfg), obs_space, gym.spaces.Discrete(NUM_ACTIONS)).to(device)
    params = [p for p in agent.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    count = sum(p.numel() for p in params)
    lr, eps = cfg.ppo.lr, cfg.ppo.adam_eps
    variants = {
        "before": torch.optim.Adam(params, lr=lr, eps=eps),
        "foreach": torch.optim.Adam(params, lr=lr, eps=eps, foreach=True),
        "after": make_optimizer(params, lr, eps),
    }
    rows = []
    for variant, opt in variants.items():
        kind = (
            "fused" if opt.defaults.get("fused") else "foreach" if opt.defaults.get("foreach") else "default"
        )
        note = f"{len(params)} tensors, {count:,} parameters; {kind}"
        rows.append(Row("adam step", variant, timed(opt.step, device, repeats, warmup), note))
    return rows


def scale_rows(batch: int, device: torch.device, repeats: int, warmup: int, compile_too: bool) -> list[Row]:
    frames = torch.randint(0, 256, (batch, *OBS_SHAPE), dtype=torch.uint8, device=device)

    def before(obs: torch.Tensor) -> torch.Tensor:
        return obs.float() / 255.0

    rows = []
    note = f"{batch} frame stacks {tuple(OBS_SHAPE)}"
    for variant, fn in (("before", before), ("after", scale_frames)):
        rows.append(
            Row("frame scaling", variant, timed(lambda fn=fn: fn(frames), device, repeats, warmup), note)
        )
    if compile_too:
        for variant, fn in (("before, compiled", before), ("after, compiled", scale_frames)):
            compiled = torch.compile(fn)
            rows.append(
                Row(
                    "frame scaling",
                    variant,
                    timed(lambda c=compiled: c(frames), device, repeats, warmup),
                    note,
                )
            )
    return rows


class _Windows(AuxTask):
    """A task that only asks for windows (the replay's cost without any network)."""

    def __init__(self, needs: Needs) -> None:
        super().__init__(None, None)  # type: ignore[arg-type]
        self.needs = needs

    def loss(self, seq, encode) -> AuxOutput:  # noqa: ANN001
        return AuxOutput(torch.zeros(()))  # the windows are gathered (copied) before this call


def refill(storage: RolloutStorage, generator: torch.Generator) -> None:
    """A rollout of random frames and actions with sparse rewards and rare terminations."""
    shape, device = (storage.num_steps, storage.num_envs), storage.device
    storage.obs.random_(0, 256, generator=generator)
    storage.next_obs.random_(0, 256, generator=generator)
    storage.actions.random_(0, NUM_ACTIONS, generator=generator)
    storage.rewards.copy_((torch.rand(shape, generator=generator, device=device) < REWARD_RATE).float())
    storage.terminated.copy_(torch.rand(shape, generator=generator, device=device) < 1e-3)


def replay_rows(cfg: Any, ref: str, device: torch.device, repeats: int, warmup: int) -> list[Row]:
    obs_space = gym.spaces.Box(0, 255, OBS_SHAPE, np.uint8)
    agent = build_model(cfg, plan_stages(cfg), obs_space, gym.spaces.Discrete(NUM_ACTIONS))
    needs = {name: head.needs for name, head in agent.heads.items() if isinstance(head, AuxTask)}
    tasks = {name: _Windows(n) for name, n in needs.items()}
    minibatches = cfg.ppo.update_epochs * cfg.ppo.num_minibatches
    generator = torch.Generator(device=device)
    generator.manual_seed(0)
    storage = RolloutStorage(
        cfg.ppo.num_steps, cfg.env.num_envs, OBS_SHAPE, torch.uint8, (), torch.int64, device
    )

    after = AuxTasks(tasks, cfg.aux, storage, seed=0)
    old = module_at(ref, "auxrl/tasks/replay.py", "replay_before").Replay(after.replay.capacity, storage)
    for _ in range(after.replay.capacity // storage.num_steps + 1):  # full, and wrapped around once
        refill(storage, generator)
        after.add_rollout(storage)
        old.add(storage)

    def update_before() -> None:
        for _ in range(minibatches):
            for name, task in tasks.items():
                seq = old.sample(
                    after.batch_sizes[name],
                    task.needs.sequence_length,
                    rewarding_fraction=task.needs.rewarding_fraction,
                    generator=generator,
                )
                task.loss(seq, None)

    def update_after() -> None:
        after.draw(minibatches)
        for _ in range(minibatches):
            after.losses(None)  # type: ignore[arg-type]

    sizes = ", ".join(f"{n} {after.batch_sizes[n]} x {needs[n].sequence_length + 1} obs" for n in tasks)
    replay = f"replay {after.replay.capacity} steps x {storage.num_envs} envs"
    note = f"{minibatches} minibatches x {len(tasks)} tasks ({sizes}); {replay}"
    return [
        Row("replay windows per update", "before", timed(update_before, device, repeats, warmup), note),
        Row("replay windows per update", "after", timed(update_after, device, repeats, warmup), note),
    ]


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def markdown(meta: dict[str, Any], rows: list[Row]) -> str:
    before = {r.component: r.ms for r in rows if r.variant == "before"}
    lines = [
        f"# Learner hot path: each change against {meta['baseline_ref']} "
        f"({meta['device']}, {meta['date'][:10]})",
        "",
        "| component | variant | median ms | speed-up over before | note |",
        "|---|---|--:|--:|---|",
    ]
    for r in rows:
        faster = r.component in before and r.variant != "before" and r.ms > 0
        ratio = f"{before[r.component] / r.ms:.2f}x" if faster else "-"
        lines.append(f"| {r.component} | {r.variant} | {r.ms:,.2f} | {ratio} | {r.note} |")
    lines += [
        "",
        "## Setup",
        "",
        *(f"- {k}: {v}" for k, v in meta.items() if k != "command"),
        "",
        *command_section(meta["command"]),
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--config", default="breakout", help="config whose shapes are used (default: breakout)"
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument(
        "--baseline-ref", default=BASELINE_REF, help=f"git ref of 'before' (default: {BASELINE_REF})"
    )
    parser.add_argument("--repeats", type=int, default=30, help="timed calls per row (default: 30)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed calls first (default: 5)")
    parser.add_argument("--no-compile", action="store_true", help="skip the compiled frame-scaling rows")
    parser.add_argument("--out-dir", type=Path, default=REPO_ROOT / "benchmarks" / "results")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. aux.replay_size=1024")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0:
        parser.error("--repeats must be >= 1 and --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    # The tasks from the replay, as when these changes were made (reward_prediction's and
    # next_state's default source now is PPO's minibatch, which draws no replay windows).
    replay = [f"aux.tasks.{task}.source=replay" for task in ("reward_prediction", "next_state")]
    cfg = load_config(args.config, ["aux.enabled=true", *replay, *args.overrides])
    batch = cfg.env.num_envs * cfg.ppo.num_steps // cfg.ppo.num_minibatches
    rows = [
        *adam_rows(cfg, device, args.repeats, args.warmup),
        *scale_rows(batch, device, args.repeats, args.warmup, not args.no_compile),
        *replay_rows(cfg, args.baseline_ref, device, args.repeats, args.warmup),
    ]
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    meta = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": device_name(device)
        if device.type == "cuda"
        else f"cpu ({cpu_model()}, {os.cpu_count()} cores)",
        "torch": f"{torch.__version__}, {torch.get_num_threads()} thread(s)",
        "config": f"{args.config} {' '.join(args.overrides)}".strip(),
        "baseline_ref": args.baseline_ref,
        "load average (1, 5, 15 min) at the end": load,
        "command": " ".join(["python benchmarks/hot_path.py", *(sys.argv[1:] if argv is None else argv)]),
    }
    md_path, json_path = output_paths(args.out_dir, f"hot-path-{device_slug(device)}-{meta['date'][:10]}")
    md_path.write_text(markdown(meta, rows))
    json_path.write_text(json.dumps({"meta": meta, "rows": [asdict(r) for r in rows]}, indent=2) + "\n")
    print(markdown(meta, rows))
    print(f"wrote {md_path} and {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
