"""``log.wandb``: the TensorBoard scalars and the config mirrored to Weights & Biases (offline)."""

from __future__ import annotations

import sys
import time

import pytest

from auxrl.cli import main
from auxrl.configfile import load_config
from auxrl.trainer import train

TINY = ["ppo.total_steps=512", "ppo.update_epochs=1", "log.checkpoint_every=256"]


def test_wandb_offline_mirrors_scalars_and_config(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")  # no network, no account
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "run"
    cfg = load_config("cartpole", [*TINY, "log.wandb=true", "log.wandb_project=auxrl-test"])
    train(cfg, run, device="cpu", verbose=False)
    (log,) = run.glob("wandb/offline-run-*/run-*.wandb")
    expected = (b"charts/episodic_return", b"losses/value_loss", b"global_step", b"auxrl-test", b"cartpole")
    deadline = time.monotonic() + 60  # W&B's service process may still be writing on a busy machine
    while not all(text in log.read_bytes() for text in expected) and time.monotonic() < deadline:
        time.sleep(0.5)
    data = log.read_bytes()
    for text in expected:
        assert text in data, text
    run_id = (run / "wandb_run_id").read_text().strip()
    assert run_id in log.name

    # A resume continues the same W&B run.
    more = load_config(str(run / "config.yaml"), ["ppo.total_steps=768"])
    train(more, run, device="cpu", verbose=False, resume=True)
    assert len(list(run.glob(f"wandb/offline-run-*/run-{run_id}.wandb"))) == 2


def test_wandb_missing_is_a_start_up_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)
    run = tmp_path / "run"
    assert main(["train", "cartpole", *TINY, "log.wandb=true", "--run-dir", str(run)]) == 2
    assert 'log.wandb=true needs the wandb package: pip install "auxrl[wandb]"' in capsys.readouterr().err
    assert not run.exists()


def test_wandb_not_logged_in_is_one_line_and_frees_the_directory(tmp_path):
    import os
    import subprocess
    from pathlib import Path

    pytest.importorskip("wandb")
    home = tmp_path / "home"  # no ~/.netrc, no saved key; a fresh process: no W&B session
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(HOME=str(home), NETRC=str(home / ".netrc"), WANDB_CONFIG_DIR=str(home / "wandb"))
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([root, env.get("PYTHONPATH", "")])
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "auxrl", "train", "cartpole", *TINY, "log.wandb=true"]
    done = subprocess.run(
        [*cmd, "--run-dir", str(run), "--no-progress"], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 2, done.stderr[-2000:]
    err = done.stderr
    assert err.count("\n") == 1 and "W&B did not start" in err and "wandb login" in err
    assert not (run / "config.yaml").exists() and not (run / "wandb_run_id").exists()
    assert not (run / ".auxrl-run").exists()  # a fresh start that failed leaves no run behind
    assert main(["train", "cartpole", *TINY, "--run-dir", str(run), "--no-progress"]) == 0  # a clean start
