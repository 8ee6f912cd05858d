"""Does a refactoring change what a run learns? Short fixed-seed runs, before and after, compared
tensor by tensor.

Each case trains ``auxrl train CONFIG OVERRIDES --device cpu`` (one torch thread) twice: with
``git archive REF`` of auxrl/ and configs/ (``--before``, default HEAD) and with this checkout.
The final checkpoints' model weights and optimizer state must be equal bit for bit
(``torch.equal`` on every tensor, the same keys). The cases cover PPO alone (MLP and conv torso),
the three built-in heads with the balancer, and issue 25's tasks (RAM labels, augmentation,
consistency, SPR-style latent prediction).

    python benchmarks/same_weights.py --before f5efaef --out benchmarks/results/same-weights-....md

Exit code 0 when every case is bit-identical, 1 otherwise.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
ATARI_SHORT = [
    "ppo.total_steps=1024",
    "env.num_envs=4",
    "ppo.num_steps=32",
    "ppo.num_minibatches=2",
    "ppo.update_epochs=2",
    "aux.batch_size=8",
    "perf.compile=false",
    "log.checkpoint_every=0",
]
CASES: dict[str, tuple[str, list[str]]] = {
    "cartpole (PPO alone, mlp)": ("cartpole", ["ppo.total_steps=4096", "log.checkpoint_every=0"]),
    "breakout (PPO alone, nature_cnn)": ("atari100k", [*ATARI_SHORT, "aux.enabled=false"]),
    "breakout (3 heads, norm balancing)": (
        "atari100k",
        [*ATARI_SHORT, "aux.enabled=true", "aux.tasks.pixel_control.enabled=true"],
    ),
    "breakout (state_prediction + spr + augment_consistency, RAD)": (
        "atari100k",
        [
            *ATARI_SHORT,
            "aux.enabled=true",
            "env.labels=[ram]",
            "ppo.augment=shift",
            "aux.tasks={state_prediction: {}, next_state: {mode: spr}, augment_consistency: {}}",
        ],
    ),
}


def train(checkout: Path, run_dir: Path, config: str, overrides: list[str]) -> Path:
    env = {
        **os.environ,
        "PYTHONPATH": str(checkout),
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    cmd = [sys.executable, "-m", "auxrl", "train", config, *overrides, "--run-dir", str(run_dir)]
    done = subprocess.run(
        [*cmd, "--device", "cpu", "--no-progress"], env=env, cwd=checkout, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise SystemExit(f"[same_weights] {' '.join(cmd)} failed in {checkout}:\n{done.stderr[-3000:]}")
    return max((run_dir / "checkpoints").glob("step_*.pt"), key=lambda p: int(p.stem.split("_")[1]))


def tensors(path: Path) -> dict[str, torch.Tensor]:
    """Model weights and optimizer state of a checkpoint, flat."""
    saved = torch.load(path, map_location="cpu", weights_only=True)
    out = {f"model.{k}": v for k, v in saved["model"].items()}
    for i, state in saved["optimizer"]["state"].items():
        for k, v in state.items():
            if torch.is_tensor(v):
                out[f"optimizer.{i}.{k}"] = v
    return out


def compare(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> tuple[bool, str]:
    if a.keys() != b.keys():
        return False, f"keys differ: {sorted(a.keys() ^ b.keys())[:5]}"
    differ = [k for k in a if a[k].shape != b[k].shape or not torch.equal(a[k], b[k])]
    if differ:
        worst = max(differ, key=lambda k: float((a[k].float() - b[k].float()).abs().max()))
        diff = float((a[worst].float() - b[worst].float()).abs().max())
        return False, f"{len(differ)}/{len(a)} tensors differ (largest: {worst}, max |diff| {diff:.3g})"
    return True, f"{len(a)} tensors equal"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--before", default="HEAD", help="git ref of 'before' (default HEAD)")
    p.add_argument("--out", type=Path, help="markdown report")
    p.add_argument("--cases", nargs="+", choices=list(CASES), help="a subset of the cases")
    args = p.parse_args(argv)
    rows, ok_all = [], True
    with tempfile.TemporaryDirectory(prefix="auxrl-same-weights-") as tmp:
        before = Path(tmp) / "before"
        before.mkdir()
        archive = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "archive", args.before, "auxrl", "configs"],
            check=True,
            capture_output=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(before)], input=archive, check=True)
        for i, name in enumerate(args.cases or CASES):
            config, overrides = CASES[name]
            old = tensors(train(before, Path(tmp) / f"b{i}", config, overrides))
            new = tensors(train(REPO_ROOT, Path(tmp) / f"a{i}", config, overrides))
            ok, detail = compare(old, new)
            ok_all &= ok
            rows.append((name, config, overrides, ok, detail))
            print(f"[same_weights] {name}: {'bit-identical' if ok else 'DIFFERENT'} ({detail})", flush=True)
    if args.out:
        lines = [
            f"# Same weights before and after ({dt.date.today().isoformat()})",
            "",
            f"Before: `git archive {args.before}`; after: the working tree of "
            f"`{_head()}`. Command: `python benchmarks/same_weights.py --before {args.before}`.",
            "",
            "| case | config + overrides | result |",
            "|---|---|---|",
        ]
        for name, config, overrides, ok, detail in rows:
            verdict = "bit-identical" if ok else "**different**"
            lines.append(f"| {name} | `{config} {' '.join(overrides)}` | {verdict}: {detail} |")
        args.out.write_text("\n".join(lines) + "\n")
    return 0 if ok_all else 1


def _head() -> str:
    return subprocess.run(
        ["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()


if __name__ == "__main__":
    sys.exit(main())
