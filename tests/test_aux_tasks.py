"""Built-in auxiliary tasks: pure helpers, the replay's skewed sampler, EMA targets, learning."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch import nn

from auxrl.config import ConfigError, build
from auxrl.models.torsos import MLP
from auxrl.ppo.rollout import RolloutStorage
from auxrl.tasks.base import AuxTask, Sequences, TaskContext, TaskMismatch
from auxrl.tasks.next_state import NextStatePrediction
from auxrl.tasks.pixel_control import PixelControl, nstep_q_targets, pixel_change
from auxrl.tasks.registry import BUILTINS, resolve
from auxrl.tasks.replay import Replay
from auxrl.tasks.reward_prediction import RewardPrediction, reward_class

IMAGE_SPACE = gym.spaces.Box(0, 255, (4, 84, 84), np.uint8)
VECTOR_SPACE = gym.spaces.Box(-1.0, 1.0, (8,), np.float32)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


class TinyConv(nn.Module):
    """A cheap stand-in for NatureCNN (same input contract: uint8 frames, scaled here)."""

    def __init__(self, in_channels: int = 4, feature_dim: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, 8, 8, stride=4),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(8 * 20 * 20, feature_dim),
            nn.ReLU(),
        )
        self.feature_dim = feature_dim

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs.float() / 255.0)


def make_task(cls: type[AuxTask], torso: nn.Module, obs_space, action_space, **params):
    ctx = TaskContext(obs_space, action_space, torso.feature_dim, torso)
    cls.check(ctx)
    return cls(build(cls.Config, params, f"aux.tasks.{cls.name}"), ctx)


def sequences(obs, actions, rewards=None, done=None, valid=None) -> Sequences:
    batch, length = actions.shape[:2]
    false = torch.zeros(batch, length, dtype=torch.bool)
    return Sequences(
        obs=obs,
        actions=actions,
        rewards=torch.zeros(batch, length) if rewards is None else rewards,
        terminated=false if done is None else done,
        truncated=false,
        valid=~false if valid is None else valid,
    )


def train(task: AuxTask, torso: nn.Module, seq: Sequences, steps: int, lr: float = 1e-3):
    """Adam on torso + task for ``steps`` steps: (the first loss, the output after training)."""
    params = [p for p in [*torso.parameters(), *task.parameters()] if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    first = None
    for _ in range(steps):
        out = task.loss(seq, torso)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        task.after_update()
        first = out.loss.item() if first is None else first
    return first, task.loss(seq, torso)


# ---------------------------------------------------------------------------------------------
# Pure helpers
# ---------------------------------------------------------------------------------------------


def test_pixel_change_one_cell_and_ignores_border():
    a = torch.zeros(4, 84, 84, dtype=torch.uint8)
    b = a.clone()
    b[-1, 2 + 4 * 3 : 2 + 4 * 4, 2 + 4 * 7 : 2 + 4 * 8] = 255  # cell (3, 7) of the crop
    b[-1, :2, :] = 255  # top border, outside the crop
    b[-1, :, 82:] = 255  # right border
    b[0, 40:60, 40:60] = 255  # an older frame of the stack: ignored
    change = pixel_change(a, b)
    assert change.shape == (20, 20)
    expected = torch.zeros(20, 20)
    expected[3, 7] = 1.0
    assert torch.equal(change, expected)


def test_pixel_change_half_intensity_and_batch_dims():
    a = torch.full((2, 3, 4, 84, 84), 100, dtype=torch.uint8)
    b = a.clone()
    b[1, 2, -1, 2:6, 2:6] = 100 + 51  # a full cell, 51/255 = 0.2
    b[0, 0, -1, 2:4, 2:6] = 0  # half a cell, |0 - 100| / 255
    change = pixel_change(a, b)
    assert change.shape == (2, 3, 20, 20)
    assert change[1, 2, 0, 0] == pytest.approx(0.2)
    assert change[0, 0, 0, 0] == pytest.approx(0.5 * 100 / 255)
    assert change.sum() == pytest.approx(0.2 + 0.5 * 100 / 255)


def test_nstep_q_targets_stops_where_the_episode_ends():
    rewards = torch.tensor([[1.0, 2.0, 3.0]])
    bootstrap = torch.tensor([10.0])
    continues = torch.tensor([[True, False, True]])
    # G2 = 3 + 0.9 * 10 = 12; G1 = 2 (stops); G0 = 1 + 0.9 * 2 = 2.8
    expected = torch.tensor([[2.8, 2.0, 12.0]])
    assert torch.allclose(nstep_q_targets(rewards, bootstrap, continues, 0.9), expected)
    # Trailing (cell) dims broadcast.
    maps = nstep_q_targets(
        rewards[..., None, None].expand(1, 3, 2, 2),
        bootstrap[:, None, None].expand(1, 2, 2),
        continues,
        0.9,
    )
    assert torch.allclose(maps, expected[..., None, None].expand(1, 3, 2, 2))


def test_reward_class():
    got = reward_class(torch.tensor([-3.0, 0.0, 0.5, 2.0, -0.1]))
    assert got.dtype == torch.long
    assert got.tolist() == [2, 0, 1, 1, 2]


# ---------------------------------------------------------------------------------------------
# Replay
# ---------------------------------------------------------------------------------------------


def storage_with(num_steps: int, num_envs: int) -> RolloutStorage:
    return RolloutStorage(num_steps, num_envs, (2,), torch.float32, (), torch.int64, torch.device("cpu"))


def test_skewed_sampler_hits_the_rewarding_fraction():
    gen = torch.Generator().manual_seed(0)
    storage = storage_with(500, 4)
    storage.rewards = (torch.rand(500, 4, generator=gen) < 0.05).float()
    replay = Replay(500, storage)
    replay.add(storage)
    base = (storage.rewards[2:] != 0).float().mean().item()  # last steps of length-3 windows
    assert 0.02 < base < 0.08

    skewed = replay.sample(4000, 3, rewarding_fraction=0.5, generator=gen)
    assert skewed.rewards.shape == (4000, 3)
    assert 0.45 <= (skewed.rewards[:, -1] != 0).float().mean().item() <= 0.55

    uniform = replay.sample(4000, 3, generator=gen)
    assert abs((uniform.rewards[:, -1] != 0).float().mean().item() - base) < 0.02


def test_replay_windows_are_consecutive_across_the_ring():
    gen = torch.Generator().manual_seed(1)
    replay = None
    for rollout in range(3):  # capacity 12 < 3 rollouts of 5: the ring wraps
        storage = storage_with(5, 3)
        steps = torch.arange(rollout * 5, rollout * 5 + 5).float()[:, None]
        storage.obs[..., 0] = steps  # obs_t = (global step, env)
        storage.obs[..., 1] = torch.arange(3).float()
        storage.actions[:] = steps.long()
        storage.next_obs[:, 0] = rollout * 5 + 5
        storage.next_obs[:, 1] = torch.arange(3).float()
        replay = replay or Replay(12, storage)
        replay.add(storage)
    seq = replay.sample(500, 4, generator=gen)
    step = seq.obs[..., 0]
    assert torch.equal(step[:, 1:] - step[:, :-1], torch.ones(500, 4))
    assert step.min() >= 15 - 12 and step.max() == 15  # only kept steps, next_obs at the end
    assert torch.equal(seq.actions.float(), step[:, :-1])
    assert torch.equal(seq.obs[..., 1], seq.obs[:, :1, 1].expand(-1, 5))  # one env per window


# ---------------------------------------------------------------------------------------------
# Tasks
# ---------------------------------------------------------------------------------------------


def test_builtins_resolve_to_their_classes():
    for name in BUILTINS:
        cls = resolve(name)
        assert cls.name == name and cls.description
    assert resolve("next_state") is NextStatePrediction


def test_config_ranges_are_checked():
    with pytest.raises(ConfigError, match="crop"):
        build(PixelControl.Config, {"crop": 80, "cell_size": 3})
    with pytest.raises(ConfigError, match="rewarding_fraction"):
        build(RewardPrediction.Config, {"rewarding_fraction": 1.5})


def test_pixel_control_rejects_vector_observations():
    torso = MLP(8, [16])
    ctx = TaskContext(VECTOR_SPACE, gym.spaces.Discrete(3), torso.feature_dim, torso)
    with pytest.raises(TaskMismatch) as err:
        PixelControl.check(ctx)
    assert str(VECTOR_SPACE) in str(err.value) and "pixel_control" in str(err.value)
    small = gym.spaces.Box(0, 255, (4, 64, 64), np.uint8)
    with pytest.raises(TaskMismatch, match="80x80"):
        make_task(PixelControl, torso, small, gym.spaces.Discrete(3))
    # A crop that fits works, with a grid to match: 64 / 4 = 16 cells a side.
    task = make_task(PixelControl, torso, small, gym.spaces.Discrete(3), crop=64)
    assert task.q_maps(torch.randn(2, torso.feature_dim)).shape == (2, 3, 16, 16)
    with pytest.raises(TaskMismatch, match="Discrete"):
        PixelControl.check(TaskContext(IMAGE_SPACE, gym.spaces.Box(-1, 1, (2,)), 16, torso))


def test_reward_prediction_learns_the_reward_sign():
    torch.manual_seed(0)
    torso = TinyConv()
    task = make_task(RewardPrediction, torso, IMAGE_SPACE, gym.spaces.Discrete(3), source="replay")
    assert task.needs.sequence_length == 3 and task.needs.rewarding_fraction == 0.5
    batch = 24
    obs = torch.randint(0, 30, (batch, 4, 4, 84, 84), dtype=torch.uint8)  # noise
    rewards = torch.zeros(batch, 3)
    # The newest frame of obs[:, 2] shows where the reward will come from.
    obs[:8, 2, -1, 10:30, 10:30] = 255  # top left: positive
    rewards[:8, 2] = 1.0
    obs[8:16, 2, -1, 50:70, 50:70] = 255  # bottom right: negative
    rewards[8:16, 2] = -1.0
    seq = sequences(obs, torch.zeros(batch, 3, dtype=torch.long), rewards)
    first, out = train(task, torso, seq, steps=60)
    assert out.loss.item() < 0.5 * first
    assert out.metrics["accuracy"].item() == 1.0


def test_reward_prediction_on_vectors_and_empty_mask():
    torso = MLP(8, [32, 32])
    task = make_task(RewardPrediction, torso, VECTOR_SPACE, gym.spaces.Box(-1, 1, (2,)), source="replay")
    obs, actions, rewards = torch.randn(5, 4, 8), torch.zeros(5, 3, 2), torch.ones(5, 3)
    assert task.loss(sequences(obs, actions, rewards), torso).loss.item() > 0
    # Every window's frames straddle an episode end (transition 1 ends it): nothing to learn.
    done = torch.zeros(5, 3, dtype=torch.bool)
    done[:, 1] = True
    out = task.loss(sequences(obs, actions, rewards, done=done), torso)
    assert out.loss.item() == 0.0 and out.metrics["accuracy"].item() == 0.0


def test_reward_prediction_on_ppo_minibatch_features_learns_and_weights_the_skew():
    """source=minibatch: one observation per sample, PPO's features given (no torso pass of its
    own); rewarding samples share rewarding_fraction of the loss however few they are."""
    torch.manual_seed(0)
    torso = TinyConv()
    task = make_task(RewardPrediction, torso, IMAGE_SPACE, gym.spaces.Discrete(3))
    assert task.needs.minibatch and task.needs.sequence_length == 1
    batch = 32
    obs = torch.randint(0, 30, (batch, 2, 4, 84, 84), dtype=torch.uint8)
    rewards = torch.zeros(batch, 1)
    obs[:4, 0, -1, 10:30, 10:30] = 255  # 4 of 32 rewarding: positive
    rewards[:4, 0] = 1.0
    seq = sequences(obs, torch.zeros(batch, 1, dtype=torch.long), rewards)

    def never(_: torch.Tensor) -> torch.Tensor:
        raise AssertionError("the task encoded frames although PPO's features were given")

    seq.features = torso(obs[:, 0])
    out = task.loss(seq, never)
    # Near-uniform logits at init: the loss is ~ln 3 whatever the weights, and the weights sum to 1.
    assert out.loss.item() == pytest.approx(math.log(3), abs=0.05)
    weights_positive = 0.5 / 4  # each rewarding sample's weight: 0.5 of the loss over 4 samples
    logits = task.head(torch.nn.functional.layer_norm(seq.features, (torso.feature_dim,)))  # scale_free
    ce = torch.nn.functional.cross_entropy(logits, torch.tensor([1] * 4 + [0] * 28), reduction="none")
    expected = weights_positive * ce[:4].sum() + 0.5 / 28 * ce[4:].sum()
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    opt = torch.optim.Adam([*task.parameters(), *torso.parameters()], lr=1e-3)
    for _ in range(60):
        seq.features = torso(obs[:, 0])
        out = task.loss(seq, never)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    assert out.metrics["accuracy"].item() == pytest.approx(1.0)


def test_scale_free_heads_give_no_gradient_along_the_features_scale():
    """reward_prediction and state_prediction read layer-normalised features: their loss does not
    change when the features grow, so its gradient on them is orthogonal to the features."""
    torch.manual_seed(0)
    torso = TinyConv()
    task = make_task(RewardPrediction, torso, IMAGE_SPACE, gym.spaces.Discrete(3))
    obs = torch.randint(0, 255, (16, 2, 4, 84, 84), dtype=torch.uint8)
    rewards = (torch.arange(16) % 3 == 0).float().view(16, 1)
    seq = sequences(obs, torch.zeros(16, 1, dtype=torch.long), rewards)
    features = torso(obs[:, 0]).detach().requires_grad_(True)
    seq.features = features

    def scale_cosine(grad: torch.Tensor) -> float:  # per sample: d loss / d (the features' scale)
        return torch.nn.functional.cosine_similarity(grad, features, dim=-1).abs().max().item()

    (grad,) = torch.autograd.grad(task.loss(seq, torso).loss, features)
    assert scale_cosine(grad) < 0.01  # 0 but for layer norm's epsilon
    seq.features = features * 3.0
    scaled = task.loss(seq, torso).loss.item()
    seq.features = features
    assert scaled == pytest.approx(task.loss(seq, torso).loss.item(), rel=1e-4)
    raw = make_task(RewardPrediction, torso, IMAGE_SPACE, gym.spaces.Discrete(3), scale_free=False)
    (grad,) = torch.autograd.grad(raw.loss(seq, torso).loss, features)
    assert scale_cosine(grad) > 0.05


def test_pixel_control_learns_action_dependent_change():
    torch.manual_seed(0)
    torso = TinyConv()
    task = make_task(PixelControl, torso, IMAGE_SPACE, gym.spaces.Discrete(2), n_steps=3)
    batch, length = 8, 3
    # A deterministic policy after a random first action: alternate the two actions. The
    # returns then depend only on (obs_t, a_t), so the targets are learnable exactly.
    first_action = torch.randint(0, 2, (batch, 1))
    actions = (first_action + torch.arange(length)) % 2
    cells = [2, 15]  # action 0 lights cell (2, 2) of the next frame, action 1 cell (15, 15)
    obs = torch.zeros(batch, length + 1, 4, 84, 84, dtype=torch.uint8)
    for t in range(length + 1):
        obs[:, t, 0, 4 * t : 4 * t + 4, :] = 255  # time marker in an older frame of the stack
    for i in range(batch):
        for t in range(length):
            p = 2 + 4 * cells[int(actions[i, t])]
            obs[i, t + 1, -1, p : p + 4, p : p + 4] = 255
    done = torch.zeros(batch, length, dtype=torch.bool)
    done[:, -1] = True  # episodes end with the window: no bootstrap
    done[0, 0] = True  # one earlier end: the later steps of sample 0 are masked out
    seq = sequences(obs, actions, done=done)
    q = task.q_maps(torso(obs[:, 0]))
    assert q.shape == (batch, 2, 20, 20)
    first, out = train(task, torso, seq, steps=150)
    assert out.loss.item() < 0.2 * first
    # Real steps: sample 0 keeps step 0 (1 cell of 400 changes); the others keep 3 steps that
    # change 1, 2 and 2 cells (one lights up, the previous one goes dark).
    assert out.metrics["pseudo_reward"].item() == pytest.approx((1 + 7 * 5) / (1 + 7 * 3) / 400)
    # At step 0 the taken action's Q map peaks at the cell that action changes (G = 1 + 0.9 +
    # 0.81 there, 0.9 + 0.81 at the other action's cell).
    q_taken = task.q_maps(torso(obs[:, 0]))[torch.arange(batch), actions[:, 0]]
    best = q_taken.flatten(1).argmax(1)
    expected = torch.where(actions[:, 0] == 0, 2 * 20 + 2, 15 * 20 + 15)
    assert torch.equal(best, expected)


def test_next_state_learns_deterministic_dynamics():
    torch.manual_seed(0)
    torso = MLP(8, [64, 64])
    task = make_task(NextStatePrediction, torso, VECTOR_SPACE, gym.spaces.Discrete(4), horizon=2)
    assert task.needs.sequence_length == 2
    batch, length = 32, 2
    actions = torch.randint(0, 4, (batch, length))
    obs = [torch.randn(batch, 8)]
    for t in range(length):  # s' = roll(s, a) with its first entry flipped: a pure function
        index = (torch.arange(8) - actions[:, t : t + 1]) % 8  # roll row i by actions[i, t]
        nxt = obs[-1].gather(1, index)
        nxt[:, 0] = -nxt[:, 0]
        obs.append(nxt)
    seq = sequences(torch.stack(obs, 1), actions)
    first, out = train(task, torso, seq, steps=150)
    assert out.loss.item() < 0.5 * first
    assert out.metrics["cosine"].item() > 0.75
    # Not by collapse: the targets of different samples still point different ways.
    targets = task.target_projection(task.target_torso(seq.obs[:, 1]))
    targets = torch.nn.functional.normalize(targets, dim=-1)
    pairwise = (targets @ targets.T - torch.eye(batch)).sum() / (batch * batch - batch)
    assert pairwise.item() < 0.5
    assert out.metrics["target_similarity"].item() == pytest.approx(pairwise.item(), abs=1e-5)


def test_next_state_ema_target():
    torch.manual_seed(0)
    torso = MLP(8, [16, 16])
    task = make_task(NextStatePrediction, torso, VECTOR_SPACE, gym.spaces.Box(-1, 1, (3,)))
    keys = task.state_dict().keys()
    assert any(k.startswith("target_torso.") for k in keys)
    assert not any("_online" in k for k in keys)
    assert {id(p) for p in task.parameters()}.isdisjoint(id(p) for p in torso.parameters())

    def targets() -> list[torch.Tensor]:
        return [*task.target_torso.parameters(), *task.target_projection.parameters()]

    online = [*torso.parameters(), *task.projection.parameters()]
    with torch.no_grad():
        for p in online:
            p.add_(torch.randn_like(p))  # make online and target differ
    old = [p.clone() for p in targets()]
    task.ema_update(tau=0.1)
    pairs = zip(targets(), old, online, strict=True)
    for new, before, online_p in pairs:
        assert not new.requires_grad
        assert torch.allclose(new, 0.9 * before + 0.1 * online_p)

    seq = sequences(torch.randn(6, 2, 8), torch.randn(6, 1, 3))
    snapshot = [p.clone() for p in targets()]
    task.loss(seq, torso).loss.backward()
    assert all(p.grad is None for p in targets())
    assert all(p.grad is not None for p in torso.parameters())
    for p, before in zip(targets(), snapshot, strict=True):
        assert torch.equal(p, before)


def test_a_window_longer_than_a_rollout_is_refused_before_the_run_directory_is_written(tmp_path, capsys):
    from auxrl.cli import main

    run = tmp_path / "run"
    argv = ["train", "cartpole", "aux.tasks.next_state.horizon=1000", "--run-dir", str(run), "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "aux.tasks.next_state needs windows of" in err
    assert "ppo.num_steps=32" in err
    assert not run.exists()
