"""Run directories: never two runs mixed in one, a dead run restarts cleanly, one trainer at a time."""

from pathlib import Path

import pytest
from conftest import TINY_RUN as TINY
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.tensorboard import SummaryWriter

from auxrl import checkpoint, rundir
from auxrl.cli import main
from auxrl.config import load_config, save_config


def steps_of(run: Path, tag: str = "losses/value_loss") -> list[int]:
    acc = EventAccumulator(str(run), size_guidance={"scalars": 0})
    acc.Reload()
    return [e.step for e in acc.Scalars(tag)]


def files(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def train_cli(run: Path, *extra: str) -> int:
    return main(["train", "cartpole", *TINY, *extra, "--run-dir", str(run), "--no-progress"])


def test_a_finished_run_is_refused_without_resume(tmp_path, capsys):
    run = tmp_path / "run"
    assert train_cli(run) == 0
    before = files(run)
    capsys.readouterr()
    assert train_cli(run, "ppo.lr=1e-4") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already holds a run" in err
    assert f"--resume {run}" in err and "another --run-dir" in err and "--overwrite" in err
    assert files(run) == before  # nothing touched


def test_overwrite_starts_again_with_one_curve(tmp_path):
    run = tmp_path / "run"
    assert train_cli(run) == 0
    (run / "checkpoints" / "step_000000009999.pt").write_bytes(b"old run's")  # would outlive a mix
    assert train_cli(run, "ppo.total_steps=256", "--overwrite") == 0
    assert steps_of(run) == [256]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", "step_000000000256.pt"]
    assert len(list(run.glob("events.out.tfevents.*"))) == 1


def _dead_before_first_checkpoint(run: Path) -> None:
    """What a run killed before its first checkpoint leaves: config.yaml, events, a temp file."""
    run.mkdir(parents=True)
    save_config(load_config("cartpole", TINY), run / "config.yaml")
    writer = SummaryWriter(str(run))
    for step in (256, 512, 768):
        writer.add_scalar("losses/value_loss", 1.0, step)
    writer.close()
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / ".step_000000000256.pt.x1y2.tmp").write_bytes(b"half")


@pytest.mark.parametrize("how", ["same command", "resume"])
def test_a_run_dead_before_its_first_checkpoint_restarts_cleanly(tmp_path, capsys, how):
    run = tmp_path / "run"
    _dead_before_first_checkpoint(run)
    if how == "resume":
        assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    else:
        assert train_cli(run) == 0
    out = capsys.readouterr().out
    assert "stopped before its first checkpoint: starting again from step 0" in out
    assert steps_of(run) == [256, 512]  # the dead process's 256, 512 and 768 are gone
    assert len(list(run.glob("events.out.tfevents.*"))) == 1
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "latest",
        "step_000000000256.pt",
        "step_000000000512.pt",
    ]


def test_resume_removes_stale_temp_files(tmp_path):
    run = tmp_path / "run"
    assert train_cli(run) == 0
    stale = run / "checkpoints" / ".step_000000000768.pt.abcd.tmp"
    stale.write_bytes(b"killed mid-write")
    assert main(["train", "--resume", str(run), "ppo.total_steps=768", "--no-progress"]) == 0
    assert not stale.exists()
    assert steps_of(run) == [256, 512, 768]


def test_nothing_to_resume(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path / "nothing")]) == 2
    assert "Nothing to resume" in capsys.readouterr().err
    assert not (tmp_path / "nothing").exists()


@pytest.mark.skipif(rundir.fcntl is None, reason="no advisory locks on this platform")
def test_a_directory_in_use_is_refused(tmp_path, capsys):
    run = tmp_path / "run"
    held, _ = rundir.claim(run, "fresh")  # as a running trainer holds it
    try:
        assert train_cli(run) == 2
        assert "is in use: another `auxrl train` is running there" in capsys.readouterr().err
    finally:
        held.release()
    assert train_cli(run) == 0


def test_ctrl_c_logs_the_interrupted_update_and_saves(tmp_path, capsys, monkeypatch):
    import auxrl.trainer as trainer

    calls = []
    real = trainer.collect_rollout

    def interrupt_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "collect_rollout", interrupt_third)
    run = tmp_path / "run"
    assert train_cli(run, "ppo.total_steps=1024", "log.checkpoint_every=0") == 130
    out = capsys.readouterr().out
    assert "Interrupted in update 3 at env step 512: saving a checkpoint" in out
    assert checkpoint.find(run).name == "step_000000000512.pt"
    monkeypatch.undo()
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert steps_of(run) == [256, 512, 768, 1024]
    assert not [p for p in run.rglob("*") if p.name.endswith(".tmp")]


def test_resuming_a_finished_run_adds_no_file(tmp_path):
    run = tmp_path / "run"
    assert train_cli(run) == 0
    events = sorted(run.glob("events.out.tfevents.*"))
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0  # e.g. killed after its end
    assert sorted(run.glob("events.out.tfevents.*")) == events
    assert steps_of(run) == [256, 512]
