"""Checkpoint round trip, atomic writes, and resume continuing the step count and the curve."""

import random

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from auxrl import checkpoint
from auxrl.configfile import load_config
from auxrl.inference import load_agent
from auxrl.trainer import train

TINY = [
    "env.num_envs=4",
    "ppo.num_steps=64",
    "ppo.num_minibatches=2",
    "ppo.update_epochs=2",
    "log.checkpoint_every=512",
]


def _scalars(run_dir, tag):
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_checkpoint_round_trip(tmp_path):
    cfg = load_config("cartpole", TINY + ["ppo.total_steps=512"])
    train(cfg, tmp_path / "run", device="cpu", progress=False)
    saved = checkpoint.load(tmp_path / "run")
    assert saved["state"]["global_step"] == 512
    assert {"model", "optimizer", "rng", "config", "state"} <= set(saved)
    trained = load_agent(str(tmp_path / "run"), torch.device("cpu"))
    agent, cfg2 = trained.model, trained.config
    assert cfg2 == cfg
    for key, value in agent.state_dict().items():
        assert torch.equal(value, saved["model"][key]), key
    obs = torch.randn(5, 4)
    assert torch.equal(agent.act(obs, deterministic=True).action, agent.act(obs, deterministic=True).action)


def test_atomic_write_keeps_old_checkpoint_when_a_write_fails(tmp_path, monkeypatch):
    path = checkpoint.save(tmp_path, {"x": torch.ones(3)}, step=1)
    assert checkpoint.find(tmp_path) == path

    def broken_save(obj, f):
        f.write(b"partial garbage")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        checkpoint.save(tmp_path, {"x": torch.zeros(3)}, step=2)
    monkeypatch.undo()
    # The pointer still names the good file, nothing half-written is left behind.
    assert checkpoint.find(tmp_path) == path
    assert torch.equal(checkpoint.load(tmp_path)["x"], torch.ones(3))
    assert not list((tmp_path / "checkpoints").glob("*.tmp"))
    assert not (tmp_path / "checkpoints" / "step_000000000002.pt").exists()


def test_find_errors_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="No checkpoint"):
        checkpoint.find(tmp_path)


def test_resume_continues_step_count_and_curve(tmp_path):
    run = tmp_path / "run"
    cfg = load_config("cartpole", TINY + ["ppo.total_steps=1536"])
    train(cfg, run, device="cpu", progress=False)
    # Simulate a crash after the checkpoint at step 1024: the events of step 1536 were written
    # but its checkpoint was not.
    ckpts = run / "checkpoints"
    (ckpts / "step_000000001536.pt").unlink()
    (ckpts / "latest").write_text("step_000000001024.pt")

    saved = checkpoint.load(run)
    cfg_resume = load_config(str(run / "config.yaml"), ["ppo.total_steps=2560"])
    result = train(cfg_resume, run, device="cpu", progress=False, resume=True)
    assert saved["state"]["global_step"] == 1024
    assert result.global_step == 2560
    steps = [s for s, _ in _scalars(run, "losses/value_loss")]
    # One curve: every update step exactly once, the events after the checkpoint replaced.
    assert steps == list(range(256, 2561, 256))
    # The learning rate anneals from the saved step toward the new total.
    lrs = dict(_scalars(run, "charts/learning_rate"))
    assert lrs[1280] == pytest.approx(cfg.ppo.lr * (1 - 1024 / 2560))
    assert lrs[2560] == pytest.approx(cfg.ppo.lr * (1 - 2304 / 2560))
    assert checkpoint.load(run)["state"]["update"] == 10


def test_resume_with_a_different_model_fails_clearly_and_keeps_the_run(tmp_path):
    run = tmp_path / "run"
    train(load_config("cartpole", TINY + ["ppo.total_steps=256"]), run, device="cpu", progress=False)
    config_before = (run / "config.yaml").read_text()
    other = load_config("cartpole", TINY + ["ppo.total_steps=512", "model.hidden_sizes=[32]"])
    with pytest.raises(ValueError, match="Cannot resume") as err:
        train(other, run, device="cpu", progress=False, resume=True)
    assert "keys that differ: model.hidden_sizes [64, 64] -> [32]" in str(err.value)
    assert "\n" not in str(err.value)  # one line
    # The run is untouched: its config and checkpoint still resume it.
    assert (run / "config.yaml").read_text() == config_before
    assert checkpoint.load(run)["state"]["global_step"] == 256


def test_cli_resume_applies_overrides(tmp_path, capsys):
    from auxrl.cli import main

    run = tmp_path / "run"
    assert (
        main(["train", "cartpole", *TINY, "ppo.total_steps=512", "--run-dir", str(run), "--no-progress"]) == 0
    )
    assert main(["train", "--resume", str(run), "ppo.total_steps=1024", "--no-progress"]) == 0
    assert checkpoint.load(run)["state"]["global_step"] == 1024
    assert main(["train", "cartpole", "--resume", str(run)]) == 2
    assert "--resume continues a run with its saved config" in capsys.readouterr().err


def test_a_truncated_latest_checkpoint_falls_back_to_the_older_one(tmp_path, capsys):
    from auxrl.cli import main

    run = tmp_path / "run"
    train(load_config("cartpole", TINY + ["ppo.total_steps=1024"]), run, device="cpu", progress=False)
    latest = run / "checkpoints" / "step_000000001024.pt"
    with open(latest, "r+b") as f:
        f.truncate(20000)  # as `truncate -s 20000` does
    capsys.readouterr()
    # The other ranks of a distributed run only read: same fallback, no rename, no warning.
    assert checkpoint.load(run, repair=False)["state"]["global_step"] == 512
    assert latest.is_file() and capsys.readouterr().err == ""
    assert main(["eval", str(run), "--episodes", "1", "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "step_000000001024.pt is not a readable checkpoint (truncated or corrupt" in err
    assert "using" in err and "step_000000000512.pt" in err and "Traceback" not in err
    # Moved aside (kept, never tried again nor counted as the newest), and the run resumes.
    assert (run / "checkpoints" / "step_000000001024.pt.corrupt").is_file()
    assert checkpoint.find(run).name == "step_000000000512.pt"
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert checkpoint.load(run)["state"]["global_step"] == 1024
    steps = [s for s, _ in _scalars(run, "losses/value_loss")]
    assert steps == list(range(256, 1025, 256))
    # A broken file named explicitly is a clear error, not a traceback.
    capsys.readouterr()
    assert main(["eval", str(run / "checkpoints" / "step_000000001024.pt.corrupt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("auxrl eval: error: ") and "not a readable checkpoint" in err
    assert err.count("\n") == 1


def test_rng_states_load_on_the_cpu_whatever_the_model_device(tmp_path):
    # --resume on CUDA mapped the saved RNG ByteTensors onto the GPU, where torch.set_rng_state
    # rejects them. The model may go anywhere (here the meta device); RNG states stay on the CPU.
    cfg = load_config("cartpole", TINY + ["ppo.total_steps=256"])
    train(cfg, tmp_path / "run", device="cpu", progress=False)
    on_meta = checkpoint.load(tmp_path / "run", device="meta")
    assert all(v.device.type == "meta" for v in on_meta["model"].values())
    assert on_meta["rng"]["torch"].device.type == "cpu"
    assert all(v.device.type == "cpu" for v in on_meta["optimizer"]["state"][0].values())
    checkpoint.set_rng_state(on_meta["rng"])
    after_meta = (torch.rand(3), np.random.rand(), random.random())
    checkpoint.set_rng_state(checkpoint.load(tmp_path / "run")["rng"])
    after_cpu = (torch.rand(3), np.random.rand(), random.random())
    assert torch.equal(after_meta[0], after_cpu[0]) and after_meta[1:] == after_cpu[1:]


def test_cuda_rng_state_is_the_training_devices_only(monkeypatch):
    # Saving every visible GPU's state broke resume where fewer GPUs are visible
    # (set_rng_state_all indexes past device_count). Only the training device's state is kept
    # and restored; older checkpoints with the per-GPU list still resume. No GPU needed: the
    # CUDA RNG calls are recorded.
    calls = []
    monkeypatch.setattr(
        torch.cuda, "get_rng_state", lambda device: torch.full((16,), device.index, dtype=torch.uint8)
    )
    monkeypatch.setattr(
        torch.cuda, "set_rng_state", lambda state, device: calls.append((state[0].item(), device))
    )
    cuda3 = torch.device("cuda", 3)
    assert "cuda" not in checkpoint.rng_state(torch.device("cpu"))
    state = checkpoint.rng_state(cuda3)
    assert state["cuda"].tolist() == [3] * 16
    checkpoint.set_rng_state(state, torch.device("cuda", 0))  # resumed on another (or a single) GPU
    old = dict(state, cuda=[torch.full((16,), i, dtype=torch.uint8) for i in range(8)])  # 8-GPU save
    checkpoint.set_rng_state(old, cuda3)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 5)
    checkpoint.set_rng_state(old, torch.device("cuda"))  # no index: the current device's state
    checkpoint.set_rng_state(dict(state, cuda=old["cuda"][:2]), cuda3)  # no state for this GPU: kept
    checkpoint.set_rng_state(state, torch.device("cpu"))
    assert calls == [(3, torch.device("cuda", 0)), (3, cuda3), (5, torch.device("cuda"))]


class _FromAModuleThatWillBeGone:
    pass


def test_a_checkpoint_needing_a_missing_module_is_kept_and_named(tmp_path, monkeypatch):
    """Intact but pickled with a class this install lacks: refused as unsafe (never unpickled),
    not taken for a corrupt file and moved aside; `convert --trust` names the missing module."""
    import sys
    import types

    module = types.ModuleType("auxrl_gone_module")
    _FromAModuleThatWillBeGone.__module__ = "auxrl_gone_module"
    module._FromAModuleThatWillBeGone = _FromAModuleThatWillBeGone
    monkeypatch.setitem(sys.modules, "auxrl_gone_module", module)
    run = tmp_path / "run"
    train(load_config("cartpole", TINY + ["ppo.total_steps=512"]), run, device="cpu", progress=False)
    path = checkpoint.find(run)
    saved = torch.load(path, weights_only=True)
    saved["extra"] = _FromAModuleThatWillBeGone()
    torch.save(saved, path)
    monkeypatch.delitem(sys.modules, "auxrl_gone_module")
    with pytest.raises(checkpoint.UnsafeCheckpoint, match="auxrl convert --trust"):
        checkpoint.load(run)
    with pytest.raises(ValueError, match="needs the Python module 'auxrl_gone_module'"):
        checkpoint.convert(path, "some-run")
    assert path.is_file() and not list(run.glob("checkpoints/*.corrupt"))
