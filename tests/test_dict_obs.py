"""Dict observations: packed for transport, image keys through a conv torso and vector keys
through an MLP; a dict env trains, resumes and acts through predict; pixel tasks refuse a dict
without an image key in one line."""

from __future__ import annotations

import cue_envs
import gymnasium as gym
import numpy as np
import pytest
import torch

from auxrl import checkpoint
from auxrl.configfile import load_config
from auxrl.envs import make_envs
from auxrl.envs.dictobs import DictLayout
from auxrl.inference import load_agent
from auxrl.plot import read_scalars
from auxrl.trainer import train

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

cue_envs.register_dict()
DICT = [
    "env.id=DictCue-v0", "env.num_envs=4", "ppo.num_steps=32", "model.torso=impala",
    "ppo.num_minibatches=2", "ppo.update_epochs=4", "ppo.lr=1e-3", "perf.threads=1",
]  # fmt: skip


def test_pack_and_unpack_round_trip():
    space = gym.spaces.Dict(
        {
            "screen": gym.spaces.Box(0, 255, (5, 4, 3), np.uint8),  # channel-last
            "grey": gym.spaces.Box(0, 255, (5, 4), np.uint8),
            "pos": gym.spaces.Box(-1, 1, (2, 3), np.float32),
            "direction": gym.spaces.Discrete(4),
        }
    )
    layout = DictLayout(space)
    batch = {k: np.stack([space[k].sample() for _ in range(6)]) for k in space.spaces}
    packed = layout.pack(batch)
    assert packed.dtype == np.uint8 and packed.shape == (6, layout.nbytes)
    assert layout.nbytes == 4 * (6 + 1) + 60 + 20  # vectors as float32, images as bytes
    out = layout.unpack(torch.from_numpy(packed))
    assert torch.equal(out["screen"], torch.from_numpy(np.moveaxis(batch["screen"], -1, 1)))  # (C, H, W)
    assert out["grey"].shape == (6, 1, 5, 4) and out["screen"].dtype == torch.uint8
    assert torch.equal(out["pos"], torch.from_numpy(batch["pos"].reshape(6, 6)))
    assert out["direction"].tolist() == [[float(d)] for d in batch["direction"]]


@pytest.mark.slow
def test_a_dict_env_trains_resumes_and_predicts(tmp_path):
    run = tmp_path / "dict"
    train(load_config("cartpole", [*DICT, "ppo.total_steps=2048"]), run, progress=False)
    train(load_config("cartpole", [*DICT, "ppo.total_steps=4096"]), run, progress=False, resume=True)
    assert checkpoint.load(run)["state"]["global_step"] == 4096
    steps, returns = read_scalars(run, "charts/episodic_return")
    assert returns[-8:].mean() > 13  # of 16 (random: 8): the cue is only in the image
    agent = load_agent(run, "cpu")
    env = cue_envs.DictCueEnv()
    obs, _ = env.reset(seed=3)
    hits = 0
    for _ in range(16):
        obs, reward, *_ = env.step(agent.predict(obs, deterministic=True))
        hits += reward
    assert hits >= 14
    batch = {k: np.stack([v, v]) for k, v in obs.items()}
    assert agent.predict(batch, deterministic=True).shape == (2,)


def test_dict_without_an_image_key_trains_on_the_mlp(tmp_path):
    cfg = load_config(
        "cartpole", ["env.id=DictVector-v0", "env.num_envs=4", "ppo.total_steps=512", "perf.threads=1"]
    )
    with make_envs(cfg.env) as envs:
        assert isinstance(envs.single_observation_space, gym.spaces.Dict)
        assert envs.reset(seed=0).shape == (4, 8)  # two float32: 8 bytes per row
    train(cfg, tmp_path / "vec", progress=False)


@pytest.mark.parametrize("task", ["pixel_control", "augment_consistency"])
def test_pixel_tasks_refuse_a_dict_env_without_an_image_key(tmp_path, capsys, task):
    from auxrl.cli import main

    code = main(
        ["train", "cartpole", "env.id=DictVector-v0", "aux.enabled=true", f"aux.tasks={{{task}: {{}}}}",
         "ppo.total_steps=256", "--run-dir", str(tmp_path / "r")]
    )  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert f"aux task {task!r} works on image frames" in err[0] and "no image key" in err[0]


def test_pixel_tasks_and_augmentation_work_on_a_dicts_image_key(tmp_path):
    """pixel_control, augment_consistency, SPR-style next_state and RAD read the ``screen`` key
    (the dict's only image key: aux.image_key may name it) and leave ``pos`` as it is."""
    tasks = (
        "aux.tasks={pixel_control: {crop: 12, cell_size: 3}, augment_consistency: {}, "
        "next_state: {mode: spr}}"
    )
    cfg = load_config(
        "cartpole",
        [
            *DICT,
            "ppo.total_steps=512",
            "aux.enabled=true",
            tasks,
            "aux.image_key=screen",
            "ppo.augment=shift",
        ],
    )
    run = tmp_path / "pix"
    train(cfg, run, progress=False)
    for tag in ("pixel_control/loss", "augment_consistency/loss", "next_state/loss"):
        steps, values = read_scalars(run, f"aux/{tag}")
        assert len(values) and np.isfinite(values).all()
    from auxrl.envs.dictobs import ImageView

    space = cue_envs.DictCueEnv().observation_space
    view = ImageView(space, "screen")
    layout = DictLayout(space)
    packed = torch.from_numpy(layout.pack({k: np.stack([v]) for k, v in space.sample().items()}))
    frames = view.frames(packed)
    assert frames.shape == (1, 3, 12, 12)
    flipped = view.with_frames(packed, 255 - frames)
    assert torch.equal(layout.unpack(flipped)["pos"], layout.unpack(packed)["pos"])
    assert torch.equal(view.frames(flipped), 255 - frames)
    with pytest.raises(ValueError, match="not one of this env's image keys"):
        ImageView(space, "pos")
