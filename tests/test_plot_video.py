"""Learning-curve plots from TensorBoard files, evaluation videos, and ``auxrl eval --video``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from auxrl.envs.base import Step
from auxrl.plot import _Run, _settings, ema_smooth, group_runs, plot_runs, run_name

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TAG = "charts/episodic_return"


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def fake_run(
    path: Path, name: str | None, seed: int, steps: int = 40, tag: str = TAG, extra: str = ""
) -> Path:
    from torch.utils.tensorboard import SummaryWriter

    path.mkdir(parents=True)
    if name is not None:
        (path / "config.yaml").write_text(f"name: {name}\nseed: {seed}\nppo:\n  lr: 0.001\n{extra}")
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


def run(name: str, env: str, seed: int = 1, path: str | None = None, **settings) -> _Run:
    config = {"name": name, "seed": seed, "env": {"id": env}}
    for key, value in settings.items():
        section, _, leaf = key.partition("__")
        config.setdefault(section, {})[leaf] = value
    steps = np.arange(1, 4) * 100
    return _Run(Path(path or f"runs/{name}__{seed}"), name, env, seed, _settings(config), steps, steps * 1.0)


def labels(groups) -> dict[str, int]:
    return {label: len(members) for label, members in groups.items()}


def test_runs_of_one_config_differing_in_a_key_are_plotted_apart():
    # The README's recipe: runs/with_aux and runs/no_aux, both from the breakout config, two seeds each.
    runs = [run("breakout", "ALE/Breakout-v5", s, aux__enabled=aux) for aux in (True, False) for s in (1, 2)]
    assert labels(group_runs(runs)) == {"breakout aux.enabled=true": 2, "breakout aux.enabled=false": 2}


def test_runs_of_different_envs_are_never_averaged():
    # A breakout config trained on SpaceInvaders (a run of an older auxrl, still named breakout).
    runs = [run("breakout", "ALE/Breakout-v5"), run("breakout", "ALE/SpaceInvaders-v5", path="x/breakout__1")]
    assert labels(group_runs(runs)) == {"breakout ALE/Breakout-v5": 1, "breakout ALE/SpaceInvaders-v5": 1}
    assert labels(group_runs(runs, group_by=["name"])) == labels(group_runs(runs))
    with pytest.raises(ValueError, match="different envs"):
        group_runs(runs, labels=["same", "same"])
    # Named after the env (env.id overrides now do that): the label does not repeat it.
    named = [run("SpaceInvaders-v5", "ALE/SpaceInvaders-v5"), run("breakout", "ALE/Breakout-v5")]
    assert set(labels(group_runs(named))) == {"SpaceInvaders-v5", "breakout"}


def test_labels_and_group_by_choose_the_groups():
    runs = [run("a", "CartPole-v1", 1, ppo__lr=0.001), run("a", "CartPole-v1", 2, ppo__lr=0.01)]
    assert labels(group_runs(runs)) == {"a ppo.lr=0.001": 1, "a ppo.lr=0.01": 1}
    assert labels(group_runs(runs, labels=["mine", "mine"])) == {"mine": 2}
    assert len(group_runs(runs, group_by=["run"])) == 2
    with pytest.warns(UserWarning, match="ppo.lr"):  # averaged on request, but they differ
        assert labels(group_runs(runs, group_by=["name"])) == {"a": 2}
    with pytest.raises(ValueError, match="no run's config.yaml has that key"):
        group_runs(runs, group_by=["ppo.lrr"])
    with pytest.raises(ValueError, match="one per RUN_DIR"):
        group_runs(runs, labels=["only one"])


def test_plot_cli_options(tmp_path, capsys):
    from auxrl.cli import main

    a = fake_run(tmp_path / "a1", "a", 1, steps=5)
    b = fake_run(tmp_path / "a2", "a", 2, steps=5, extra="aux:\n  enabled: false\n")
    out = tmp_path / "c.png"
    assert main(["plot", str(a), str(b), "--out", str(out), "--labels", "x,y"]) == 0
    assert main(["plot", str(a), str(b), "--out", str(out), "--group-by", "aux.enabled"]) == 0
    capsys.readouterr()
    assert main(["plot", str(a), str(b), "--labels", "x", "--out", str(out)]) == 2
    assert "auxrl plot: error: --labels gives 1 label(s) for 2 run(s)" in capsys.readouterr().err


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


@pytest.mark.slow
def test_eval_records_a_video(tmp_path, capsys):
    pytest.importorskip("imageio")
    pytest.importorskip("imageio_ffmpeg")
    pytest.importorskip("cv2")  # Atari screens are rendered by gymnasium's ALE env + AtariPreprocessing
    import imageio.v3 as iio

    from auxrl.cli import main
    from auxrl.configfile import load_config
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
    frames = int(out.split(f"Video: {video} (")[1].split(" frames, game screen)")[0])
    assert frames > 0
    assert count_frames(video) == frames
    # The game's own RGB screen (210 x 160), upscaled x2, under the banner: not the agent's input.
    first = iio.imread(video, index=0)
    assert first.shape == (24 + 420, 320, 3)
    screen = first[24:].astype(int)
    assert (np.abs(screen[..., 0] - screen[..., 1]) > 30).any()  # in colour (Breakout's bricks)

    agent_view = tmp_path / "agent.mp4"
    assert main([*argv[:5], str(agent_view), "--video-view", "agent", "--device", "cpu"]) == 0
    assert "agent input)" in capsys.readouterr().out
    assert iio.improps(agent_view, index=0).shape == (24 + 252, 252, 3)

    folder = tmp_path / "videos"
    folder.mkdir()
    assert main([*argv[:5], str(folder), "--video-view", "agent", "--device", "cpu"]) == 0
    assert [p.name for p in folder.iterdir()] == ["run.mp4"]  # named after the run, inside the folder
    (checkpoint,) = (tmp_path / "run" / "checkpoints").glob("step_*.pt")
    new_folder = f"{tmp_path / 'new'}/"  # a path ending in a separator is a folder, made if missing
    assert (
        main(["eval", str(checkpoint), "--episodes", "1", "--video", new_folder, "--video-view", "agent"])
        == 0
    )
    assert [p.name for p in (tmp_path / "new").iterdir()] == ["run.mp4"]


def test_eval_video_falls_back_to_the_agent_view_when_the_screen_cannot_render(tmp_path, capsys, monkeypatch):
    pytest.importorskip("imageio")
    from auxrl.cli import main
    from auxrl.configfile import load_config
    from auxrl.envs.gym import GymVecEnv
    from auxrl.trainer import train

    cfg = load_config("cartpole", ["ppo.total_steps=256", "ppo.update_epochs=1"])
    train(cfg, tmp_path / "run", device="cpu", verbose=False)

    def no_renderer(self):
        raise ImportError("pygame is not installed")

    monkeypatch.setattr(GymVecEnv, "render", no_renderer)
    video = tmp_path / "v.gif"
    argv = ["eval", str(tmp_path / "run"), "--episodes", "1", "--video", str(video), "--device", "cpu"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "cannot render the screen of CartPole-v1 (pygame is not installed)" in captured.err
    assert 'pip install "auxrl[video]"' in captured.err
    assert "agent input)" in captured.out and video.is_file()


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


def test_a_resumed_runs_purged_steps_read_quietly(tmp_path, caplog):
    # A resume writes a new event file with purge_step: the dead process's steps after the
    # checkpoint go, one clean curve remains, and no "TensorFlow restart" warning is printed.
    import logging

    from torch.utils.tensorboard import SummaryWriter

    from auxrl.plot import read_scalars

    first = SummaryWriter(str(tmp_path))
    for step in range(1, 11):
        first.add_scalar("charts/episodic_return", float(step), step)
    first.close()
    resumed = SummaryWriter(str(tmp_path), purge_step=6)  # checkpoint at 5
    for step in range(6, 9):
        resumed.add_scalar("charts/episodic_return", 100.0 + step, step)
    resumed.close()
    with caplog.at_level(logging.WARNING):
        steps, values = read_scalars(tmp_path, "charts/episodic_return")
    assert steps.tolist() == list(range(1, 9))
    assert values.tolist() == [1, 2, 3, 4, 5, 106, 107, 108]
    assert not [r for r in caplog.records if r.name.startswith("tensorboard")]
    assert not logging.getLogger("tensorboard").filters  # left as it was
