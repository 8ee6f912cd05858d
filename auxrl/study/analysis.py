"""The numbers of a study report, from its run directories alone.

Aggregates follow Agarwal et al. (2021), "Deep RL at the edge of the statistical precipice",
with their ``rliable`` package: the interquartile mean (IQM), median, mean and optimality gap of
the normalised scores with 95% stratified-bootstrap intervals (runs resampled within each env),
and the probability of improvement P(X > Y) of each variant over the baseline. rliable wants the
same number of runs on every env for every variant, so they are computed on the largest matched
block of finished runs (:func:`matched_block`): a study reported half-way compares like with like.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from auxrl.study.scores import atari_game
from auxrl.study.spec import Run
from auxrl.study.state import CURVE_FILE, REPORT_SCORE_FILES, SCORE_FILE, read_json, read_score, run_status

Interval = tuple[float, float, float]  # point estimate, lower, upper
METRICS = ("IQM", "median", "mean", "optimality gap")
INSTALL = 'pip install "auxrl[study]"'


def rliable() -> tuple[Any, Any]:
    """rliable's ``library`` and ``metrics``, or an ImportError saying how to install them."""
    # arch (under rliable) warns that rliable's random_state argument is deprecated.
    warnings.filterwarnings("ignore", message="random_state is deprecated", category=FutureWarning)
    try:
        from rliable import library, metrics
    except Exception as err:  # ImportError, or arch failing to import under pandas >= 3
        raise ImportError(
            f"the study report needs rliable, pandas < 3 and matplotlib ({type(err).__name__}: {err}); "
            f"{INSTALL}"
        ) from None
    return library, metrics


@contextlib.contextmanager
def seeded_numpy(seed: int) -> Iterator[None]:
    """Seed numpy's global generator for the block, then restore it: rliable 1.2's stratified
    bootstrap draws from ``np.random`` and ignores its ``random_state``, so without this the
    intervals would change from one report of the same runs to the next."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


# --------------------------------------------------------------------------------------------
# Finished runs
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunResult:
    """A finished run's score (and what ``auxrl probe`` measured of it, where it was probed)."""

    run: Run
    score: float  # the spec's score: the evaluation games' mean return, or an env score (train_scores)
    normalized: float  # on the study's common scale
    std: float
    episodes: int
    step: int
    probe_f1: float | None = None  # probe.json's mean F1 over categories
    probe_random_f1: float | None = None  # the same probes on a random torso: the floor
    run_dir: Path | None = None  # where it was read (run_dir_of)
    score_file: str = SCORE_FILE  # score.json, or an older suite's eval.json


def run_dir_of(runs_dir: Path, run: Run) -> Path:
    """The directory of ``run``: ``runs_dir/<env>__<variant>__<seed>``, or for an Atari id, where
    only that exists, ``runs_dir/<Game>__<variant>__<seed>`` (suites of the retired benchmarks/atari100k.py:
    ``Breakout__no_aux__1`` for ALE/Breakout-v5), so a spec re-reports those committed runs."""
    own = runs_dir / run.name
    game = atari_game(run.env)
    if own.exists() or game is None:
        return own
    suite = runs_dir / f"{game}__{run.variant}__{run.seed}"
    return suite if suite.exists() else own


def score_of(data: dict[str, Any], score: str = "return") -> float | None:
    """A run's score by a spec's ``score``: its score file's mean evaluation return, or the named
    env score at its final training step (``train_scores``); None when the file lacks it."""
    value = data.get("score") if score == "return" else (data.get("train_scores") or {}).get(score)
    return _number(value)


def collect(
    runs_dir: Path,
    planned: Iterable[Run],
    steps: int,
    normalize: Callable[[str, float], float],
    score: str = "return",
) -> list[RunResult]:
    """The finished runs among ``planned``: scored at ``steps`` or later (see state.run_status),
    by their ``score.json`` or else their ``eval.json`` (an older suite's); ``score``: the spec's
    (see :func:`score_of`; a run scored without that env score is not counted)."""
    results = []
    for run in planned:
        run_dir = run_dir_of(runs_dir, run)
        score_file = next((f for f in REPORT_SCORE_FILES if read_score(run_dir, (f,))), SCORE_FILE)
        data = read_score(run_dir, (score_file,))
        if data is None or run_status(run_dir, steps, (score_file,)) != "done":
            continue
        value = score_of(data, score)
        if value is None:
            continue
        probe = (read_json(run_dir / "probe.json") or {}).get("summary") or {}
        results.append(
            RunResult(
                run,
                value,
                float(normalize(run.env, value)),
                float(data.get("std", math.nan)) if score == "return" else math.nan,
                int(data.get("episodes", 0)),
                int(data["step"]),
                _number(probe.get("f1_mean")),
                _number(probe.get("random_f1_mean")),
                run_dir,
                score_file,
            )
        )
    return results


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


@dataclass
class Block:
    """Matched runs: for every env, the same ``k`` seeds for every variant."""

    envs: list[str]
    seeds: dict[str, list[int]]  # env -> the k seeds used
    scores: dict[str, np.ndarray]  # variant -> (k, len(envs)) normalised scores

    @property
    def k(self) -> int:
        return len(next(iter(self.seeds.values()))) if self.seeds else 0

    @property
    def runs(self) -> int:
        """Matched runs per variant: envs x seeds."""
        return self.k * len(self.envs)

    def describe(self) -> str:
        if not self.envs:
            return "no matched runs yet"
        envs, seeds = ("env" if len(self.envs) == 1 else "envs"), ("seed" if self.k == 1 else "seeds")
        return f"{len(self.envs)} {envs} x {self.k} {seeds}, the same for every variant"


def matched_block(results: Sequence[RunResult], envs: Sequence[str], variants: Sequence[str]) -> Block:
    """The largest block of matched runs of ``variants`` on ``envs``: an env's matched seeds are
    those finished for every variant; the block takes ``k`` of them (the lowest) on every env with
    at least ``k``, ``k`` chosen to keep the most runs (ties: more envs)."""
    by_key = {(r.run.env, r.run.variant, r.run.seed): r for r in results}
    matched: dict[str, list[int]] = {}
    for env in envs:
        seed_sets = [{s for (e, v, s) in by_key if e == env and v == variant} for variant in variants]
        common = sorted(set.intersection(*seed_sets)) if seed_sets else []
        if common:
            matched[env] = common
    if not matched:
        return Block([], {}, {v: np.zeros((0, 0)) for v in variants})
    most = max(len(s) for s in matched.values())
    best_k = max(range(1, most + 1), key=lambda k: (k * sum(len(s) >= k for s in matched.values()), -k))
    used = [e for e in envs if len(matched.get(e, [])) >= best_k]
    seeds = {e: matched[e][:best_k] for e in used}
    scores = {
        v: np.array(
            [[by_key[(e, v, seeds[e][i])].normalized for e in used] for i in range(best_k)], dtype=np.float64
        )
        for v in variants
    }
    return Block(used, seeds, scores)


# --------------------------------------------------------------------------------------------
# rliable's estimates
# --------------------------------------------------------------------------------------------


def aggregate_estimates(
    scores: dict[str, np.ndarray], *, gap: bool, reps: int, seed: int = 0
) -> dict[str, dict[str, Interval]]:
    """IQM, median, mean (and, on a normalised scale, the optimality gap: the mean shortfall
    below 1; lower is better) of every variant, with 95% stratified-bootstrap intervals."""
    library, metrics = rliable()
    names = METRICS if gap else METRICS[:3]

    def aggregates(x: np.ndarray) -> np.ndarray:
        values = [metrics.aggregate_iqm(x), metrics.aggregate_median(x), metrics.aggregate_mean(x)]
        return np.array(values + ([metrics.aggregate_optimality_gap(x, 1.0)] if gap else []))

    with seeded_numpy(seed):
        points, intervals = library.get_interval_estimates(scores, aggregates, reps=reps)
    return {
        v: {
            m: (float(points[v][i]), float(intervals[v][0, i]), float(intervals[v][1, i]))
            for i, m in enumerate(names)
        }
        for v in scores
    }


def improvement_estimates(
    scores: dict[str, np.ndarray], baseline: str, *, reps: int, seed: int = 0
) -> dict[str, Interval]:
    """P(variant > baseline) of every other variant with 95% stratified-bootstrap intervals: the
    probability that a run of the variant scores higher than a run of the baseline on an env
    picked at random (the Mann-Whitney U statistic averaged over envs; ties count half)."""
    library, metrics = rliable()
    pairs = {f"{v},{baseline}": (scores[v], scores[baseline]) for v in scores if v != baseline}
    if not pairs:
        return {}

    def probability(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return np.array([metrics.probability_of_improvement(x, y)])

    with seeded_numpy(seed):
        points, intervals = library.get_interval_estimates(pairs, probability, reps=reps)
    return {
        pair.split(",")[0]: (
            float(points[pair][0]),
            float(intervals[pair][0, 0]),
            float(intervals[pair][1, 0]),
        )
        for pair in pairs
    }


MIN_RUNS = 3  # matched runs per variant below which a bootstrap interval means nothing


def verdict(p: Interval, runs: int) -> str:
    """What a P(X > Y) interval from ``runs`` matched runs per variant says, in words (with fewer
    than :data:`MIN_RUNS`, nothing: one run each gives a zero-width interval, not certainty)."""
    if runs < MIN_RUNS:
        return f"no verdict ({runs} matched run(s) per variant; an interval needs {MIN_RUNS} or more)"
    if p[1] > 0.5:
        return "better (the interval lies above 0.5)"
    if p[2] < 0.5:
        return "worse (the interval lies below 0.5)"
    return "no difference shown (the interval includes 0.5)"


def performance_profiles(
    scores: dict[str, np.ndarray], *, reps: int, seed: int = 0
) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The fraction of runs scoring above each threshold tau, with 95% bootstrap bands."""
    library, _ = rliable()
    values = np.concatenate([x.ravel() for x in scores.values()])
    low, high = float(values.min()), float(values.max())
    pad = 0.05 * (high - low) if high > low else 0.5
    tau = np.linspace(low - pad, high + pad, 101)
    with seeded_numpy(seed):
        profiles, cis = library.create_performance_profile(scores, tau, reps=reps)
    return tau, profiles, cis


# --------------------------------------------------------------------------------------------
# Learning curves
# --------------------------------------------------------------------------------------------


def read_curve(run_dir: Path, tag: str = "charts/episodic_return") -> tuple[np.ndarray, np.ndarray] | None:
    """A run's (env step, value) of ``tag`` (default: the episodic return): from its TensorBoard
    event files (tensorboard's EventAccumulator), else from ``curve.json`` (committed results keep
    that, not the events; an env score's curve is under its ``scores``; in an older suite's, the
    returns are under ``episodic_return``)."""
    from auxrl.plot import read_scalars

    if any(run_dir.glob("events.out.tfevents.*")):
        try:
            return read_scalars(run_dir, tag)
        except (OSError, ValueError):
            pass
    data = read_json(run_dir / CURVE_FILE) or {}
    curve = (data.get("scores") or {}).get(tag)
    if curve is None and data.get("tag", "charts/episodic_return") == tag:
        curve = {"step": data.get("step"), "value": data.get("value", data.get("episodic_return"))}
    steps, values = (curve or {}).get("step"), (curve or {}).get("value")
    if isinstance(steps, list) and steps and isinstance(values, list) and len(values) == len(steps):
        return np.asarray(steps, dtype=np.int64), np.asarray(values, dtype=np.float64)
    return None


@dataclass
class Band:
    """One variant's learning curve on one env: the mean over seeds and its 95% interval."""

    steps: np.ndarray
    mean: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    seeds: int


def curve_band(
    curves: Sequence[tuple[np.ndarray, np.ndarray]], smoothing: float = 0.9, points: int = 100
) -> Band | None:
    """Each seed's curve smoothed as TensorBoard does and interpolated onto the steps all of
    them reached; the mean over seeds with a Student-t 95% interval (none for a single seed)."""
    from auxrl.plot import ema_smooth

    curves = [(s, v) for s, v in curves if len(s) >= 2]
    if not curves:
        return None
    start = max(float(s[0]) for s, _ in curves)
    end = min(float(s[-1]) for s, _ in curves)
    if end <= start:
        return None
    grid = np.linspace(start, end, points)
    ys = np.array([np.interp(grid, s, ema_smooth(v, smoothing)) for s, v in curves])
    mean = ys.mean(axis=0)
    n = len(ys)
    if n < 2:
        return Band(grid, mean, mean.copy(), mean.copy(), n)
    from scipy import stats

    half = stats.t.ppf(0.975, n - 1) * ys.std(axis=0, ddof=1) / math.sqrt(n)
    return Band(grid, mean, mean - half, mean + half, n)
