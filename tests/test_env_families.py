"""Env families as plugins: a user's family, registered by entry point, trains from the CLI with
its own ids and options; bad family settings are one-line errors."""

from __future__ import annotations

import sys
import textwrap

import numpy as np
import pytest

from auxrl import checkpoint
from auxrl.cli import main
from auxrl.config import ConfigError
from auxrl.configfile import load_config
from auxrl.envs import make_envs
from auxrl.envs.family import family_for
from auxrl.plot import read_scalars

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

FAMILY = textwrap.dedent(
    '''
    """A toy family: ids Toy/<name>; a cue in the observation says which of `actions` pays."""
    from dataclasses import dataclass

    import gymnasium as gym
    import numpy as np

    from auxrl.envs.family import EnvFamily
    from auxrl.envs.gym import GymVecEnv


    class Cue(gym.Env):
        def __init__(self, actions=2, length=8, render_mode=None):
            self.observation_space = gym.spaces.Box(0.0, 1.0, (4,), np.float32)
            self.action_space = gym.spaces.Discrete(actions)
            self.actions, self.length = actions, length

        def _obs(self):
            obs = np.zeros(4, np.float32)
            obs[self.cue] = 1.0
            return obs

        def reset(self, *, seed=None, options=None):
            super().reset(seed=seed)
            self.t, self.cue = 0, int(self.np_random.integers(self.actions))
            return self._obs(), {}

        def step(self, action):
            reward = float(int(action) == self.cue)
            self.t += 1
            self.cue = int(self.np_random.integers(self.actions))
            return self._obs(), reward, False, self.t >= self.length, {}


    @dataclass
    class Options:
        actions: int = 2
        length: int = 8


    class ToyFamily(EnvFamily):
        """Toy cue games (ids Toy/<name>)."""

        name = "toy"
        Options = Options

        def handles(self, env_id):
            return env_id.startswith("Toy/")

        def make(self, cfg, options, *, training, stats, render):
            return GymVecEnv(
                cfg, training=training, stats=stats, render=render,
                make_env=lambda **kw: Cue(options.actions, options.length, **kw),
            )
    '''
)


@pytest.fixture
def toy_family(tmp_path, monkeypatch):
    """The toy family as an installed package would be: a module and a dist-info folder with an
    ``auxrl.env_families`` entry point, on sys.path."""
    (tmp_path / "toyfam.py").write_text(FAMILY)
    info = tmp_path / "toyfam-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toyfam\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[auxrl.env_families]\ntoy = toyfam:ToyFamily\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    sys.modules.pop("toyfam", None)


def test_a_family_registered_by_entry_point_trains_from_the_cli(toy_family, tmp_path, capsys):
    assert family_for("Toy/Cue").name == "toy"  # found by its ids, no env.family needed
    assert family_for("CartPole-v1").name == "gymnasium" and family_for("ALE/Pong-v5").name == "atari"
    run = tmp_path / "run"
    argv = ["train", "cartpole", "env.id=Toy/Cue", "env.options.actions=3", "env.num_envs=4"]
    code = main([*argv, "ppo.total_steps=8192", "ppo.num_steps=64", "--run-dir", str(run), "--no-progress"])
    assert code == 0
    saved = checkpoint.load(run)
    assert saved["config"]["env"]["options"] == {"actions": 3}
    assert saved["spaces"][1]["n"] == 3  # the option reached the env
    # It learned the cue: near 8 of 8 per episode (a random policy gets 8/3).
    assert code == main(["eval", str(run), "--episodes", "8"])
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("Toy/Cue: 8 episodes") and float(line.split("score ")[1].split()[0]) >= 7.0


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["env.id=Toy/Cue", "env.options.colour=red"], "env.options"),
        (["env.id=Toy/Cue", "env.frameskip=2"], "env.frameskip=2 applies to Atari ids (ALE/<Game>-v5) only"),
        (["env.family=nosuch.module:Family"], "env.family='nosuch.module:Family': cannot import it"),
        (["env.family=toyfam:Cue"], "not a subclass of auxrl.envs.family.EnvFamily"),
        (["env.options.actions=3"], "env.options"),
        (["env.id=ALE/Pong-v5", "env.options.resize=[84,84]"], "the atari family takes no options"),
    ],
)
def test_bad_family_settings_are_one_line_errors(toy_family, overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config("cartpole", overrides)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_env_family_names_a_family_explicitly(toy_family):
    cfg = load_config("cartpole", ["env.family=toyfam:ToyFamily", "env.id=Toy/Cue", "env.num_envs=2"])
    with make_envs(cfg.env) as envs:
        assert envs.num_envs == 2 and envs.single_action_space.n == 2


PIXEL_ENV = textwrap.dedent(
    '''
    """A user's own 84x84 RGB env, channel-last: a bright square left or right; the action that
    names its side pays 1. Registered as pixel_env:Side-v0."""
    import gymnasium as gym
    import numpy as np


    class Side(gym.Env):
        def __init__(self, render_mode=None):
            self.observation_space = gym.spaces.Box(0, 255, (84, 84, 3), np.uint8)
            self.action_space = gym.spaces.Discrete(2)

        def _obs(self):
            obs = np.zeros((84, 84, 3), np.uint8)
            obs[30:54, (10 if self.side == 0 else 50):(34 if self.side == 0 else 74)] = 255
            return obs

        def reset(self, *, seed=None, options=None):
            super().reset(seed=seed)
            self.t, self.side = 0, int(self.np_random.integers(2))
            return self._obs(), {}

        def step(self, action):
            reward = float(int(action) == self.side)
            self.t += 1
            self.side = int(self.np_random.integers(2))
            return self._obs(), reward, False, self.t >= 16, {}


    gym.register("Side-v0", entry_point=Side)
    '''
)


@pytest.mark.slow
def test_the_image_env_config_trains_a_users_own_pixel_env(tmp_path, monkeypatch):
    """configs/image_env.yaml on an (84, 84, 3) env: grey, 84x84, 4 frames -> (4, 84, 84) uint8."""
    pytest.importorskip("cv2")
    (tmp_path / "pixel_env.py").write_text(PIXEL_ENV)
    monkeypatch.syspath_prepend(str(tmp_path))
    overrides = ["env.id=pixel_env:Side-v0", "env.num_envs=4", "ppo.num_steps=32", "ppo.total_steps=2048"]
    cfg = load_config("image_env", overrides)
    with make_envs(cfg.env) as envs:
        obs = envs.reset(seed=0)
        assert obs.shape == (4, 4, 84, 84) and obs.dtype == np.uint8
        assert obs[:, -1].max() == 255 and obs[:, -1].min() == 0  # the grey square is there
    from auxrl.trainer import train

    run = tmp_path / "run"
    train(cfg, run, progress=False)
    saved = checkpoint.load(run)["spaces"][0]
    assert tuple(saved["low"].shape) == (4, 84, 84) and saved["dtype"] == "uint8"
    steps, returns = read_scalars(run, "charts/episodic_return")
    assert returns[-8:].mean() > returns[:8].mean() + 2  # of 16: it learns which side pays
    sys.modules.pop("pixel_env", None)
