"""Score one trained run of a study: ``python -m auxrl.study.score RUN_DIR --episodes K --steps N``.

Plays ``K`` whole games (``auxrl eval``'s evaluation, through its Python API rather than parsing
its output; a multi-task agent ``K`` of each of its tasks, scored by the mean of the tasks'
means) on the run's latest checkpoint and writes ``score.json`` beside it, plus
``curve.json``: the run's episodic returns from its TensorBoard files, small enough to commit
where the event files and checkpoints are not. A separate process so that any backend (local
processes, a cluster's jobs) runs it as it runs ``auxrl train``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from auxrl.study.state import CURVE_FILE, SCORE_FILE, checkpoint_step, write_json

if TYPE_CHECKING:
    import numpy as np

RETURN_TAG = "charts/episodic_return"


def score_run(
    run_dir: Path,
    *,
    episodes: int,
    steps: int,
    device: str = "auto",
    seed: int = 12345,
    labels: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate the run's latest checkpoint and write ``score.json`` (and ``curve.json``)."""
    from auxrl import __version__, checkpoint
    from auxrl.evaluate import EvalResult, evaluate
    from auxrl.inference import load_agent
    from auxrl.trainer import EPISODE_METRIC_TAG

    step = checkpoint_step(run_dir)
    if step is None or step < steps:
        raise ValueError(
            f"{run_dir}: trained to step {step or 0:,} of {steps:,}; finish it first "
            f"(auxrl train --resume {run_dir})."
        )
    path = checkpoint.find(run_dir)
    started = time.monotonic()
    agent = load_agent(path, device)
    tasks: dict[str, Any] = {}
    if agent.task_names:  # multi-task: each task's games; the run's score is the mean of theirs
        for task in agent.task_names:
            played = evaluate(agent, episodes, seed=seed, task=task)
            env_id = agent.model.tasks[agent.task_index(task)].env_id
            tasks[env_id] = {"score": played.mean, "std": played.std, "returns": played.returns}
        returns = [r for t in tasks.values() for r in t["returns"]]
        result = EvalResult(returns, [], {}, {})
        mean = float(sum(t["score"] for t in tasks.values()) / len(tasks))
    else:
        result = evaluate(agent, episodes, seed=seed)
        mean = result.mean
    # The env's own scores (e.g. crafter/score) over every training episode, as training logged
    # them: what a spec's `score: crafter/score` compares, where 10 evaluation games are too few.
    score_tags = list(dict.fromkeys([*env_scores(agent.config), *result.scores]))
    task_tags = {task: f"charts/{task}/episodic_return" for task in agent.task_names or []}
    curves = score_curves(run_dir, [RETURN_TAG, *task_tags.values(), *score_tags], EPISODE_METRIC_TAG)
    trained = {tag: float(curves[tag][1][-1]) for tag in score_tags if tag in curves}
    # Each per-episode metric's mean over every training episode (e.g. Crafter's 22 success rates,
    # VizDoom's kills), kept here because the event files are not what a study commits.
    metrics = {
        tag.removeprefix(EPISODE_METRIC_TAG): float(values[-1])
        for tag, (_, values) in sorted(curves.items())
        if tag.startswith(EPISODE_METRIC_TAG)
    }
    data = {
        **(labels or {}),
        "score": mean,
        "std": result.std,
        "min": min(result.returns),
        "max": max(result.returns),
        "episodes": len(result.returns),
        "returns": result.returns,
        **({"env_scores": result.scores} if result.scores else {}),
        **({"train_scores": trained} if trained else {}),
        **({"train_metrics": metrics} if metrics else {}),
        **({"task_scores": tasks} if tasks else {}),  # env id -> score, std, returns
        "step": step,
        "checkpoint": path.name,
        "eval_seed": seed,
        "seconds": round(time.monotonic() - started, 1),
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "auxrl": __version__,
    }
    write_curve(run_dir, curves, task_tags, score_tags)
    write_json(run_dir / SCORE_FILE, data)
    return data


def env_scores(cfg: Any) -> tuple[str, ...]:
    """The scores the family of the run's env declares (none for a multi-task run's envs)."""
    from auxrl.envs.family import family_for

    return () if cfg.env.tasks else family_for(cfg.env.id, cfg.env.family).scores


Curves = dict[str, tuple["np.ndarray", "np.ndarray"]]  # tag -> (steps, values)


def score_curves(run_dir: Path, tags: Iterable[str], prefix: str | None = None) -> Curves:
    """(steps, values) of each scalar of ``tags``, and of every scalar whose tag starts with
    ``prefix``, in the run's events, all read in one pass over its event files (tags without
    values, or a run without events, are left out)."""
    from auxrl.plot import read_scalar_tags

    try:
        curves = read_scalar_tags(run_dir, tags, prefix)
    except (OSError, ValueError):  # no events: the report goes without curves
        return {}
    return {tag: curve for tag, curve in curves.items() if len(curve[1])}


def write_curve(run_dir: Path, curves: Curves, tasks: dict[str, str], scores: Iterable[str]) -> None:
    """``curve.json`` from ``curves`` (see :func:`score_curves`): (env step, episodic return) of
    every training episode; a multi-task run's also per task (``tasks``: task name -> its return
    tag), and the curves of the env's own ``scores`` (e.g. crafter/score) under ``scores``.
    Without a finished episode there is no curve.json: the report goes without it."""
    if RETURN_TAG not in curves:
        return
    steps, returns = curves[RETURN_TAG]
    curve: dict[str, Any] = {"tag": RETURN_TAG, "step": steps.tolist(), "value": returns.tolist()}
    for task, tag in tasks.items():  # the step is the run's global step: every task's env steps
        if tag in curves:
            steps, returns = curves[tag]
            curve.setdefault("tasks", {})[task] = {"step": steps.tolist(), "value": returns.tolist()}
    for tag in scores:
        if tag in curves:
            steps, values = curves[tag]
            curve.setdefault("scores", {})[tag] = {"step": steps.tolist(), "value": values.tolist()}
    write_json(run_dir / CURVE_FILE, curve)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m auxrl.study.score", description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path, help="the run directory")
    p.add_argument("--episodes", type=int, required=True, help="whole games to play")
    p.add_argument("--steps", type=int, required=True, help="the step the run must have reached")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--seed", type=int, default=12345, help="seed of the evaluation envs (default: 12345)")
    p.add_argument("--label", action="append", default=[], metavar="KEY=VALUE", help="recorded in score.json")
    args = p.parse_args(argv)
    labels: dict[str, Any] = {}
    for text in args.label:
        key, _, value = text.partition("=")
        labels[key] = int(value) if key == "seed" else value
    try:
        data = score_run(
            args.run,
            episodes=args.episodes,
            steps=args.steps,
            device=args.device,
            seed=args.seed,
            labels=labels,
        )
    except (ValueError, OSError) as err:
        print(f"auxrl study score: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # the study is stopping: score.json is written whole or not at all
        return 130
    print(
        f"{args.run.name}: {data['episodes']} episodes at step {data['step']:,}, score {data['score']:.2f} "
        f"+- {data['std']:.2f} (min {data['min']:.1f}, max {data['max']:.1f})",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
