"""Compact summary of finished Crafter runs, for committing in place of their event files.

For each run directory (holding the TensorBoard events a training run wrote) this writes
``crafter_score.json``: the 22 achievements' success rates over every training episode (as the
run logged them, ``episode/achievement_*``), the Crafter score (geometric mean of the rates, as
the Crafter paper defines it), the score and mean return in each 100k-step window, and medians
over the last 100k steps of the auxiliary heads' and PPO's diagnostics (``aux/*``,
``losses/*``); and, where the run had heads, ``aux_curves.json`` (each ``aux/*`` scalar's step
and value). Run it before the event files go::

    python benchmarks/crafter_summary.py benchmarks/results/crafter-heads-cpu-2026-12-06/runs/*__2
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from auxrl.envs.crafter import crafter_score
from auxrl.plot import read_scalar_tags
from auxrl.trainer import EPISODE_METRIC_TAG

WINDOW = 100_000


def summarize(run_dir: Path) -> dict:
    curves = read_scalar_tags(run_dir)
    names = sorted(t for t in curves if t.startswith(EPISODE_METRIC_TAG + "achievement_"))
    if not names:
        raise ValueError(f"{run_dir}: no {EPISODE_METRIC_TAG}achievement_* scalars: not a Crafter run")
    last = int(max(steps[-1] for steps, _ in curves.values() if len(steps)))
    ret_steps, returns = curves["charts/episodic_return"]

    def rates(until: int) -> dict[str, float]:
        out = {}
        for tag in names:
            steps, values = curves[tag]
            done = values[steps <= until]  # logged: the mean over every episode so far
            out[tag.removeprefix(EPISODE_METRIC_TAG)] = float(done[-1]) if len(done) else 0.0
        return out

    def score(until: int) -> float:
        return crafter_score(rates(until))["crafter/score"]  # percent

    windows = []
    for start in range(0, last + 1, WINDOW):
        end = start + WINDOW
        inside = (ret_steps >= start) & (ret_steps < end)
        windows.append(
            {
                "steps": f"{start:,}-{end:,}",
                "episodes_logged": int(inside.sum()),
                "mean_return": round(float(returns[inside].mean()), 2) if inside.any() else None,
                "crafter_score_at_end": round(score(end), 2),
            }
        )

    def last_100k(prefix: str) -> dict[str, float]:
        out = {}
        for tag, (steps, values) in curves.items():
            recent = values[steps > last - WINDOW]
            if tag.startswith(prefix) and len(recent):
                out[tag] = round(float(np.median(recent)), 4)
        return out

    logged = curves.get("crafter/score")  # the run's own running score, a cross-check
    summary = {
        "run": str(run_dir),
        "last_step": last,
        "crafter_score": round(score(last), 3),
        "logged_crafter_score": round(float(logged[1][-1]), 3) if logged else None,
        "achievement_success_rates": {
            name.removeprefix("achievement_"): round(rate, 4) for name, rate in rates(last).items()
        },
        "windows": windows,
        "ppo_last_100k_median": last_100k("losses/"),
        **({"aux_last_100k_median": aux} if (aux := last_100k("aux/")) else {}),
    }
    (run_dir / "crafter_score.json").write_text(json.dumps(summary, indent=2) + "\n")
    aux_curves = {
        tag: {"step": s.tolist(), "value": [round(float(v), 5) for v in values]}
        for tag, (s, values) in curves.items()
        if tag.startswith("aux/")
    }
    if aux_curves:
        (run_dir / "aux_curves.json").write_text(json.dumps(aux_curves) + "\n")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories with their event files")
    args = parser.parse_args(argv)
    for run in args.runs:
        try:
            s = summarize(run)
        except (OSError, ValueError) as err:
            print(f"crafter_summary: {err}", file=sys.stderr)
            return 2
        print(
            f"{run}: step {s['last_step']:,}, Crafter score {s['crafter_score']:.2f}% "
            f"(logged {s['logged_crafter_score']})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
