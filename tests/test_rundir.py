"""Run directories: never two runs mixed in one, a dead run restarts cleanly, one trainer at a time."""

import os
from pathlib import Path

import pytest
from conftest import TINY_RUN as TINY
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.tensorboard import SummaryWriter

from auxrl import checkpoint, rundir
from auxrl.cli import main
from auxrl.configfile import load_config, save_config


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


def _dead_before_first_checkpoint(run: Path, marked: bool = True) -> None:
    """What a run killed before its first checkpoint leaves: config.yaml, events, a temp file
    (and the marker, which runs written before it existed lack)."""
    run.mkdir(parents=True)
    if marked:
        (run / rundir.MARKER).write_text("auxrl run directory\n")  # written when the run claimed it
    save_config(load_config("cartpole", TINY), run / "config.yaml")
    writer = SummaryWriter(str(run))
    for step in (256, 512, 768):
        writer.add_scalar("losses/value_loss", 1.0, step)
    writer.close()
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / ".step_000000000256.pt.x1y2.tmp").write_bytes(b"half")


@pytest.mark.parametrize("how", ["same command", "resume", "same command, older run", "resume, older run"])
def test_a_run_dead_before_its_first_checkpoint_restarts_cleanly(tmp_path, capsys, how):
    run = tmp_path / "run"
    _dead_before_first_checkpoint(run, marked="older" not in how)
    if how.startswith("resume"):
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


def test_a_users_own_config_yaml_is_never_taken_for_a_dead_run(tmp_path, capsys):
    folder = tmp_path / "exp1"
    folder.mkdir()
    mine = folder / "config.yaml"
    save_config(load_config("cartpole", TINY), mine)
    mine.write_text(mine.read_text() + "# my notes\n")
    before = files(folder)
    assert main(["train", str(mine), "--run-dir", str(folder), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds config.yaml that no auxrl run wrote" in err
    assert "--overwrite" in err
    assert main(["train", "--resume", str(folder), "--no-progress"]) == 2
    assert "Nothing to resume" in capsys.readouterr().err
    assert files(folder) == before  # the notes are still there
    # Another tool's log folder: its own config.yaml beside TensorBoard files.
    other = tmp_path / "other_tool"
    other.mkdir()
    (other / "config.yaml").write_text("lr: 0.1\nmy_notes: important\n")
    writer = SummaryWriter(str(other))
    writer.add_scalar("loss", 1.0, 1)
    writer.close()
    before = files(other)
    assert train_cli(other) == 2
    assert "holds config.yaml and 1 TensorBoard file(s) that no auxrl run wrote" in capsys.readouterr().err
    assert files(other) == before


def test_resume_after_every_checkpoint_was_found_broken_keeps_the_run(tmp_path, capsys):
    run = tmp_path / "run"
    assert train_cli(run) == 0
    for ckpt in (run / "checkpoints").glob("step_*.pt"):
        ckpt.write_bytes(ckpt.read_bytes()[:100])  # truncated
    assert main(["train", "--resume", str(run), "--no-progress"]) == 2
    assert "No intact checkpoint" in capsys.readouterr().err
    events = sorted(run.glob("events.out.tfevents.*"))
    for again in (["train", "--resume", str(run)], ["train", "cartpole", *TINY, "--run-dir", str(run)]):
        assert main([*again, "--no-progress"]) == 2  # not "stopped before its first checkpoint"
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Every checkpoint" in err and "unreadable" in err
        assert "--overwrite" in err
    assert sorted(run.glob("events.out.tfevents.*")) == events and (run / "config.yaml").is_file()
    assert train_cli(run, "--overwrite") == 0


def test_resume_names_a_run_directory_not_a_checkpoint_file(tmp_path, capsys):
    run = tmp_path / "run"
    assert train_cli(run) == 0
    before = files(run)
    older = run / "checkpoints" / "step_000000000256.pt"
    assert main(["train", "--resume", str(older), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--resume {run}" in err and "latest" in err
    lone = tmp_path / "lone.pt"
    lone.write_bytes(older.read_bytes())
    assert main(["train", "--resume", str(lone), "--no-progress"]) == 2
    assert f"model.init_from={lone}" in capsys.readouterr().err
    assert files(run) == before


def test_runs_are_not_nested(tmp_path, capsys):
    run = tmp_path / "run"
    assert train_cli(run) == 0
    for inside in (run / "checkpoints", run / "sub"):
        assert train_cli(inside) == 2
        assert "is inside the run directory" in capsys.readouterr().err
    assert not (run / "sub").exists()
    assert train_cli(tmp_path) == 2  # around a run: its events would mix with the run's
    assert "holds other runs (run, ...)" in capsys.readouterr().err
    deep = tmp_path / "project" / "runs" / "exp"
    assert train_cli(deep) == 0
    assert train_cli(tmp_path / "project") == 2  # runs/<run> below: two levels down
    assert "holds other runs (runs/exp, ...)" in capsys.readouterr().err


def test_checkpoints_get_the_permissions_of_any_new_file(tmp_path):
    # Not mkstemp's private 0600: teammates on shared storage evaluate and resume runs.
    old = os.umask(0o022)
    try:
        assert train_cli(tmp_path / "run") == 0
    finally:
        os.umask(old)
    for path in (tmp_path / "run" / "checkpoints").iterdir():
        assert path.stat().st_mode & 0o777 == 0o644, path


def test_default_run_directories_of_the_same_second_differ(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first, second = rundir.new_default("cartpole", 1), rundir.new_default("cartpole", 1)
    assert first != second and first.parent == second.parent == Path("runs")
    assert first.is_dir() and second.is_dir()
    # A start-up error leaves no empty directory behind.
    assert main(["train", "cartpole", "ppo.lr=-1", "--no-progress"]) == 2
    assert sorted(p.name for p in Path("runs").iterdir()) == sorted([first.name, second.name])


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


def _signal_in_update(monkeypatch, update: int, *signals: int) -> None:
    """Send ``signals`` to this process at the start of PPO update number ``update``."""
    import os

    from auxrl.learner import Learner

    calls = []
    real = Learner.update

    def signalling(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == update:
            for sig in signals:
                os.kill(os.getpid(), sig)  # the handler runs here, in this thread
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Learner, "update", signalling)


@pytest.mark.parametrize("sig, code", [("SIGINT", 130), ("SIGTERM", 143)])
def test_a_signal_finishes_the_update_then_saves(tmp_path, capsys, monkeypatch, sig, code):
    import signal

    before = signal.getsignal(getattr(signal, sig))
    _signal_in_update(monkeypatch, 3, getattr(signal, sig))
    run = tmp_path / "run"
    assert train_cli(run, "ppo.total_steps=1024", "log.checkpoint_every=0") == code
    out = capsys.readouterr().out
    assert "stopping after the update in progress" in out
    # Update 3 ran to its end (its loss is logged at 768) before the stop: whole updates only.
    assert "Stopped after update 3 at env step 768: saving a checkpoint" in out
    saved = checkpoint.load(run)
    assert saved["state"]["global_step"] == 768 and saved["state"]["update"] == 3
    assert steps_of(run) == [256, 512, 768]
    assert signal.getsignal(getattr(signal, sig)) == before  # the handler is put back
    monkeypatch.undo()
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert steps_of(run) == [256, 512, 768, 1024]


def test_a_second_ctrl_c_stops_at_once_and_the_last_checkpoint_stays(tmp_path, capsys, monkeypatch):
    import signal

    _signal_in_update(monkeypatch, 3, signal.SIGINT, signal.SIGINT)
    run = tmp_path / "run"
    assert train_cli(run, "ppo.total_steps=1024", "log.checkpoint_every=512") == 130
    assert "Stopped at env step 768 without saving" in capsys.readouterr().out
    assert checkpoint.find(run).name == "step_000000000512.pt"  # no half-applied update saved
    monkeypatch.undo()
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert steps_of(run) == [256, 512, 768, 1024]


def test_a_stop_before_the_first_update_saves_nothing_and_restarts_cleanly(tmp_path, capsys, monkeypatch):
    import os
    import signal

    import auxrl.trainer as trainer

    real = trainer.collect_rollout

    def signalling(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # during the first rollout
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "collect_rollout", signalling)
    run = tmp_path / "run"
    assert train_cli(run) == 130
    assert "Stopped at env step 0 before the first update: nothing to save" in capsys.readouterr().out
    assert not list(run.glob("checkpoints/step_*.pt"))
    monkeypatch.undo()
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0  # starts over: nothing to continue
    assert "stopped before its first checkpoint" in capsys.readouterr().out
    assert steps_of(run) == [256, 512]


def test_resuming_a_finished_run_adds_no_file(tmp_path):
    run = tmp_path / "run"
    assert train_cli(run) == 0
    events = sorted(run.glob("events.out.tfevents.*"))
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0  # e.g. killed after its end
    assert sorted(run.glob("events.out.tfevents.*")) == events
    assert steps_of(run) == [256, 512]


@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [("SIGINT", 130), ("SIGTERM", 143)])
def test_a_signal_to_the_whole_process_group_stops_async_envs_cleanly(tmp_path, sig, code):
    """A terminal's Ctrl-C, or a scheduler's SIGTERM, reaches the whole process group, env workers
    included: the workers leave Ctrl-C to the trainer, and die of SIGTERM, which the trainer meets
    by stopping there; either way it saves whole updates and exits 128 + signal, not 'broken pipe'."""
    import os
    import signal
    import subprocess
    import sys
    import time

    run = tmp_path / "run"
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)}
    cmd = [sys.executable, "-m", "auxrl", "train", "cartpole", "env.vector_mode=async"]
    proc = subprocess.Popen(
        [*cmd, "ppo.total_steps=10000000", "--run-dir", str(run), "--no-progress"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while not any(run.glob("events.out.tfevents.*")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    time.sleep(1.0)  # a few updates in
    os.killpg(proc.pid, getattr(signal, sig))
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == code, out[-2000:]
    assert "Saved a checkpoint at step" in out and "Broken pipe" not in out
    assert checkpoint.load(run)["state"]["global_step"] > 0


def test_resume_keeps_its_seed_and_says_when_nothing_is_left(tmp_path, capsys):
    run = tmp_path / "run"
    assert train_cli(run) == 0
    before = files(run)
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--seed", "7", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "keeps its seed (1)" in err
    assert files(run) == before
    assert main(["train", "--resume", str(run), "ppo.total_steps=256", "--no-progress"]) == 0
    assert "Nothing to train: the run is at step 512 and ppo.total_steps is 256" in capsys.readouterr().out


def test_signals_started_ignored_stay_ignored():
    """A shell starts `auxrl train ... &` with SIGINT ignored: a Ctrl-C meant for the script that
    started it must not stop the run."""
    import signal

    from auxrl.stopping import StopSignals

    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with StopSignals(print) as stop:
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) == stop._handle
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)


def test_a_start_up_error_closes_async_env_workers_quietly(tmp_path, capfd):
    run = tmp_path / "run"
    argv = ["train", "cartpole", "env.vector_mode=async", "model.freeze=[torso,policy,value]"]
    assert main([*argv, "--run-dir", str(run), "--no-progress"]) == 2
    err = capfd.readouterr().err
    assert "leaves nothing to train" in err and "Traceback" not in err and "EOFError" not in err
    assert not run.exists()
