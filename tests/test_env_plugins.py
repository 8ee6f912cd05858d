"""The MiniGrid and Crafter families (optional extras): their observations, metrics and configs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from auxrl.cli import main
from auxrl.configfile import load_config
from auxrl.envs import make_envs
from auxrl.envs.crafter import crafter_score
from auxrl.envs.dictobs import DictLayout
from auxrl.plot import read_scalars

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_crafter_score_is_the_geometric_mean_of_success_rates_in_percent():
    score = crafter_score({"achievement_a": 0.5, "achievement_b": 0.0})["crafter/score"]
    assert score == pytest.approx(math.sqrt(51) - 1)  # exp(mean(ln 51, ln 1)) - 1
    assert crafter_score({"achievement_a": 1.0, "achievement_b": 1.0})["crafter/score"] == pytest.approx(
        100.0
    )
    assert crafter_score({"other": 1.0}) == {}


def test_crafter_trains_logs_its_achievements_and_eval_reports_the_score(tmp_path, capsys):
    pytest.importorskip("crafter")
    short = [  # a small world: crafter generates a 64x64 one in seconds at every reset
        "env.num_envs=2", "env.vector_mode=sync", "env.options.length=40", "env.options.size=32",
        "env.options.area=20", "perf.threads=1", "model.torso=impala",  # the Nature CNN needs >= 36x36
    ]  # fmt: skip
    cfg = load_config("crafter", short)
    with make_envs(cfg.env) as envs:
        assert envs.reset(seed=0).shape == (2, 3, 32, 32)
    run = tmp_path / "crafter"
    args = ["train", "crafter", *short, "ppo.num_steps=64", "ppo.total_steps=256", "--run-dir", str(run)]
    assert main([*args, "--no-progress"]) == 0
    steps, wake = read_scalars(run, "episode/achievement_wake_up")
    assert len(steps) and 0.0 <= wake[-1] <= 1.0
    _, score = read_scalars(run, "crafter/score")
    assert 0.0 <= score[-1] <= 100.0
    assert main(["eval", str(run), "--episodes", "2", "--num-envs", "2"]) == 0
    out = capsys.readouterr().out
    assert "CrafterReward-v1: 2 episodes" in out and "crafter/score:" in out
    assert "achievement_collect_wood:" in out
    # A study scores it by its training's Crafter score too (a spec's `score: crafter/score`).
    from auxrl.study.score import score_run

    scored = score_run(run, episodes=2, steps=256)
    assert scored["train_scores"] == {"crafter/score": pytest.approx(score[-1])}
    assert set(scored["env_scores"]) == {"crafter/score"}
    # ... and keeps the 22 success rates it is the geometric mean of, which outlive the events.
    rates = scored["train_metrics"]
    assert len(rates) == 22 and rates["achievement_wake_up"] == pytest.approx(wake[-1])
    assert crafter_score(rates)["crafter/score"] == pytest.approx(score[-1], rel=1e-5)
    from auxrl.study.analysis import read_curve

    (next(run.glob("events.out.tfevents.*"))).rename(tmp_path / "events")  # as committed: curve.json only
    steps, values = read_curve(run, "crafter/score")
    assert values[-1] == pytest.approx(score[-1]) and len(steps) == len(score)


def test_minigrid_gives_a_dict_of_image_and_direction_and_trains(tmp_path):
    pytest.importorskip("minigrid")
    cfg = load_config(
        "minigrid_doorkey", ["env.num_envs=2", "ppo.num_steps=32", "ppo.total_steps=256", "perf.threads=1"]
    )
    with make_envs(cfg.env) as envs:
        space = envs.single_observation_space
        assert set(space.spaces) == {"image", "direction"}  # mission (text) dropped
        assert envs.reset(seed=0).shape == (2, 4 + 7 * 7 * 3)  # direction as float32, then the grid
    from auxrl.trainer import train

    train(cfg, tmp_path / "grid", progress=False)
    rgb = load_config(
        "minigrid_doorkey", ["env.num_envs=1", "env.options.rgb=true", "env.options.tile_size=4"]
    )
    with make_envs(rgb.env) as envs:
        assert envs.single_observation_space["image"].shape == (28, 28, 3)
        assert np.asarray(envs.reset(seed=0)).dtype == np.uint8


def test_vizdoom_gives_the_stacked_screen_and_game_variables_as_labels(tmp_path, capsys):
    pytest.importorskip("vizdoom")
    pytest.importorskip("cv2")
    short = ["env.num_envs=2", "env.vector_mode=sync", "perf.threads=1", "env.options.resize=[42,42]"]
    cfg = load_config(
        "vizdoom_health_gathering", [*short, "env.labels=[info:health]", "env.normalize_reward=false"]
    )
    with make_envs(cfg.env) as envs:
        space = envs.single_observation_space
        assert space["screen"].shape == (4, 42, 42) and space["gamevariables"].shape == (1,)
        obs = envs.reset(seed=0)
        health = DictLayout(space).unpack(torch.from_numpy(obs))["gamevariables"]
        assert envs.reset_labels.tolist() == health.tolist() and 0 < health[0, 0] <= 100  # the label: health
        step = envs.step(np.zeros(2, dtype=np.int64))
        assert step.reward.tolist() == [4.0, 4.0]  # +1 per tic alive, 4 tics per step
    run = tmp_path / "doom"
    args = ["train", "vizdoom_defend_the_center", *short, "ppo.num_steps=32", "ppo.total_steps=128"]
    assert main([*args, "--run-dir", str(run), "--no-progress"]) == 0
    assert main(["eval", str(run), "--episodes", "1", "--num-envs", "1"]) == 0
    assert "VizdoomDefendCenter-v1: 1 episodes" in capsys.readouterr().out
