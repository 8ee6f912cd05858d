"""``auxrl tune``: an Optuna search over config keys, with pruning, a trials table and a best config."""

from __future__ import annotations

import csv
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from auxrl.cli import main
from auxrl.configfile import load_config, shipped_config_names
from auxrl.tune.runner import eval_index
from auxrl.tune.spec import load_tune_spec

ROOT = Path(__file__).resolve().parent.parent

SPEC = {
    "description": "CartPole: learning rate and entropy bonus",
    "base": "cartpole",
    "env": "CartPole-v1",
    "steps": 8192,
    "eval_episodes": 2,
    "evals": 4,
    "search_space": {
        "ppo.lr": {"type": "float", "low": 1.0e-5, "high": 1.0e-2, "log": True},
        "ppo.ent_coef": {"type": "float", "low": 0.0, "high": 0.02},
    },
    "sampler": {"type": "tpe", "seed": 0, "startup_trials": 4},
    "pruner": {"type": "median", "startup_trials": 2},
    "extra_overrides": ["perf.threads=1"],
}


def write_spec(folder: Path, **changes) -> Path:
    path = folder / "tune.yaml"
    path.write_text(yaml.safe_dump({**SPEC, **changes}, sort_keys=False))
    return path


def tune(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    """``auxrl tune ...`` in a process of its own, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "auxrl.cli", "tune", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def read_table(out: Path) -> list[dict[str, str]]:
    with open(out / "trials.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize(
    "changes, says",
    [
        ({"trials": 3}, "Unknown key 'trials'"),
        (
            {"search_space": {"ppo.lrr": {"type": "float", "low": 0.1, "high": 0.2}}},
            "Unknown config key 'ppo.lrr'",
        ),
        (
            {"search_space": {"ppo.lr": {"type": "float", "low": 0.0, "high": 0.1, "log": True}}},
            "needs low > 0",
        ),
        ({"search_space": {"ppo.lr": {"type": "float", "low": 0.1}}}, "needs low and high"),
        ({"search_space": {"aux.balance.method": {"type": "categorical"}}}, "needs choices"),
        ({"search_space": {"aux.balance.method": {"type": "categorical", "choices": ["nrm"]}}}, "'nrm'"),
        ({"search_space": {"seed": {"type": "int", "low": 1, "high": 9}}}, "seed is set by the tuner"),
        ({"search_space": {"ppo.lr": {"type": "float", "low": 0.1, "high": 2.0}}}, "ppo.lr = 2.0"),
        ({"extra_overrides": ["ppo.total_steps=5"]}, "extra_overrides: ppo.total_steps is set by the tuner"),
        ({"steps": "many"}, "steps: expected an integer"),
    ],
)
def test_a_bad_spec_is_one_line_and_exit_2(tmp_path, capsys, changes, says):
    pytest.importorskip("optuna")
    out = tmp_path / "out"
    code = main(["tune", str(write_spec(tmp_path, **changes)), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("auxrl tune: error: ") and says in err, err
    assert not out.exists()  # nothing is written before the spec is good


def test_without_optuna_it_says_how_to_install_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)  # as if not installed
    assert main(["tune", str(write_spec(tmp_path)), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and 'pip install "auxrl[tune]"' in err, err


def test_the_shipped_example_spec_loads_and_is_no_run_config():
    tuning = load_tune_spec(ROOT / "configs" / "tune" / "cartpole.yaml")
    assert "aux.tasks.next_state.weight" in tuning.spec.search_space
    assert "cartpole" in shipped_config_names() and not any("tune" in n for n in shipped_config_names())


def test_checkpoints_map_to_the_evaluations_they_stand_for():
    # 8192 steps, 4 evaluations: checkpoints every 2048 steps (at the first whole rollout past each).
    assert [eval_index(s, 8192, 4) for s in (2048, 2304, 4096, 6144, 8192, 8448)] == [1, 1, 2, 3, 4, 4]


@pytest.mark.slow
def test_a_search_prunes_reports_and_writes_a_config_that_trains(tmp_path, capsys):
    pytest.importorskip("optuna")
    spec, out = write_spec(tmp_path), tmp_path / "out"
    started = time.monotonic()
    first = tune(str(spec), "--trials", "6", "--out", str(out))
    seconds = time.monotonic() - started
    assert first.returncode == 0, first.stdout + first.stderr
    rows = read_table(out)
    states = [r["state"] for r in rows]
    assert len(rows) == 6 and set(states) <= {"COMPLETE", "PRUNED"}, states
    assert "COMPLETE" in states and "PRUNED" in states, first.stdout
    for row in rows:  # a complete trial was evaluated 4 times, a pruned one fewer
        assert len(row["evaluations"].split()) == (
            4 if row["state"] == "COMPLETE" else int(row["step"]) * 4 // 8192
        )
    pruned = [Path(r["run_dirs"]) for r in rows if r["state"] == "PRUNED"]
    logs = [(d.parent / f"{d.name}.log").read_text() for d in pruned]
    assert any("Stopped after update" in log for log in logs), "no pruned trial stopped its run early"
    md = (out / "trials.md").read_text()
    assert f"{states.count('PRUNED')} pruned" in md and "| trial | state | value | ppo.lr |" in md

    best = max((r for r in rows if r["state"] == "COMPLETE"), key=lambda r: float(r["value"]))
    cfg = load_config(out / "best.yaml")
    assert cfg.ppo.lr == pytest.approx(float(best["ppo.lr"])) and cfg.perf.threads == 1
    print(
        f"\nCartPole tune: 6 trials in {seconds:.0f} s, {states.count('PRUNED')} pruned, best value "
        f"{float(best['value']):.2f} with ppo.lr={float(best['ppo.lr']):.3g}, "
        f"ppo.ent_coef={float(best['ppo.ent_coef']):.3g}"
    )
    run = tmp_path / "best_run"
    assert (
        main(
            ["train", str(out / "best.yaml"), "ppo.total_steps=1024", "--run-dir", str(run), "--no-progress"]
        )
        == 0
    )
    assert (run / "checkpoints" / "latest").is_file()

    # The study is in its storage: the same command has nothing left to do...
    again = tune(str(spec), "--trials", "6", "--out", str(out))
    assert again.returncode == 0 and "6 of 6 trials finished" in again.stdout, again.stdout + again.stderr
    assert len(read_table(out)) == 6
    # ...and a spec that would mix other trials into it is refused.
    capsys.readouterr()
    assert main(["tune", str(write_spec(tmp_path, steps=4096)), "--trials", "7", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "steps is 4096, but the study 'tune'" in err, err


@pytest.mark.slow
def test_a_stopped_search_saves_its_runs_and_continues(tmp_path):
    pytest.importorskip("optuna")
    spec = write_spec(tmp_path, steps=65536, evals=4)
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "auxrl.cli",
            "tune",
            str(spec),
            "--trials",
            "3",
            "--jobs",
            "2",
            "--out",
            str(out),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
    )
    deadline = time.monotonic() + 180
    while not list(out.glob("trials/*/seed_1/checkpoints/step_*.pt")):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0]
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == 130, output
    assert "run the same command again to continue" in output
    rows = read_table(out)
    assert len(rows) == 2 and {r["state"] for r in rows} == {"STOPPED"}, rows  # --jobs 2: two at once
    for row in rows:  # each run saved a checkpoint short of its steps
        log = (Path(row["run_dirs"]).parent / "seed_1.log").read_text()
        assert "Saved a checkpoint at step" in log, log
    assert not (out / "best.yaml").exists()  # no trial finished
