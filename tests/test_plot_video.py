"""Learning-curve plots from TensorBoard files, evaluation videos, and ``auxrl eval --video``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from auxrl.envs.base import Step
from auxrl.plot import ema_smooth, plot_runs, run_name

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TAG = "charts/episodic_return"


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def fake_run(path: Path, name: str | None, seed: int, steps: int = 40, tag: str = TAG) -> Path:
    from torch.utils.tensorboard import SummaryWriter

    path.mkdir(parents=True)
    if name is not None:
        (path / "config.yaml").write_text(f"name: {name}\nseed: {seed}\nppo:\n  lr: 0.001\n")
    rng = np.random.default_rng(seed)
    writer = SummaryWriter(str(path))
    for i in range(steps):
        step = 256 * (i + 1) + 128 * seed  # the seeds' grids differ: the mean interpolates
        writer.add_scalar(tag, float(i + rng.normal()), step)
        if i % 5 == 0:  # two episodes ending at one step
            writer.add_scalar(tag, float(i), step)
    writer.close()
    return path


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


# ------------------------------------------------------------------------------------------------
# Plots


def test_plot_groups_runs_by_name(tmp_path):
    runs = [
        fake_run(tmp_path / "a__1__20240101-000000", "a", 1),
        fake_run(tmp_path / "a__2__20240101-000000", "a", 2, steps=30),
        fake_run(tmp_path / "other", "b", 1),
    ]
    out = plot_runs([str(r) for r in runs], str(tmp_path / "plots" / "curves.png"), smoothing=0.6)
    assert out == tmp_path / "plots" / "curves.png"
    width, height = png_size(out)
    assert (width, height) == (960, 600)  # 8 x 5 inches at dpi 120
    assert out.stat().st_size > 10_000


def test_run_name_falls_back_to_the_directory(tmp_path):
    run = fake_run(tmp_path / "breakout__3__20240101-120000", None, 3, steps=2)
    assert run_name(run) == "breakout"
    assert run_name(fake_run(tmp_path / "x", "named", 1, steps=2)) == "named"


def test_plot_warns_when_grouped_configs_differ(tmp_path):
    a = fake_run(tmp_path / "a1", "a", 1, steps=5)
    b = fake_run(tmp_path / "a2", "a", 2, steps=5)
    (b / "config.yaml").write_text("name: a\nseed: 2\nppo:\n  lr: 0.01\n")
    with pytest.warns(UserWarning, match="ppo.lr"):
        plot_runs([str(a), str(b)], str(tmp_path / "c.png"))


def test_ema_matches_tensorboard():
    values = np.array([1.0, 2.0, 3.0])
    # TensorBoard: last = last * s + (1 - s) * v, shown as last / (1 - s**n).
    expected = [1.0, (0.5 * 1 + 2.0) * 0.5 / 0.75, ((0.5 * 0.5 + 1.0) * 0.5 + 1.5) / 0.875]
    np.testing.assert_allclose(ema_smooth(values, 0.5), expected)
    np.testing.assert_allclose(ema_smooth(values, 0.0), values)


def test_plot_errors_name_the_directory(tmp_path):
    run = fake_run(tmp_path / "run", "a", 1, steps=3, tag="losses/value_loss")
    with pytest.raises(ValueError, match=r"no scalar 'charts/episodic_return'.*losses/value_loss"):
        plot_runs([str(run)], str(tmp_path / "c.png"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no TensorBoard event files"):
        plot_runs([str(empty)], str(tmp_path / "c.png"))
    with pytest.raises(ValueError, match="has runs below it"):
        plot_runs([str(tmp_path)], str(tmp_path / "c.png"))
    with pytest.raises(ValueError, match="smoothing"):
        plot_runs([str(run)], str(tmp_path / "c.png"), smoothing=1.0)
    assert not (tmp_path / "c.png").exists()


# ------------------------------------------------------------------------------------------------
# Videos


def synthetic_steps(n: int = 50, ends: tuple[int, ...] = (20, 49)):
    """(obs, step) pairs of one env: reward 1 every third step, games ending at ``ends``."""
    rng = np.random.default_rng(0)
    score = 0.0
    for i in range(n):
        obs = rng.integers(0, 256, (1, 4, 84, 84), dtype=np.uint8)
        reset = i in ends
        reward = 0.0 if reset else float(i % 3 == 0)
        returns = np.array([score]) if reset else np.zeros(0)
        score = 0.0 if reset else score + reward
        yield (
            obs,
            Step(
                obs=obs,
                reward=np.array([reward], np.float32),
                terminated=np.zeros(1, bool),
                truncated=np.zeros(1, bool),
                reset=np.array([reset]),
                episode_returns=returns,
                episode_lengths=np.ones(len(returns), dtype=np.int64),
            ),
        )


def count_frames(path: Path) -> int:
    import imageio.v3 as iio

    return sum(1 for _ in iio.imiter(path))


@pytest.mark.parametrize("suffix", [".mp4", ".gif"])
def test_video_recorder_writes_every_frame(tmp_path, suffix, capsys):
    pytest.importorskip("imageio")
    if suffix == ".mp4":
        pytest.importorskip("imageio_ffmpeg")
    from auxrl.video import VideoRecorder

    recorder = VideoRecorder(tmp_path / "videos" / f"game{suffix}")
    for obs, step in synthetic_steps():
        recorder.on_step(obs, step)
    path, frames = recorder.close([7.0, 10.0])
    assert path == tmp_path / "videos" / f"game{suffix}"
    assert recorder.scores == [7.0, 10.0]
    # 50 steps, and each game's final frame held for half a second (GIF merges the copies).
    assert frames == (50 + 2 * recorder.hold if suffix == ".mp4" else 50)
    assert count_frames(path) == frames
    assert "final scores: 7, 10" in capsys.readouterr().out

    import imageio.v3 as iio

    first = next(iter(iio.imiter(path)))
    assert first.shape[:2] == (24 + 252, 252)


def test_video_of_vector_observations(tmp_path):
    pytest.importorskip("imageio")
    from auxrl.video import VideoRecorder

    recorder = VideoRecorder(tmp_path / "cartpole.gif")
    for i in range(6):
        obs = np.array([[0.1 * i, -1.0, 0.02, 2.0 - i]], np.float32)
        recorder.on_step(
            obs,
            Step(
                obs=obs,
                reward=np.ones(1, np.float32),
                terminated=np.zeros(1, bool),
                truncated=np.zeros(1, bool),
                reset=np.zeros(1, bool),
            ),
        )
    path, frames = recorder.close([])
    assert frames == count_frames(path) == 6


def test_video_rejects_unknown_suffix(tmp_path):
    pytest.importorskip("imageio")
    from auxrl.video import VideoRecorder

    with pytest.raises(ValueError, match=r"\.webm"):
        VideoRecorder(tmp_path / "game.webm")


def test_eval_records_a_video(tmp_path, capsys):
    pytest.importorskip("imageio")
    pytest.importorskip("imageio_ffmpeg")
    import imageio.v3 as iio

    from auxrl.cli import main
    from auxrl.config import load_config
    from auxrl.trainer import train

    cfg = load_config(
        "breakout",
        [
            "ppo.total_steps=256",
            "env.num_envs=2",
            "ppo.num_steps=128",
            "ppo.num_minibatches=2",
            "ppo.update_epochs=1",
            "aux.enabled=false",
        ],
    )
    train(cfg, tmp_path / "run", device="cpu", progress=False)
    video = tmp_path / "v.mp4"
    argv = ["eval", str(tmp_path / "run"), "--episodes", "1", "--video", str(video), "--device", "cpu"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    frames = int(out.split(f"Video: {video} (")[1].split(" frames)")[0])
    assert frames > 0
    assert count_frames(video) == frames
    assert iio.improps(video, index=0).shape == (24 + 252, 252, 3)


def test_missing_extras_say_what_to_install(tmp_path, monkeypatch):
    import sys

    from auxrl.video import VideoRecorder

    run = fake_run(tmp_path / "run", "a", 1, steps=2)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=r'pip install "auxrl\[plot\]"'):
        plot_runs([str(run)], str(tmp_path / "c.png"))
    monkeypatch.setitem(sys.modules, "imageio", None)
    with pytest.raises(ImportError, match=r'pip install "auxrl\[video\]"'):
        VideoRecorder(tmp_path / "v.mp4")


def test_video_falls_back_to_gif_without_ffmpeg(tmp_path, monkeypatch, capsys):
    pytest.importorskip("imageio")
    import auxrl.video

    monkeypatch.setattr(auxrl.video, "_ffmpeg_available", lambda: False)
    recorder = auxrl.video.VideoRecorder(tmp_path / "game.mp4")
    assert recorder.path == tmp_path / "game.gif"
    assert "game.gif instead of" in capsys.readouterr().out
    for obs, step in synthetic_steps(5, ends=()):
        recorder.on_step(obs, step)
    path, frames = recorder.close([])
    assert path.suffix == ".gif" and frames == count_frames(path) == 5
