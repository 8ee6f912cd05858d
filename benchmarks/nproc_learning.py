"""Does a multi-process run learn like a single-process one at the same total env steps?

Trains a config with ``--nproc 1`` and ``--nproc N`` for each seed (``auxrl train`` subprocesses;
``ppo.total_steps`` counts the steps of all processes, so both see the same amount of data) and
tabulates the final return (mean of the last 20 games) and the best rolling return.

Example::

    python benchmarks/nproc_learning.py --config cartpole --nproc 2 --seeds 1 2 3

Finished runs (final checkpoint at total_steps) are skipped when the command is run again.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))


def train(config: str, nproc: int, seed: int, steps: int, run_dir: Path) -> None:
    from auxrl import checkpoint

    try:
        if checkpoint.load(run_dir)["state"]["global_step"] >= steps:
            return  # finished earlier
        resume = ["--resume", str(run_dir)]
    except FileNotFoundError:
        resume = [config, "--run-dir", str(run_dir), f"seed={seed}"]
    cmd = [sys.executable, "-m", "auxrl", "train", *resume, f"ppo.total_steps={steps}", "--nproc", str(nproc)]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    subprocess.run([*cmd, "--no-progress", "--device", "cpu"], check=True, env=env, cwd=REPO_ROOT)


def summary(run_dir: Path) -> tuple[float, float]:
    """(mean of the last 20 returns, best mean of 20 consecutive returns)."""
    from auxrl.plot import read_scalars

    _, returns = read_scalars(run_dir, "charts/episodic_return")
    rolling = np.convolve(returns, np.ones(20) / 20, mode="valid")
    return float(np.mean(returns[-20:])), float(rolling.max())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="cartpole")
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--out-dir", default=f"benchmarks/results/nproc-{dt.date.today().isoformat()}")
    args = parser.parse_args()
    out = Path(args.out_dir)
    rows = []
    for seed in args.seeds:
        for n in (1, args.nproc):
            run_dir = out / "runs" / f"nproc{n}__{seed}"
            train(args.config, n, seed, args.steps, run_dir)
            rows.append((n, seed, *summary(run_dir)))
    lines = [
        f"# {args.config}: --nproc 1 vs --nproc {args.nproc} at {args.steps:,} total env steps",
        "",
        "| processes | seed | final return (last 20 games) | best rolling-20 return |",
        "|--:|--:|--:|--:|",
        *(f"| {n} | {seed} | {final:.1f} | {best:.1f} |" for n, seed, final, best in rows),
        "",
    ]
    for n in (1, args.nproc):
        finals = [r[2] for r in rows if r[0] == n]
        lines.append(
            f"- {n} process(es): final {np.mean(finals):.1f} +- {np.std(finals, ddof=1):.1f} (mean +- std)"
        )
    lines += ["", "Command:", "", "```", shlex.join(["python", *sys.argv]), "```", ""]
    (out / "results.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
