"""Run a tuning spec: ``auxrl tune SPEC [--trials N] [--storage URL] [--study-name NAME] [--jobs N]``.

A trial is ordinary ``auxrl train`` runs, one per seed of the spec, in
``OUT/trials/<trial number>/seed_<seed>``, trained in parallel with the sampled values. Each run
writes a checkpoint at ``steps * k / evals`` (``log.checkpoint_every``; ``log.keep_checkpoints=0``
keeps them all), and the tuner evaluates each one as it appears, while the run trains on: it
plays ``eval_episodes`` whole games with it (auxrl eval's evaluation, env seed 12345 + the run's
seed, as auxrl study scores runs), and once every seed has reached evaluation k it reports their
mean to Optuna at step k. The pruner compares the trial's best so far with the median of the
complete trials' at the same k; a pruned trial's runs get SIGINT (each saves a checkpoint and
exits). The trial's value is the evaluation of its final checkpoints. So every trial is one
uninterrupted run per seed, trained exactly as ``auxrl train`` with those values would train it
(the learning-rate schedule sees the whole budget; training in chunks with ``--resume`` would
anneal it to zero at every chunk), and the numbers pruning compares are real evaluations, not
the noisier training returns.

The study lives in an Optuna storage (``--storage``, default ``sqlite:///OUT/optuna.db``) under
``--study-name`` (default: the spec's file name), loaded if it exists: the same command continues
a stopped search, and several processes (or machines, with a database server's URL) given the
same storage and name work on one study. ``--trials N`` is the study's total of finished trials
(complete or pruned), counting those of every process. The storage records the spec, and a
process whose spec differs from it is refused.

At the end, and after a stop: ``OUT/trials.csv`` and ``OUT/trials.md`` (every trial, its values,
evaluations and state) and ``OUT/best.yaml``: the base config with the best trial's values (and
the spec's env and extra_overrides) applied, ready for ``auxrl train OUT/best.yaml``.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from auxrl.config import ConfigError
from auxrl.configfile import apply_override, follow_overrides, from_dict, load_dict, parse_override
from auxrl.study.runner import EVAL_SEED, child_env
from auxrl.tune.spec import Tuning

INSTALL = 'pip install "auxrl[tune]"'
TRIALS_DIR = "trials"
BEST_FILE = "best.yaml"
TABLE_CSV = "trials.csv"
TABLE_MD = "trials.md"
SPEC_ATTR = "auxrl_tune_spec"
STOP_WAIT_S = 300.0
_STEP_FILE = re.compile(r"step_(\d+)\.pt$")


def say(message: str) -> None:
    print(f"[tune] {message}", flush=True)


def import_optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise ImportError(f"auxrl tune needs Optuna; {INSTALL}.") from None
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # the tuner says what happens, in its words
    return optuna


class TrialFailed(Exception):
    """A trial's run exited with an error or left no final checkpoint: the trial is FAIL, the
    search goes on."""


class TuneStopped(KeyboardInterrupt):
    """Ctrl-C or SIGTERM: the running trials stop (their runs save) and the search ends."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def eval_index(step: int, steps: int, evals: int) -> int:
    """The evaluation (1..evals) a checkpoint at ``step`` stands for: its share of the budget."""
    if step >= steps:
        return evals
    return max(1, min(evals - 1, step * evals // steps))


def _fmt(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


@dataclass
class _Run:
    """One seed of a trial: its ``auxrl train`` process."""

    seed: int
    run_dir: Path
    log: Path
    proc: subprocess.Popen
    signalled: bool = False
    scores: dict[int, tuple[int, float]] = field(default_factory=dict)  # eval index -> (step, score)


class Tuner:
    """The objective Optuna calls, and the runs it has in flight (see the module docstring)."""

    def __init__(self, tuning: Tuning, out: Path, *, device: str, threads: int) -> None:
        self.tuning, self.spec, self.out = tuning, tuning.spec, out
        self.device, self.threads = device, threads
        self.optuna = import_optuna()
        self.stop_event = threading.Event()
        self.signum = signal.SIGINT
        self._lock = threading.RLock()  # re-entrant: the signal handler takes it in the main thread
        self._live: list[_Run] = []

    @property
    def checkpoint_every(self) -> int:
        return max(1, math.ceil(self.spec.steps / self.spec.evals))

    # ---------------------------------------------------------------- runs
    def start(self, number: int, params: dict[str, Any], seed: int) -> _Run:
        run_dir = (self.out / TRIALS_DIR / f"{number:04d}" / f"seed_{seed}").resolve()
        log = run_dir.parent / f"seed_{seed}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable, "-m", "auxrl.cli", "train", str(self.tuning.base_path),
            *self.tuning.overrides(params, seed, self.checkpoint_every),
            "--run-dir", str(run_dir), "--device", self.device, "--no-progress",
        ]  # fmt: skip
        # Through launch.py (no preexec_fn: Optuna's --jobs are threads): SIGINT at its default,
        # its own session (a terminal's Ctrl-C reaches the tuner only), SIGINT if the tuner dies.
        launch = [sys.executable, "-m", "auxrl.study.launch", str(os.getpid()), "-", "--", *command]
        with self._lock:
            if self.stop_event.is_set():
                raise TuneStopped(self.signum)
            with open(log, "a") as out:
                out.write(f"$ {' '.join(command)}\n")
                out.flush()
                proc = subprocess.Popen(
                    launch,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env={**os.environ, **child_env(self.threads)},
                    start_new_session=True,
                )
            run = _Run(seed, run_dir, log, proc)
            self._live.append(run)
        return run

    def interrupt(self, runs: list[_Run]) -> None:
        """One SIGINT to each run still training (it saves a checkpoint and exits)."""
        with self._lock:
            for run in runs:
                if not run.signalled and run.proc.poll() is None:
                    run.signalled = True
                    run.proc.send_signal(signal.SIGINT)

    def finish(self, runs: list[_Run]) -> None:
        """Stop what still trains and wait for it (killed after STOP_WAIT_S)."""
        self.interrupt(runs)
        deadline = time.monotonic() + STOP_WAIT_S
        for run in runs:
            try:
                run.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                run.proc.kill()
                run.proc.wait()
        with self._lock:
            self._live = [r for r in self._live if r not in runs]

    def stop_all(self, signum: int) -> None:
        """Signal handler: stop every trial (their runs save) and start no new one."""
        self.signum = signum
        self.stop_event.set()
        with self._lock:
            live = list(self._live)
        self.interrupt(live)

    # ---------------------------------------------------------------- evaluations
    def evaluate(self, path: Path, seed: int) -> float:
        from auxrl.evaluate import evaluate
        from auxrl.inference import load_agent

        agent = load_agent(path, self.device)
        return float(evaluate(agent, self.spec.eval_episodes, seed=(EVAL_SEED + seed) % 2**32).mean)

    def evaluate_new(self, run: _Run) -> None:
        """Evaluate the run's checkpoints that stand for an evaluation not scored yet."""
        found = []
        for path in (run.run_dir / "checkpoints").glob("step_*.pt"):
            match = _STEP_FILE.search(path.name)
            if match:
                found.append((int(match.group(1)), path))
        for step, path in sorted(found):
            index = eval_index(step, self.spec.steps, self.spec.evals)
            if index in run.scores:
                continue
            try:
                run.scores[index] = (step, self.evaluate(path, run.seed))
            except (ValueError, OSError, RuntimeError) as err:
                raise TrialFailed(f"evaluating {path}: {err}") from None

    # ---------------------------------------------------------------- the objective
    def suggest(self, trial: Any) -> dict[str, Any]:
        params: dict[str, Any] = {}
        for key, p in self.spec.search_space.items():
            if p.type == "float":
                params[key] = trial.suggest_float(key, p.low, p.high, log=p.log, step=p.step)
            elif p.type == "int":
                step = int(p.step) if p.step is not None else 1
                params[key] = trial.suggest_int(key, int(p.low or 0), int(p.high or 0), log=p.log, step=step)
            else:
                params[key] = trial.suggest_categorical(key, p.choices or [])
        return params

    def __call__(self, trial: Any) -> float:
        if self.stop_event.is_set():
            trial.set_user_attr("stopped", True)
            raise TuneStopped(self.signum)
        number, evals = trial.number, self.spec.evals
        params = self.suggest(trial)
        started = time.monotonic()
        runs: list[_Run] = []
        reported: dict[int, float] = {}
        try:
            for seed in self.spec.seeds:
                runs.append(self.start(number, params, seed))
            trial.set_user_attr("run_dirs", [str(r.run_dir) for r in runs])
            say(f"trial {number}: {_fmt(params)} ({len(runs)} run{'s' if len(runs) > 1 else ''})")
            while True:
                alive = [r for r in runs if r.proc.poll() is None]
                for run in runs:
                    self.evaluate_new(run)
                for index in range(1, evals + 1):
                    got = [run.scores.get(index) for run in runs]
                    if index in reported or any(g is None for g in got):
                        continue
                    value = sum(g[1] for g in got if g) / len(got)
                    step = max(g[0] for g in got if g)
                    trial.report(value, index)
                    reported[index] = value
                    trial.set_user_attr("evals", {str(k): v for k, v in sorted(reported.items())})
                    trial.set_user_attr("step", step)
                    if index < evals and trial.should_prune():
                        self.finish(runs)
                        trial.set_user_attr("seconds", round(time.monotonic() - started, 1))
                        say(f"trial {number} pruned at eval {index}/{evals} (step {step:,}): {value:.2f}")
                        raise self.optuna.TrialPruned()
                if self.stop_event.is_set():
                    self.finish(runs)
                    trial.set_user_attr("stopped", True)
                    raise TuneStopped(self.signum)
                if not alive:
                    break
                time.sleep(0.5)
        finally:
            self.finish(runs)  # a no-op unless something above failed: no run trains on unwatched
        trial.set_user_attr("seconds", round(time.monotonic() - started, 1))
        for run in runs:
            if run.proc.returncode != 0:
                tail = (
                    run.log.read_text(errors="replace").strip().splitlines()[-1:] if run.log.exists() else []
                )
                code = run.proc.returncode
                say(f"trial {number} FAILED: seed {run.seed} exited with code {code}; log {run.log}")
                raise TrialFailed(f"seed {run.seed} exited with code {code}: {' '.join(tail)}")
        if evals not in reported:
            raise TrialFailed(f"no final evaluation (checkpoints in {runs[0].run_dir})")
        say(f"trial {number} complete: {reported[evals]:.2f} in {(time.monotonic() - started) / 60:.1f} min")
        return reported[evals]


# --------------------------------------------------------------------------------------------
# The study, the outputs
# --------------------------------------------------------------------------------------------


def _spec_record(tuning: Tuning) -> dict[str, Any]:
    data = tuning.spec.model_dump(mode="json")
    data.pop("description", None)
    data["base"] = str(tuning.base_path)
    return data


def open_study(tuning: Tuning, storage: str, name: str) -> Any:
    """Create the study or load it, refusing one made with another spec."""
    optuna = import_optuna()
    spec = tuning.spec
    direction = spec.direction
    pruner = (
        # Reports are at steps 1..evals: n_warmup_steps = w + 1 keeps the first w evaluations safe.
        optuna.pruners.MedianPruner(
            n_startup_trials=spec.pruner.startup_trials, n_warmup_steps=spec.pruner.warmup_evals + 1
        )
        if spec.pruner.type == "median"
        else optuna.pruners.NopPruner()
    )
    try:
        study = optuna.create_study(
            storage=storage, study_name=name, direction=direction, pruner=pruner, load_if_exists=True
        )
    except ValueError as err:  # e.g. an existing study with another direction
        raise ValueError(f"--storage {storage} --study-name {name}: {err}") from None
    record = _spec_record(tuning)
    before = study.user_attrs.get(SPEC_ATTR)
    if before is None:
        study.set_user_attr(SPEC_ATTR, record)
    elif before != record:
        changed = next(k for k in sorted(set(before) | set(record)) if before.get(k) != record.get(k))
        raise ConfigError(
            f"{tuning.path}: {changed} is {record.get(changed)!r}, but the study {name!r} in {storage} was "
            f"made with {before.get(changed)!r}; give another --study-name (or --storage), or put it back."
        )
    # The sampler's seed moves on with the trials already there: a process joining a study does
    # not repeat the first one's random start-up trials, and one process alone is reproducible.
    seed = spec.sampler.seed + len(study.trials)
    if spec.sampler.type == "tpe":
        study.sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=spec.sampler.startup_trials)
    else:
        study.sampler = optuna.samplers.RandomSampler(seed=seed)
    return study


def best_config(tuning: Tuning, params: dict[str, Any]) -> dict[str, Any]:
    """The base config's mapping with the spec's env and extra_overrides and ``params`` applied,
    read as ``auxrl train`` reads overrides (validated)."""
    data = load_dict(tuning.base_path)
    env = data.get("env")
    file_env_id = env.get("id") if isinstance(env, dict) else None
    given: list[tuple[str, Any]] = []
    texts = [*tuning.fixed_overrides(), *(f"{k}={json.dumps(v)}" for k, v in params.items())]
    for text in texts:
        given += apply_override(data, *parse_override(text))
    follow_overrides(data, given, file_env_id)
    from_dict(data)  # the checks auxrl train makes
    return data


def _state(trial: Any) -> str:
    return "STOPPED" if trial.user_attrs.get("stopped") else trial.state.name


def table_rows(study: Any, tuning: Tuning) -> list[dict[str, Any]]:
    rows = []
    for t in sorted(study.trials, key=lambda t: t.number):
        evals = t.user_attrs.get("evals", {})
        rows.append(
            {
                "trial": t.number,
                "state": _state(t),
                "value": t.value if t.state.name == "COMPLETE" else None,  # a pruned one's is its last report
                **{key: t.params.get(key) for key in tuning.spec.search_space},
                "evaluations": " ".join(
                    f"{float(v):.2f}" for _, v in sorted(evals.items(), key=lambda kv: int(kv[0]))
                ),
                "step": t.user_attrs.get("step"),
                "seconds": t.user_attrs.get("seconds"),
                "run_dirs": " ".join(t.user_attrs.get("run_dirs", [])),
            }
        )
    return rows


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def write_outputs(study: Any, tuning: Tuning, out: Path, storage: str) -> list[Path]:
    """trials.csv, trials.md and (with a complete trial) best.yaml; the paths written."""
    rows = table_rows(study, tuning)
    written = []
    columns = list(rows[0]) if rows else ["trial", "state", "value", *tuning.spec.search_space]
    with open(out / TABLE_CSV, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    written.append(out / TABLE_CSV)

    counts = {s: sum(r["state"] == s for r in rows) for s in ("COMPLETE", "PRUNED", "FAIL", "STOPPED")}
    spec = tuning.spec
    lines = [
        f"# {spec.description or f'auxrl tune {tuning.path.name}'}",
        "",
        f"Study `{study.study_name}` in `{storage}`: {len(rows)} trials, {counts['COMPLETE']} complete, "
        f"{counts['PRUNED']} pruned, {counts['FAIL']} failed"
        + (f", {counts['STOPPED']} stopped" if counts["STOPPED"] else "")
        + f". Each trial: {len(spec.seeds)} run(s) of {spec.steps:,} steps on "
        f"{spec.env or 'the base config env'}, evaluated {spec.evals} times on {spec.eval_episodes} games; "
        f"{spec.direction} the last evaluation.",
        "",
    ]
    best = _best(study)
    if best is not None:
        lines += [f"Best: trial {best.number}, {best.value:.2f} with {_fmt(best.params)} ({BEST_FILE}).", ""]
    shown = [c for c in columns if c != "run_dirs"]
    lines += ["| " + " | ".join(shown) + " |", "|" + "---|" * len(shown)]
    lines += ["| " + " | ".join(_cell(r[c]) for c in shown) + " |" for r in rows]
    (out / TABLE_MD).write_text("\n".join(lines) + "\n")
    written.append(out / TABLE_MD)

    if best is not None:
        data = best_config(tuning, best.params)
        header = (
            f"# auxrl tune {tuning.path}: the best of {len(rows)} trials in study {study.study_name!r} "
            f"({dt.date.today().isoformat()}):\n"
            f"# trial {best.number}, {best.value:.2f} (the mean of {spec.eval_episodes} games on the final "
            f"checkpoint of each of {len(spec.seeds)} run(s))\n"
            f"# with {_fmt(best.params)}.\n"
            f"# It was trained with ppo.total_steps={spec.steps}; this file keeps the base config's "
            f"ppo.total_steps.\n# Train it: auxrl train {out / BEST_FILE}\n"
        )
        (out / BEST_FILE).write_text(header + yaml.safe_dump(data, sort_keys=False))
        written.append(out / BEST_FILE)
    return written


def _best(study: Any) -> Any:
    try:
        return study.best_trial
    except ValueError:  # no complete trial yet
        return None


def run_tune(
    tuning: Tuning,
    out: Path,
    *,
    trials: int,
    storage: str | None = None,
    study_name: str | None = None,
    jobs: int = 1,
    device: str = "auto",
) -> int:
    """Run trials until the study has ``trials`` finished ones; 0, or 128 + signal when stopped."""
    from auxrl.perf import available_cores

    optuna = import_optuna()
    if trials < 1:
        raise ValueError(f"--trials {trials}: give 1 or more.")
    if jobs < 1:
        raise ValueError(f"--jobs {jobs}: give 1 or more.")
    out.mkdir(parents=True, exist_ok=True)
    storage = storage or f"sqlite:///{(out / 'optuna.db').resolve()}"
    name = study_name or tuning.path.stem
    study = open_study(tuning, storage, name)
    finished_states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    done = len(study.get_trials(deepcopy=False, states=finished_states))
    threads = max(1, available_cores() // (jobs * len(tuning.spec.seeds)))
    try:
        import torch

        torch.set_num_threads(threads)  # the evaluations here share the cores with the runs
    except ImportError:
        pass
    tuner = Tuner(tuning, out, device=device, threads=threads)
    say(
        f"study {name!r} in {storage}: {done} of {trials} trials finished; {jobs} at a time, "
        f"{len(tuning.spec.seeds)} run(s) each with {threads} thread(s); trials in {out / TRIALS_DIR}"
    )
    started = time.monotonic()
    stopped: TuneStopped | None = None
    if done < trials:
        handlers = {
            sig: signal.signal(sig, lambda s, f: tuner.stop_all(s)) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            study.optimize(
                tuner,
                n_trials=trials - done,
                n_jobs=jobs,
                catch=(TrialFailed,),
                callbacks=[optuna.study.MaxTrialsCallback(trials, states=finished_states)],
            )
        except TuneStopped as err:
            stopped = err
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
    written = write_outputs(study, tuning, out, storage)
    states = [_state(t) for t in study.trials]
    say(
        f"{len(states)} trials: {states.count('COMPLETE')} complete, {states.count('PRUNED')} pruned, "
        f"{states.count('FAIL')} failed"
        + (f", {states.count('STOPPED')} stopped" if "STOPPED" in states else "")
        + f"; this run took {(time.monotonic() - started) / 60:.1f} min"
    )
    best = _best(study)
    if best is not None:
        say(f"best: trial {best.number}, {best.value:.2f} with {_fmt(best.params)}")
    say(f"wrote {', '.join(str(p) for p in written)}")
    if stopped is not None:
        say("stopped; run the same command again to continue the study.")
        return 128 + stopped.signum
    return 0
