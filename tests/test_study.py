"""``auxrl study``: a spec's matrix of runs, resumable, and its rliable report."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from auxrl.cli import main
from auxrl.configfile import shipped_config_names
from auxrl.study.spec import load_spec

ROOT = Path(__file__).resolve().parent.parent

SPEC = {
    "description": "CartPole: a high against a low learning rate",
    "base": "cartpole",
    "envs": ["CartPole-v1"],
    "variants": {"lr_hi": ["ppo.lr=3e-3"], "lr_lo": {"ppo.lr": 1.0e-4}},
    "baseline": "lr_lo",
    "seeds": [1, 2],
    "steps": 2048,
    "eval_episodes": 2,
    "normalize": "minmax",
    "ranges": {"CartPole-v1": [22, 500]},
    "extra_overrides": ["perf.threads=1"],
}


def write_spec(folder: Path, **changes) -> Path:
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump({**SPEC, **changes}, sort_keys=False))
    return path


def study(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """``auxrl study ...`` in a process of its own, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "auxrl.cli", "study", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def assert_interval(x: dict) -> None:
    assert all(math.isfinite(x[k]) for k in ("point", "lower", "upper")), x
    assert x["lower"] <= x["point"] <= x["upper"], x


@pytest.mark.parametrize(
    "changes, says",
    [
        ({"evals": 3}, "Unknown key 'evals'"),
        (
            {"variants": {"lr_lo": ["ppo.lrr=1e-3"]}},
            "variants.lr_lo on CartPole-v1: Unknown config key 'ppo.lrr'",
        ),
        ({"variants": {"lr_lo": ["seed=3"]}}, "variants.lr_lo: seed is set by the study"),
        ({"steps": "many"}, "steps: expected an integer"),
        ({"baseline": "nope"}, "baseline: 'nope' is not one of the variants"),
        ({"normalize": "hns"}, "normalize: hns has no human / random reference scores for CartPole-v1"),
        ({"ranges": {}}, "ranges: no [min, max] for CartPole-v1"),
        ({"envs": ["CartPole-v1", "Acrobot-v1"], "normalize": "none", "ranges": {}}, "normalize: none"),
        ({"score": "crafter score"}, "score: 'crafter score' is neither return nor the tag of an env score"),
        ({"score": "crafter/score"}, "score: CartPole-v1 (gymnasium family) logs no 'crafter/score'"),
    ],
)
def test_a_bad_spec_is_one_line_and_exit_2(tmp_path, capsys, changes, says):
    out = tmp_path / "out"
    code = main(["study", str(write_spec(tmp_path, **changes)), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("auxrl study: error: ") and says in err, err
    assert not out.exists()  # nothing is written before the spec is good


def test_one_study_per_output_folder(tmp_path, capsys):
    import fcntl

    out = tmp_path / "out"
    out.mkdir()
    fd = os.open(out / ".lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.write(fd, str(os.getpid()).encode())  # a live study holds it
    try:
        code = main(["study", str(write_spec(tmp_path)), "--out", str(out)])
    finally:
        os.close(fd)
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and f"pid {os.getpid()}" in err, err
    assert not (out / "runs").exists()


def test_the_report_without_rliable_says_how_to_install_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "rliable", None)  # as if not installed
    assert main(["study", "report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and 'pip install "auxrl[study]"' in err, err


def test_the_shipped_example_spec_loads_and_is_no_run_config():
    study_ = load_spec(ROOT / "configs" / "studies" / "cartpole_heads.yaml")
    assert len(study_.runs()) == 6 and study_.baseline == "no_heads"
    assert "cartpole_heads" not in shipped_config_names()


@pytest.mark.parametrize("name", sorted(p.stem for p in (ROOT / "configs" / "studies").glob("*.yaml")))
def test_every_shipped_spec_builds_every_run_config(name):
    study_ = load_spec(ROOT / "configs" / "studies" / f"{name}.yaml")  # builds each env x variant config
    assert study_.runs() and study_.baseline in study_.variants


def test_the_readme_shows_the_shipped_example_spec():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Did my auxiliary task help?") :]
    shown = yaml.safe_load(section[section.index("```yaml\n") + 8 : section.index("```\n", 8)])
    shipped = yaml.safe_load((ROOT / "configs" / "studies" / "cartpole_heads.yaml").read_text())
    assert shown == shipped


@pytest.mark.slow
def test_a_study_runs_skips_what_is_done_and_reports(tmp_path, capsys):
    spec, out = write_spec(tmp_path), tmp_path / "out"
    first = study(str(spec), "--jobs", "2", "--out", str(out), "--reps", "300")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "0 done, 0 to score, 0 to resume, 4 to start; 2 at a time" in first.stdout
    names = [f"CartPole-v1__{v}__{s}" for v in ("lr_hi", "lr_lo") for s in (1, 2)]
    scores = {n: json.loads((out / "runs" / n / "score.json").read_text()) for n in names}
    assert all(s["step"] >= 2048 and s["episodes"] == 2 for s in scores.values())

    results = json.loads((out / "results.json").read_text())
    assert results["finished"] == 4 and results["baseline"] == "lr_lo"
    for variant in ("lr_hi", "lr_lo"):
        for metric in ("IQM", "median", "mean", "optimality gap"):
            assert_interval(results["aggregates"][variant][metric])
    assert_interval(results["probability_of_improvement"]["lr_hi"])
    report = (out / "report.md").read_text()
    assert "| variant | runs | IQM |" in report and "P(lr_hi > lr_lo)" in report
    for plot in ("aggregates", "probability_of_improvement", "performance_profile", "curves"):
        assert (out / f"{plot}.png").stat().st_size > 1000

    # Again: every run is done, so nothing is trained or scored.
    mtimes = {n: (out / "runs" / n / "score.json").stat().st_mtime_ns for n in names}
    again = study(str(spec), "--jobs", "2", "--out", str(out), "--reps", "300")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "4 done, 0 to score, 0 to resume, 0 to start" in again.stdout
    assert ": train" not in again.stdout
    assert mtimes == {n: (out / "runs" / n / "score.json").stat().st_mtime_ns for n in names}

    # What its runs were trained with cannot change under them.
    code = main(["study", str(write_spec(tmp_path, steps=4096)), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "steps is 4096, but the runs in" in err and err.count("\n") == 1

    # Committed results (no checkpoints, no event files) report the same numbers, probes beside.
    for run in (out / "runs").iterdir():
        shutil.rmtree(run / "checkpoints")
        for events in run.glob("events.out.tfevents.*"):
            events.unlink()
    probe = {"summary": {"f1_mean": 0.5, "random_f1_mean": 0.25}}
    (out / "runs" / names[0] / "probe.json").write_text(json.dumps(probe))
    (out / "curves.png").unlink()
    assert main(["study", "report", str(out), "--reps", "300"]) == 0
    again = json.loads((out / "results.json").read_text())
    assert again["aggregates"] == results["aggregates"]
    assert again["probability_of_improvement"] == results["probability_of_improvement"]
    assert "probe F1" in (out / "report.md").read_text()
    assert (out / "curves.png").is_file()  # from the runs' curve.json


@pytest.mark.slow
def test_a_stopped_study_resumes_its_runs(tmp_path):
    spec = write_spec(
        tmp_path,
        variants={"only": []},
        baseline=None,
        seeds=[1],
        steps=16384,
        extra_overrides=["perf.threads=1", "log.checkpoint_every=512"],
    )
    out = tmp_path / "out"
    run = out / "runs" / "CartPole-v1__only__1"
    proc = subprocess.Popen(
        [sys.executable, "-m", "auxrl.cli", "study", str(spec), "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
    )
    deadline = time.monotonic() + 180
    while not list(run.glob("checkpoints/step_*.pt")):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0]
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=180)[0]
    assert proc.returncode == 143, output
    assert "run the same command again to continue" in output
    steps = [int(p.stem.split("_")[1]) for p in run.glob("checkpoints/step_*.pt")]
    assert steps and max(steps) < 16384 and not (run / "score.json").exists()
    run_id = (run / ".auxrl-run").read_text()

    again = study(str(spec), "--out", str(out))
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"CartPole-v1__only__1: resume from step {max(steps):,}" in again.stdout
    assert (run / ".auxrl-run").read_text() == run_id  # continued, not started over
    assert "--resume" in (out / "logs" / "CartPole-v1__only__1.log").read_text()
    assert json.loads((run / "score.json").read_text())["step"] >= 16384
