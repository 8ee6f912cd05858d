"""``auxrl study --backend ray|slurm``: the same study through a Ray instance and through submitit.

The end-to-end tests start their own cluster: a local Ray instance (``--ray-address local``) and
submitit's local executor (``--slurm cluster=local``); they are skipped only where ray or
submitit is not installed (both are in the dev extra, so CI runs them).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from auxrl.cli import main
from auxrl.study.backends import Work, command_index
from auxrl.study.cluster import WorkRunner
from auxrl.study.state import run_status

ROOT = Path(__file__).resolve().parent.parent

SPEC = {
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
BACKENDS = {
    "ray": ["--backend", "ray", "--ray-address", "local"],
    "slurm": ["--backend", "slurm", "--slurm", "cluster=local"],
}
PACKAGES = {"ray": "ray", "slurm": "submitit"}


def write_spec(folder: Path, **changes) -> Path:
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump({**SPEC, **changes}, sort_keys=False))
    return path


def study(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "auxrl.cli", "study", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def one_line_error(capsys, *args: str) -> str:
    code = main(["study", *args])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("auxrl study: error: "), err
    return err


# ------------------------------------------------------------------------------ errors, at once


@pytest.mark.parametrize("backend, module, extra", [("ray", "ray", "ray"), ("slurm", "submitit", "slurm")])
def test_a_missing_package_is_one_line_naming_the_extra(
    tmp_path, capsys, monkeypatch, backend, module, extra
):
    monkeypatch.setitem(sys.modules, module, None)  # as if not installed
    out = tmp_path / "o"
    err = one_line_error(capsys, str(write_spec(tmp_path)), "--backend", backend, "--out", str(out))
    assert f'pip install "auxrl[{extra}]"' in err
    assert not out.exists()


def test_settings_a_backend_cannot_use_are_one_line_before_anything_is_written(tmp_path, capsys):
    pytest.importorskip("submitit")
    spec, out = str(write_spec(tmp_path)), str(tmp_path / "o")
    cases = [
        (["--backend", "slurm"], "--slurm cluster=local"),  # no Slurm here: says how to run without it
        (["--backend", "slurm", "--slurm", "cluster=local", "--slurm", "bogus=1"], "'bogus'"),
        (["--backend", "slurm", "--slurm", "cluster=local", "--slurm", "nodes=2"], "one process on one node"),
        (["--backend", "slurm", "--slurm", "cluster=local", "--gpus-per-run", "0.5"], "whole GPUs"),
        (["--backend", "slurm", "--slurm", "partition"], "give KEY=VALUE"),
        (["--slurm", "partition=gpu"], "--slurm KEY=VALUE is for --backend slurm"),
        (["--ray-address", "local"], "--ray-address is for --backend ray"),
    ]
    if shutil.which("sbatch") and shutil.which("srun"):
        cases = cases[1:]  # a Slurm login node: the first one is no error there
    for args, says in cases:
        err = one_line_error(capsys, spec, *args, "--out", out)
        assert says in err, (args, err)
    assert not Path(out).exists()


def test_no_ray_cluster_at_auto_is_one_line(tmp_path, capsys, monkeypatch):
    pytest.importorskip("ray")
    if os.path.exists("/tmp/ray/ray_current_cluster"):
        pytest.skip("a Ray cluster runs on this machine")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    out = tmp_path / "o"
    err = one_line_error(capsys, str(write_spec(tmp_path)), "--backend", "ray", "--out", str(out))
    assert "no Ray cluster at --ray-address auto" in err and "--ray-address local" in err
    assert not out.exists()


def test_the_slurm_backend_imports_submitit_without_closing_the_processs_log_handlers():
    pytest.importorskip("submitit")
    # submitit's own import runs logging.config.dictConfig, which closes every handler of the
    # process (a test session lost its stderr that way: absl's handler closed pytest's capture).
    code = """
        import io, logging, os
        os.environ.pop("SUBMITIT_LOG_LEVEL", None)
        class Closing(logging.StreamHandler):  # closes its stream with itself, as absl's handler does
            def close(self):
                super().close()
                self.stream.close()
        stream = io.StringIO()
        logging.getLogger("mine").addHandler(Closing(stream))
        from auxrl.study.cluster import _import_submitit
        _import_submitit()
        print(stream.closed)
    """
    env = {k: v for k, v in os.environ.items() if k != "SUBMITIT_LOG_LEVEL"}
    done = subprocess.run(python(code), capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0 and done.stdout.split() == ["False"], done.stderr


# ------------------------------------------------------------------------------ running a work remotely


def python(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


def test_a_work_runs_its_commands_in_order_until_one_fails(tmp_path):
    log = tmp_path / "logs" / "w.log"
    commands = [python("print('first')"), python("import sys; sys.exit(3)"), python("print('never')")]
    assert WorkRunner(commands, log, {"X": "1"}).run() == (3, 1, False)
    text = log.read_text()
    assert "first" in text and "never" not in text
    work = Work("w", tuple(tuple(c) for c in commands), log)
    assert command_index(work, text) == 1  # how a cluster backend follows a work from its log


# The run: counts the SIGINTs it gets (a second one would stop auxrl train without saving) and
# exits 130 after the first, as auxrl train does once it has saved.
RUN = """
import signal, sys, time
got = []
signal.signal(signal.SIGINT, lambda *a: got.append(1))
print("running", flush=True)
while not got:
    time.sleep(0.05)
time.sleep(1.0)
print(f"SIGINTs: {len(got)}", flush=True)
sys.exit(130)
"""


def test_a_job_turns_slurms_signals_into_one_sigint_for_its_run(tmp_path):
    """Slurm signals every process of a job step: the run ignores SIGTERM, the job sends one SIGINT."""
    log = tmp_path / "w.log"
    job = python(f"""
        import sys
        from auxrl.study.cluster import run_in_job
        print(run_in_job([{python(RUN)!r}, ["true"]], {str(log)!r}, {{}}, {str(tmp_path)!r}))
    """)
    proc = subprocess.Popen(job, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    while "\nrunning\n" not in (log.read_text() if log.exists() else ""):  # its handler is in place
        assert proc.poll() is None
        time.sleep(0.05)
    run_pid = int(subprocess.check_output(["pgrep", "-P", str(proc.pid)]).split()[0])
    os.kill(run_pid, signal.SIGTERM)  # as scancel does: to the run itself (ignored)...
    os.kill(proc.pid, signal.SIGTERM)  # ...and to the job, which forwards one SIGINT
    os.kill(proc.pid, signal.SIGUSR2)  # a second signal sends nothing more
    out = proc.communicate(timeout=30)[0]
    assert out.strip() == "(130, 0, True)", out  # stopped at the first command, the second not started
    text = log.read_text()
    assert "SIGINTs: 1" in text and text.count("to the job: the run saves a checkpoint and stops") == 1


def test_a_job_stops_its_run_when_the_study_stops_beating(tmp_path):
    log, beat = tmp_path / "w.log", tmp_path / "heartbeat"
    beat.write_text("1")
    started = time.monotonic()
    assert WorkRunner([python(RUN)], log, {}).run(heartbeat=beat, stale_s=1.0) == (130, 0, True)
    assert time.monotonic() - started < 20
    assert "heartbeat" in log.read_text() and "SIGINTs: 1" in log.read_text()


# ------------------------------------------------------------------------------ whole studies


def assert_interval(x: dict) -> None:
    assert all(math.isfinite(x[k]) for k in ("point", "lower", "upper")), x
    assert x["lower"] <= x["point"] <= x["upper"], x


@pytest.mark.slow
@pytest.mark.parametrize("backend", list(BACKENDS))
def test_a_study_runs_on_the_backend_and_reports(tmp_path, backend):
    pytest.importorskip(PACKAGES[backend])
    out = tmp_path / "out"
    done = study(
        str(write_spec(tmp_path)), "--jobs", "2", "--out", str(out), "--reps", "300", *BACKENDS[backend]
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"4 to start; 2 at a time ({backend})" in done.stdout
    names = [f"CartPole-v1__{v}__{s}" for v in ("lr_hi", "lr_lo") for s in (1, 2)]
    for name in names:
        score = json.loads((out / "runs" / name / "score.json").read_text())
        assert score["step"] >= 2048 and score["episodes"] == 2
    results = json.loads((out / "results.json").read_text())
    assert results["finished"] == 4
    for variant in ("lr_hi", "lr_lo"):
        assert_interval(results["aggregates"][variant]["IQM"])
    assert_interval(results["probability_of_improvement"]["lr_hi"])
    if backend == "slurm":  # the jobs went through submitit: the first two as one batch
        assert len(list((out / "slurm").glob("*_submitted.pkl"))) == 4
        assert (out / "slurm" / "heartbeat").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("backend", list(BACKENDS))
def test_stopping_a_study_on_the_backend_saves_its_runs(tmp_path, backend):
    """SIGTERM to the study: each remote run gets one SIGINT, saves a checkpoint, and the study
    exits 143 with the run resumable."""
    pytest.importorskip(PACKAGES[backend])
    spec = write_spec(
        tmp_path,
        variants={"only": []},
        baseline=None,
        seeds=[1],
        steps=65536,
        extra_overrides=["perf.threads=1", "log.checkpoint_every=512"],
    )
    out = tmp_path / "out"
    run = out / "runs" / "CartPole-v1__only__1"
    proc = subprocess.Popen(
        [sys.executable, "-m", "auxrl.cli", "study", str(spec), "--out", str(out), *BACKENDS[backend]],
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
    log = (out / "logs" / "CartPole-v1__only__1.log").read_text()
    assert "the run saves a checkpoint and stops" in log and "Saved a checkpoint at step" in log, log
    assert run_status(run, 65536) == "resume"  # a checkpoint short of the steps: --resume continues it
    if backend == "ray":
        assert "raylet" not in subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
