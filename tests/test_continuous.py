"""Continuous control: normalisation wrappers, their statistics in checkpoints and eval, the
separate value network, predict on raw observations, Pendulum learning, the MuJoCo configs."""

from __future__ import annotations

import importlib.util

import gymnasium as gym
import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from auxrl import checkpoint
from auxrl.configfile import load_config
from auxrl.envs import NormStats, make_envs
from auxrl.evaluate import evaluate
from auxrl.inference import load_agent
from auxrl.models.agent import build_agent
from auxrl.trainer import train

NORMALIZED = ["env.id=Pendulum-v1", "env.normalize_obs=true", "env.normalize_reward=true"]
HAS_MUJOCO = importlib.util.find_spec("mujoco") is not None


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def play(env_cfg, stats=None, training=True, steps=450):
    """Fixed random actions through auxrl's env; (returns, training rewards, last obs)."""
    rng = np.random.default_rng(0)
    returns, rewards = [], []
    with make_envs(env_cfg, stats=stats, training=training) as envs:
        obs = envs.reset(seed=3)
        for _ in range(steps):
            step = envs.step(rng.uniform(-3, 3, (envs.num_envs, 1)).astype(np.float32))  # beyond the bounds
            returns += list(step.episode_returns)
            rewards.append(step.reward)
            obs = step.obs
    return np.array(returns), np.concatenate(rewards), obs


def test_normalisation_scales_what_training_sees_and_reports_real_scores():
    plain = load_config("cartpole", ["env.id=Pendulum-v1", "env.num_envs=2"]).env
    normalized = load_config("cartpole", [*NORMALIZED, "env.num_envs=2"]).env
    stats = NormStats(gamma=0.99)
    raw_returns, raw_rewards, raw_obs = play(plain)
    returns, rewards, obs = play(normalized, stats)
    np.testing.assert_allclose(returns, raw_returns)  # real scores (Pendulum: 200 steps of <= 0)
    assert len(returns) == 4 and (returns < -200).all()
    # Divided by the running std of the discounted return (large here), clipped to +-10.
    assert np.abs(rewards).max() <= 10.0
    assert np.median(np.abs(rewards)) < np.median(np.abs(raw_rewards)) / 5
    assert np.abs(obs).max() <= 10.0 and np.abs(raw_obs[:, 2]).max() > 1.0
    assert stats.obs.count > 900 and stats.ret.count > 800
    # Evaluation uses the statistics frozen, and real rewards.
    count = stats.obs.count
    _, eval_rewards, _ = play(normalized, stats, training=False, steps=50)
    assert stats.obs.count == count
    np.testing.assert_allclose(eval_rewards, raw_rewards[: len(eval_rewards)])


def test_statistics_are_saved_resumed_and_used_by_predict(tmp_path):
    cfg = load_config("pendulum", ["ppo.total_steps=4096", "ppo.num_steps=256", "log.checkpoint_every=2048"])
    run = tmp_path / "run"
    train(cfg, run, device="cpu", verbose=False)
    saved = checkpoint.load(run)["normalization"]
    assert saved["obs"]["count"] == pytest.approx(4096 + 8, abs=8)  # every step plus the reset
    more = load_config(str(run / "config.yaml"), ["ppo.total_steps=6144"])
    train(more, run, device="cpu", verbose=False, resume=True)
    assert checkpoint.load(run)["normalization"]["obs"]["count"] > saved["obs"]["count"] + 2000

    agent = load_agent(run, device="cpu")
    np.testing.assert_allclose(agent.stats.obs.mean, checkpoint.load(run)["normalization"]["obs"]["mean"])
    # predict on the env's raw observation = the model on what the normalising env gives.
    raw, _ = gym.make("Pendulum-v1").reset(seed=5)
    with make_envs(
        load_config(str(run / "config.yaml"), ["env.num_envs=1"]).env, stats=agent.stats, training=False
    ) as envs:
        normalized = envs.reset(seed=5)
    expected = agent.model.act(torch.as_tensor(normalized), deterministic=True).action.numpy()[0]
    np.testing.assert_allclose(agent.predict(raw, deterministic=True), np.clip(expected, -2, 2), rtol=1e-5)
    assert agent.predict(np.stack([raw, raw]), deterministic=True).shape == (2, 1)
    result = evaluate(agent, 2, deterministic=True, num_envs=2)
    assert len(result.returns) == 2 and all(r < 0 for r in result.returns)


def test_separate_value_network_leaves_the_torso_to_the_policy():
    obs_space = gym.spaces.Box(-np.inf, np.inf, (3,), np.float32)
    agent = build_agent("mlp", [16, 16], obs_space, gym.spaces.Box(-2, 2, (1,)), separate_value=True)
    torso = {id(p) for p in agent.torso.parameters()}
    assert torso.isdisjoint(id(p) for p in agent.heads["value"].parameters())
    obs = torch.randn(5, 3)
    _, value, _ = agent(obs)
    value.sum().backward()
    assert all(p.grad is None for p in agent.torso.parameters())
    assert torch.allclose(agent.get_value(obs), value)


@pytest.mark.slow
def test_pendulum_learns(tmp_path):
    # The shipped config, shortened to 20 updates (~20-40 s on 2 busy cores). Random play scores
    # about -1,200; the full 100k steps reach about -200.
    cfg = load_config("pendulum", ["ppo.total_steps=40960"])
    result = train(cfg, tmp_path / "run", device="cpu", verbose=False)
    acc = EventAccumulator(str(tmp_path / "run"), size_guidance={"scalars": 0})
    acc.Reload()
    returns = np.array([e.value for e in acc.Scalars("charts/episodic_return")])
    early, late = returns[:16].mean(), returns[-16:].mean()
    assert early < -1000, early
    assert late > early + 300, (early, late)
    assert result.recent_return is not None and result.recent_return > -900


@pytest.mark.skipif(not HAS_MUJOCO, reason='MuJoCo not installed (pip install "auxrl[mujoco]")')
@pytest.mark.parametrize(
    "name, env_id, obs_dim", [("halfcheetah", "HalfCheetah-v5", 17), ("hopper", "Hopper-v5", 11)]
)
def test_mujoco_configs_train(tmp_path, name, env_id, obs_dim):
    cfg = load_config(name, ["ppo.total_steps=512", "ppo.num_steps=512", "ppo.update_epochs=1"])
    assert cfg.env.id == env_id and cfg.model.separate_value and cfg.env.normalize_obs
    result = train(cfg, tmp_path / "run", device="cpu", verbose=False)
    assert result.global_step == 512
    agent = load_agent(tmp_path / "run", device="cpu")
    assert agent.observation_space.shape == (obs_dim,)
    action = agent.predict(np.zeros(obs_dim), deterministic=True)
    assert action.shape == agent.action_space.shape and (np.abs(action) <= 1).all()
