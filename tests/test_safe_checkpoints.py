"""Checkpoints that cannot run code, and a run that only ever takes in its own checkpoints."""

import os
import shutil
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import TINY_RUN as TINY

from auxrl import checkpoint, rundir
from auxrl.cli import main
from auxrl.envs import make_envs
from auxrl.inference import load_agent

pytestmark = pytest.mark.usefixtures("one_thread")


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_line(code: int, err: str, command: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith(f"auxrl {command}: error: "), err
    return lines[0]


class _Payload:
    """Unpickling this creates a file: the stand-in for an attacker's code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("safe") / "run"
    assert main(["train", "cartpole", *TINY, "--run-dir", str(path), "--no-progress"]) == 0
    return path


def _crafted(real: Path, out: Path, marker: Path) -> Path:
    """A real checkpoint with one extra entry whose unpickling runs code."""
    saved = torch.load(real, weights_only=True)
    saved["extra"] = _Payload(marker)
    torch.save(saved, out)
    return out


def test_every_real_checkpoint_loads_with_weights_only(tmp_path):
    """Discrete and continuous, with an aux head and observation/reward normalisation: every file
    `auxrl train` writes is tensors and plain values, and the spaces come back equal."""
    cartpole = tmp_path / "cartpole"
    aux = ["aux.enabled=true", "aux.tasks={reward_prediction: {}}"]
    assert main(["train", "cartpole", *TINY, *aux, "--run-dir", str(cartpole), "--no-progress"]) == 0
    pendulum = tmp_path / "pendulum"
    small = ["env.num_envs=2", "ppo.num_steps=128", "ppo.total_steps=512", "log.checkpoint_every=256"]
    assert main(["train", "pendulum", *small, "--run-dir", str(pendulum), "--no-progress"]) == 0
    files = sorted(cartpole.glob("checkpoints/step_*.pt")) + sorted(pendulum.glob("checkpoints/step_*.pt"))
    assert len(files) == 4
    for path in files:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        assert saved["format"] == checkpoint.FORMAT and saved["run_id"] == rundir.run_id(path.parent.parent)
    agent = load_agent(pendulum, "cpu")
    with make_envs(agent.config.env) as envs:  # what the run trained on (normalised, clipped)
        assert agent.observation_space == envs.single_observation_space
        assert agent.action_space == envs.single_action_space
    assert agent.observation_space.dtype == np.float32
    assert isinstance(load_agent(cartpole, "cpu").action_space, gym.spaces.Discrete)


def test_rng_state_round_trips_through_a_safe_file(tmp_path):
    np.random.seed(3)
    torch.manual_seed(3)
    state = checkpoint.rng_state()
    torch.save(state, tmp_path / "rng.pt")
    expected = (np.random.rand(3), torch.rand(3))
    np.random.seed(99)
    torch.manual_seed(99)
    checkpoint.set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert np.array_equal(np.random.rand(3), expected[0]) and torch.equal(torch.rand(3), expected[1])


def test_a_crafted_checkpoint_runs_no_code_in_any_command(run, tmp_path, capsys):
    """eval (file and run directory), resume, init_from, load_agent and convert without --trust
    all refuse the file with the way to convert it; the payload never runs."""
    marker = tmp_path / "payload_ran"
    loose = _crafted(checkpoint.find(run), tmp_path / "shared_model.pt", marker)
    victim = tmp_path / "victim"
    shutil.copytree(run, victim)
    newest = victim / "checkpoints" / "step_000000000768.pt"
    _crafted(checkpoint.find(run), newest, marker)
    (victim / "checkpoints" / "latest").write_text(newest.name)

    line = one_line(*run_cli(capsys, "eval", str(loose), "--episodes", "1")[::2], "eval")
    assert "cannot be loaded safely" in line and f"auxrl convert --trust {loose}" in line
    line = one_line(*run_cli(capsys, "eval", str(victim), "--episodes", "1")[::2], "eval")
    assert "cannot be loaded safely" in line
    line = one_line(*run_cli(capsys, "train", "--resume", str(victim), "ppo.total_steps=1024")[::2], "train")
    assert "cannot be loaded safely" in line
    init = ["model.init_from=" + str(loose), "--run-dir", str(tmp_path / "transfer")]
    line = one_line(*run_cli(capsys, "train", "cartpole", *TINY, *init)[::2], "train")
    assert "cannot be loaded safely" in line and not (tmp_path / "transfer").exists()
    with pytest.raises(checkpoint.UnsafeCheckpoint):
        load_agent(loose, "cpu")
    line = one_line(*run_cli(capsys, "convert", str(loose))[::2], "convert")
    assert "add --trust" in line
    assert not marker.exists()
    assert newest.is_file() and not list(victim.glob("checkpoints/*.corrupt"))  # refused, not moved


def _as_format_1(path: Path) -> None:
    """What auxrl wrote before format 2: pickled gym spaces and numpy's RNG tuple, no run id."""
    saved = torch.load(path, weights_only=True)
    saved["spaces"] = (
        gym.spaces.Box(-np.inf, np.inf, (4,), np.float32),
        gym.spaces.Discrete(2),
    )
    saved["rng"]["numpy"] = np.random.get_state()
    del saved["format"], saved["run_id"]
    torch.save(saved, path)


def test_old_checkpoints_are_refused_until_converted_with_trust(run, tmp_path, capsys):
    old = tmp_path / "old"
    shutil.copytree(run, old)
    for path in old.glob("checkpoints/step_*.pt"):
        _as_format_1(path)
    (old / rundir.MARKER).write_text("auxrl run directory (config.yaml, TensorBoard events, checkpoints/)\n")

    line = one_line(*run_cli(capsys, "eval", str(old), "--episodes", "1")[::2], "eval")
    assert "before checkpoint format 2" in line and f"auxrl convert --trust {old}" in line
    code, out, err = run_cli(capsys, "convert", "--trust", str(old))
    assert code == 0, err
    assert out.count("converted") == 2
    run_id = rundir.run_id(old)
    assert run_id is not None
    for path in old.glob("checkpoints/step_*.pt"):
        assert torch.load(path, weights_only=True)["run_id"] == run_id
    code, out, err = run_cli(capsys, "convert", "--trust", str(old))
    assert code == 0 and out.count("already in the safe format") == 2
    code, out, err = run_cli(capsys, "train", "--resume", str(old), "ppo.total_steps=768", "--no-progress")
    assert code == 0, err
    assert "Resumed" in out and checkpoint.load(old)["state"]["global_step"] == 768


def test_a_foreign_checkpoint_is_ignored_on_resume_and_never_prunes_the_run(tmp_path, capsys):
    """Another run's newer checkpoint copied in: resume warns, continues from the run's own newest,
    and keeps it; the run's own checkpoints are pruned by their own count only."""
    own, other = tmp_path / "own", tmp_path / "other"
    keep = ["log.keep_checkpoints=2"]
    assert main(["train", "cartpole", *TINY, *keep, "--run-dir", str(own), "--no-progress"]) == 0
    acrobot = ["env.id=Acrobot-v1", "ppo.total_steps=1024", "log.checkpoint_every=1024"]
    assert main(["train", "cartpole", *TINY, *acrobot, "--run-dir", str(other), "--no-progress"]) == 0
    foreign = own / "checkpoints" / "step_000000001024.pt"
    for name in ("step_000000001024.pt", "latest"):  # `cp other/checkpoints/* own/checkpoints/`
        shutil.copy(other / "checkpoints" / name, own / "checkpoints" / name)
    assert sorted(p.name for p in own.glob("checkpoints/step_*.pt")) == [
        "step_000000000256.pt",
        "step_000000000512.pt",
        "step_000000001024.pt",
    ]

    code, out, err = run_cli(capsys, "train", "--resume", str(own), "ppo.total_steps=768", "--no-progress")
    assert code == 0, err
    assert f"ignoring {foreign}: it belongs to another run" in err and "env Acrobot-v1" in err
    assert "Resumed" in out and "at step 512" in out
    assert foreign.is_file()  # left in place
    assert sorted(p.name for p in own.glob("checkpoints/step_*.pt")) == [
        "step_000000000512.pt",  # the run's own two newest, whatever the foreign file's step
        "step_000000000768.pt",
        "step_000000001024.pt",
    ]
    assert "CartPole-v1" in (own / "config.yaml").read_text()
    saved = checkpoint.load(own, run_id=rundir.run_id(own))
    assert saved["state"]["global_step"] == 768 and saved["config"]["env"]["id"] == "CartPole-v1"
    code, out, err = run_cli(capsys, "eval", str(own), "--episodes", "1", "--num-envs", "1")
    assert code == 0 and "CartPole-v1" in out


def test_only_foreign_checkpoints_is_a_clear_error(tmp_path, capsys):
    own, other = tmp_path / "own", tmp_path / "other"
    assert main(["train", "cartpole", *TINY, "--run-dir", str(own), "--no-progress"]) == 0
    assert main(["train", "cartpole", *TINY, "--run-dir", str(other), "--no-progress"]) == 0
    for path in own.glob("checkpoints/step_*.pt"):
        os.remove(path)
    shutil.copy(checkpoint.find(other), own / "checkpoints")
    code, _, err = run_cli(capsys, "train", "--resume", str(own))
    warning, error = err.strip().splitlines()
    assert code == 2 and "Traceback" not in err
    assert warning.startswith("auxrl: warning: ignoring") and "belongs to another run" in warning
    assert error.startswith("auxrl train: error: No intact checkpoint of this run")
    assert "belong(s) to another run (left in place)" in error and "--overwrite" in error
    assert len(list(own.glob("checkpoints/step_*.pt"))) == 1  # nothing deleted
