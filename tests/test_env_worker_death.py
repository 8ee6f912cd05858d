"""An async env worker that dies (a crash in native code, the OOM killer) must end the run with one
line naming it and how to go on: not a hang in gymnasium's close, not a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).parent


def _train(run_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    args = [
        "cartpole", "env.id=crash_envs:CrashCue-v0", "env.num_envs=4", "env.vector_mode=async",
        "ppo.num_steps=16", "ppo.total_steps=640", "--run-dir", str(run_dir), "--no-progress",
        *overrides,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    # Before the fix, a worker other than the first dying in reset left gymnasium's close waiting
    # forever on the workers that had answered: the timeout turns such a hang into a failure.
    return subprocess.run(
        [sys.executable, "-m", "auxrl.cli", "train", *args],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip


def _error_line(done: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in done.stderr, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("worker", "signum", "how"), [(0, 0, "exit code 3"), (2, 0, "exit code 3"), (2, 9, "signal SIGKILL")]
)
def test_a_worker_dying_in_reset_ends_the_run_with_one_line(
    tmp_path: Path, worker: int, signum: int, how: str
) -> None:
    done = _train(tmp_path / "run", f"env.kwargs.crash_worker={worker}", f"env.kwargs.crash_signal={signum}")
    assert done.returncode == 1
    line = _error_line(done)
    assert line.startswith("auxrl train: error: env.id 'crash_envs:CrashCue-v0': the worker process of ")
    assert f"of env {worker} of 4 died ({how}) during reset" in line
    assert "env.vector_mode=sync" in line
    assert f"`auxrl train --resume {tmp_path / 'run'}` continues it (from the start" in line


def test_a_worker_dying_mid_run_names_the_checkpoint_to_resume_from(tmp_path: Path) -> None:
    # Each update is 4 envs x 16 steps = 64 env steps; checkpoints every 128: env 1 dies at its
    # 200th step, in the 13th rollout, after the checkpoints at 128 ... 768 are out of reach.
    done = _train(
        tmp_path / "run", "env.kwargs.crash_worker=1", "env.kwargs.crash_step=200",
        "ppo.total_steps=2048", "log.checkpoint_every=128",
    )  # fmt: skip
    assert done.returncode == 1
    line = _error_line(done)
    assert "of env 1 of 4 died (exit code 3) during a step" in line
    assert "continues it (from its checkpoint step_000000000768.pt)" in line
    saved = sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("*.pt"))
    assert saved[-1] == "step_000000000768.pt"
