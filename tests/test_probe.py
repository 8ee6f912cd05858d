"""``auxrl probe``: the AtariARI RAM table, the episode split, weighted F1, and the probe end to end
on a tiny Breakout run and on a synthetic image env whose info carries what the image shows."""

import json
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from auxrl.cli import main
from auxrl.envs import atari_ram
from auxrl.probe import choose_labels, compact_names, random_torso, split_episodes, weighted_f1

pytestmark = pytest.mark.usefixtures("one_thread")


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code: int, err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith("auxrl probe: error: "), err
    return lines[0]


def scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


# ------------------------------------------------------------------------------------------------
# The RAM table
# ------------------------------------------------------------------------------------------------


def by_name(game: str) -> dict[str, atari_ram.RamVariable]:
    return {v.name: v for v in atari_ram.variables(game)}


def test_ram_table_holds_atariari_indices_and_categories():
    assert len(atari_ram.games()) == 24
    breakout, pong = by_name("breakout"), by_name("pong")
    assert (breakout["ball_x"].index, breakout["ball_y"].index, breakout["player_x"].index) == (99, 101, 72)
    assert breakout["score"].index == 84
    assert [breakout[f"block_bit_map_{i}"].index for i in range(30)] == list(range(30))  # range(30)
    assert "block_bit_map" not in breakout and len(breakout) == 35
    expected_pong = dict(player_y=51, player_x=46, enemy_y=50, enemy_x=45, ball_x=49, ball_y=54)
    assert {k: pong[k].index for k in expected_pong} == expected_pong
    frostbite = by_name("frostbite")
    assert [frostbite[f"score_{i}"].index for i in range(3)] == [72, 73, 74]  # a list expands too
    assert by_name("montezuma_revenge")["room_number"].index == 3
    assert by_name("ms_pacman")["player_x"].index == 10
    # Categories, as AtariARI's name rules give them.
    assert breakout["ball_x"].categories == (atari_ram.SMALL,)
    assert breakout["player_x"].categories == (atari_ram.AGENT,)
    assert breakout["score"].categories == (atari_ram.SCORE,)
    assert breakout["block_bit_map_3"].categories == (atari_ram.MISC,)
    assert pong["enemy_x"].categories == (atari_ram.OTHER,)
    assert by_name("berzerk")["player_missile_x"].categories == (atari_ram.SMALL,)
    assert set(by_name("asteroids")["num_lives_direction"].categories) == {atari_ram.SCORE, atari_ram.MISC}
    assert by_name("qbert")["tile_color_0"].categories == ()
    for game in atari_ram.games():
        for v in atari_ram.variables(game):
            assert 0 <= v.index < 128, (game, v)
            assert set(v.categories) <= set(atari_ram.CATEGORIES), (game, v)


def test_every_table_game_is_an_ale_rom_and_env_ids_map_to_it():
    from ale_py import roms

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        missing = [game for game in atari_ram.games() if roms.get_rom_path(game) is None]
    assert missing == []
    assert atari_ram.game_of("ALE/Breakout-v5") == "breakout"
    assert atari_ram.game_of("ALE/MsPacman-v5") == "ms_pacman"
    assert atari_ram.game_of("ALE/MontezumaRevenge-v5") == "montezuma_revenge"
    assert atari_ram.game_of("ALE/Alien-v5") is None  # a ROM AtariARI does not annotate
    assert atari_ram.game_of("CartPole-v1") is None


def test_labels_asked_for_and_their_errors():
    labels = choose_labels("ALE/Pong-v5", None)
    assert labels.game == "pong" and labels.ram_indices[labels.names.index("player_y")] == 51
    assert choose_labels("CartPole-v1", ["info:a", "info:b", "info:a"]).info_keys == ["a", "b"]
    with pytest.raises(ValueError, match="not an Atari game.*--label info:KEY"):
        choose_labels("CartPole-v1", None)
    with pytest.raises(ValueError, match="no RAM annotations for 'alien'.*--label info:KEY"):
        choose_labels("ALE/Alien-v5", None)
    with pytest.raises(ValueError, match="give info:KEY"):
        choose_labels("CartPole-v1", ["ram:3"])
    assert compact_names(["b_1", "b_2", "b_3", "b_7", "score"]) == "b_{1-3,7}, score"


# ------------------------------------------------------------------------------------------------
# Split and F1
# ------------------------------------------------------------------------------------------------


def test_random_torso_is_the_seeded_initialisation_and_leaves_the_generators():
    # The probe's baseline is the torso `auxrl train` would start from with that seed; building it
    # reseeds only the CPU generator, inside fork_rng (torch.manual_seed would also reseed CUDA's).
    from auxrl.configfile import load_config
    from auxrl.inference import TrainedAgent
    from auxrl.models.agent import build_agent

    cfg = load_config("cartpole")
    obs_space, act_space = gym.spaces.Box(-1, 1, (4,), np.float32), gym.spaces.Discrete(2)

    def build():
        return build_agent(
            cfg.model.torso, cfg.model.hidden_sizes, obs_space, act_space, cfg.model.separate_value
        )

    torch.manual_seed(7)
    expected = build().torso
    agent = TrainedAgent(build(), cfg, obs_space, act_space, torch.device("cpu"))
    before = torch.get_rng_state()
    torso = random_torso(agent, seed=7)
    assert torch.equal(torch.get_rng_state(), before)
    for (name, a), (_, b) in zip(torso.state_dict().items(), expected.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_split_puts_each_episode_in_one_split():
    rng = np.random.default_rng(3)
    episodes = np.repeat(np.arange(50), rng.integers(1, 40, size=50))
    rng.shuffle(episodes)  # frames of several envs interleave
    train, valid, test = split_episodes(episodes, seed=0)
    assert not (train & valid).any() and not (train & test).any() and not (valid & test).any()
    assert (train | valid | test).all()
    for mask in (train, valid, test):
        assert not np.isin(episodes[mask], episodes[~mask]).any()  # no episode straddles two splits
    counts = [len(np.unique(episodes[m])) for m in (train, valid, test)]
    assert counts == [35, 5, 10]  # 70/10/20 of the episodes
    again = split_episodes(episodes, seed=0)
    assert all((a == b).all() for a, b in zip(again, (train, valid, test), strict=True))
    assert not (split_episodes(episodes, seed=1)[2] == test).all()
    small = split_episodes(np.array([5, 5, 9, 7, 7]), seed=0)  # 3 episodes: one in each split
    assert [len(np.unique(np.array([5, 5, 9, 7, 7])[m])) for m in small] == [1, 1, 1]
    with pytest.raises(ValueError, match="needs 3 or more.*--frames"):
        split_episodes(np.array([0, 0, 1]), seed=0)


def test_weighted_f1_matches_hand_computed_values():
    # class 0: 1 hit, support 2, predicted 2 -> F1 1/2; class 1: 2 hits, support 2, predicted 3 ->
    # 4/5; class 2: support 1, never predicted -> 0. Weighted by support: (2*0.5 + 2*0.8 + 0) / 5.
    assert weighted_f1(np.array([0, 0, 1, 1, 2]), np.array([0, 1, 1, 1, 0])) == pytest.approx(0.52)
    # A class only predicted (3) weighs nothing; class 1: 1 hit, support 2, predicted 1 -> 2/3.
    assert weighted_f1(np.array([1, 1]), np.array([1, 3])) == pytest.approx(2 / 3)
    assert weighted_f1(np.array([7, 200, 7]), np.array([7, 200, 7])) == 1.0
    assert weighted_f1(np.array([4, 4, 4]), np.array([5, 5, 5])) == 0.0
    columns = weighted_f1(np.array([[0, 1], [0, 1], [1, 2], [1, 2], [2, 9]]), np.array([[0, 1]] * 5))
    # column 0: class 0 F1 2*2/(2+5)=4/7 (support 2), others 0 -> 2*(4/7)/5; column 1: class 1 F1 2*2/(2+5).
    assert columns == pytest.approx([2 * (4 / 7) / 5, 2 * (4 / 7) / 5])


# ------------------------------------------------------------------------------------------------
# End to end: Breakout
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def breakout_run(tmp_path_factory) -> Path:
    import auxrl

    run = tmp_path_factory.mktemp("probe") / "breakout"
    auxrl.train(
        "breakout",
        [
            "aux.enabled=false",
            "perf.compile=false",
            "perf.threads=1",  # a CNN takes every core by default; tests share the machine
            "env.num_envs=4",
            "ppo.num_steps=128",
            "ppo.total_steps=1024",
        ],
        run,
        device="cpu",
        verbose=False,
    )
    return run


@pytest.mark.slow
def test_probe_breakout_end_to_end(breakout_run, capsys):
    code, out, err = run_cli(
        capsys, "probe", str(breakout_run), "--frames", "1200", "--num-envs", "4", "--epochs", "4"
    )
    assert code == 0, err
    assert "ball_x" in out and "Wrote" in out
    result = json.loads((breakout_run / "probe.json").read_text())
    assert (breakout_run / "probe.md").is_file()
    assert result["global_step"] == 1024 and result["game"] == "breakout" and result["frames"] == 1200
    assert result["policy"] == "random"
    episodes = result["split"]["episodes"]
    assert min(episodes.values()) >= 1
    frames = result["split"]["frames"]
    assert (
        frames["train"] + frames["valid"] + frames["test"] + result["split"]["test_duplicates_dropped"]
        == 1200
    )
    variables = result["variables"]
    assert len(variables) == 35 and variables["ball_x"]["ram_index"] == 99
    for name in ("ball_x", "ball_y", "player_x"):
        v = variables[name]
        assert v["task"] == "classification" and "excluded" not in v
        for key in ("f1", "random_f1", "majority_f1"):
            assert 0.0 <= v[key] <= 1.0
    # A random agent breaks few bricks: most of the brick map never changes, and is left out.
    constant = [k for k, v in variables.items() if v.get("excluded", "").startswith("constant")]
    assert constant and all("f1" not in variables[k] for k in constant)
    summary = result["summary"]
    for key in ("f1_mean", "random_f1_mean", "majority_f1_mean", "f1_all", "random_f1_all"):
        assert 0.0 <= summary[key] <= 1.0
    assert summary["f1_categories"].keys() >= {atari_ram.AGENT, atari_ram.SMALL}
    cats = summary["f1_categories"]
    assert summary["f1_mean"] == pytest.approx(np.mean(list(cats.values())), abs=1e-3)

    tb = scalars(breakout_run)
    expected = {
        "probe/f1/ball_x": variables["ball_x"]["f1"],
        "probe/random_f1/ball_x": variables["ball_x"]["random_f1"],
        "probe/f1_mean": summary["f1_mean"],
        "probe/random_f1_mean": summary["random_f1_mean"],
        "probe/f1_agent_localization": cats[atari_ram.AGENT],
    }
    for tag, value in expected.items():
        assert tb[tag] == [(1024, pytest.approx(value, abs=1e-5))], tag  # at the checkpoint's step
    assert "probe/f1/block_bit_map_1" not in tb  # left-out variables get no scalar


def test_probe_info_label_errors_on_atari(breakout_run, capsys, tmp_path):
    code, _, err = run_cli(
        capsys,
        "probe",
        str(breakout_run),
        "--frames",
        "100",
        "--num-envs",
        "1",
        "--label",
        "info:nope",
        "--out",
        str(tmp_path),
    )
    assert "info has no entry 'nope'" in one_line_error(code, err) and "lives" in err
    code, _, err = run_cli(capsys, "probe", str(tmp_path / "missing"))
    assert "no such run directory" in one_line_error(code, err)
    code, _, err = run_cli(capsys, "probe", str(breakout_run), "--frames", "5")
    assert "--frames 5" in one_line_error(code, err)


# ------------------------------------------------------------------------------------------------
# End to end: info labels of a synthetic image env
# ------------------------------------------------------------------------------------------------


class SquareEnv(gym.Env):
    """A bright 6x6 square at one of 6 columns (and a random row) of a dark, noisy 36x36 image; info
    holds its column (what the image shows), an independent random number (what it does not),
    the column as a float, and a string. Reward 1 for telling whether the square is right of
    the middle."""

    observation_space = gym.spaces.Box(0, 255, (1, 36, 36), np.uint8)
    action_space = gym.spaces.Discrete(2)

    def __init__(self) -> None:
        self.t = 0
        self.column = 0

    def _observe(self) -> tuple[np.ndarray, dict]:
        self.column = int(self.np_random.integers(6))
        row = int(self.np_random.integers(0, 30))
        image = self.np_random.integers(0, 60, (1, 36, 36), dtype=np.uint8)  # no two frames alike
        image[0, row : row + 6, self.column * 6 : self.column * 6 + 6] = 255
        info = {
            "square_x": self.column,
            "noise": int(self.np_random.integers(6)),
            "square_x_cm": self.column * 1.7 + 0.35,
            "kind": "square",
        }
        return image, info

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._observe()

    def step(self, action):
        reward = float(int(action) == int(self.column >= 3))
        self.t += 1
        obs, info = self._observe()
        return obs, reward, False, self.t >= 40, info


gym.register("ProbeSquare-v0", entry_point=SquareEnv)


@pytest.fixture(scope="module")
def square_run(tmp_path_factory) -> Path:
    import auxrl

    run = tmp_path_factory.mktemp("probe") / "square"
    auxrl.train(
        "cartpole",
        [
            "env.id=ProbeSquare-v0",
            "model.torso=nature_cnn",
            "perf.threads=1",
            "env.num_envs=4",
            "ppo.num_steps=64",
            "ppo.update_epochs=2",
            "ppo.total_steps=512",
        ],
        run,
        device="cpu",
        verbose=False,
    )
    return run


def test_probe_info_labels_find_what_the_image_shows(square_run, capsys, tmp_path):
    out_dir = tmp_path / "out"
    args = ["--frames", "1600", "--num-envs", "4", "--out", str(out_dir)]
    labels = ["--label", "info:square_x", "--label", "info:noise", "--label", "info:square_x_cm"]
    code, out, err = run_cli(capsys, "probe", str(square_run), *labels, *args)
    assert code == 0, err
    result = json.loads((out_dir / "probe.json").read_text())
    assert result["labels"] == "info" and result["game"] is None
    assert result["split"]["episodes"]["test"] >= 2
    seen, noise, cm = (result["variables"][k] for k in ("square_x", "noise", "square_x_cm"))
    assert seen["task"] == "classification" and seen["distinct_values"] == 6
    # The square's column is in the image: both torsos' features beat guessing the majority.
    assert seen["f1"] > seen["majority_f1"] + 0.4 and seen["f1"] > 0.6
    assert seen["random_f1"] > seen["majority_f1"] + 0.3
    # A number the image does not show cannot be read from it.
    assert noise["f1"] < 0.35 and noise["random_f1"] < 0.35
    # A non-integer label is regressed: R^2 on the test episodes.
    assert cm["task"] == "regression" and cm["r2"] > 0.5 and cm["random_r2"] > 0.5
    assert "square_x" in out and (out_dir / "probe.md").is_file()
    tb = scalars(out_dir)
    assert {"probe/f1/square_x", "probe/r2/square_x_cm", "probe/f1_mean", "probe/random_f1_mean"} <= tb.keys()
    assert not list(square_run.glob("probe.*"))  # --out: nothing written into the run


def test_probe_info_label_errors(square_run, capsys, tmp_path):
    base = [str(square_run), "--frames", "100", "--out", str(tmp_path)]
    code, _, err = run_cli(capsys, "probe", *base)
    assert "is not an Atari game" in one_line_error(code, err) and "--label info:KEY" in err
    code, _, err = run_cli(capsys, "probe", *base, "--label", "info:kind")
    assert "info['kind'] is 'square', not a finite number" in one_line_error(code, err)
    code, _, err = run_cli(capsys, "probe", *base, "--label", "info:depth")
    line = one_line_error(code, err)
    assert "has no entry 'depth'" in line and "square_x" in line
    code, _, err = run_cli(capsys, "probe", *base, "--label", "square_x")
    assert "give info:KEY" in one_line_error(code, err)
    assert not list(tmp_path.iterdir())  # nothing written on an error


def test_probe_with_the_agent_playing(square_run, capsys, tmp_path):
    code, _, err = run_cli(
        capsys, "probe", str(square_run), "--policy", "agent", "--label", "info:square_x",
        "--frames", "400", "--num-envs", "2", "--epochs", "2", "--out", str(tmp_path),
    )  # fmt: skip
    assert code == 0, err
    result = json.loads((tmp_path / "probe.json").read_text())
    assert result["policy"] == "agent" and result["epsilon"] == 0.2 and result["frames"] == 400
    assert result["classifier"]["epochs_run"] == {"trained": 2, "random": 2}
    assert 0.0 <= result["variables"]["square_x"]["f1"] <= 1.0


def test_whitening_gives_identity_covariance_on_the_features_span():
    from auxrl.probe import whitening

    rng = np.random.default_rng(0)
    base = rng.normal(size=(500, 3)) @ np.array([[5.0, 0, 0, 1, 0], [0, 0.1, 0, 1, 0], [0, 0, 1, 1, 0]])
    mean, w = whitening(base)  # 5 features, 3 directions with variance (a dead unit, a sum)
    assert w.shape == (5, 3)
    white = (base - mean) @ w
    assert np.cov(white, rowvar=False) == pytest.approx(np.eye(3), abs=1e-8)
