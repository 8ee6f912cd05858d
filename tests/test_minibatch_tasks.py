"""Auxiliary tasks on PPO's own minibatch: the right transitions, PPO's features, no extra pass."""

import gymnasium as gym
import pytest
import torch

from auxrl.models.agent import build_agent
from auxrl.ppo.rollout import RolloutStorage
from auxrl.tasks.combine import PPOSamples


def _storage(steps: int = 4, envs: int = 3) -> RolloutStorage:
    storage = RolloutStorage(steps, envs, (1, 2, 2), torch.uint8, (), torch.long, torch.device("cpu"))
    for t in range(steps):
        for e in range(envs):
            storage.obs[t, e] = 10 * t + e  # each frame says which step and env it is
            storage.rewards[t, e] = 100 * t + e
            storage.actions[t, e] = t
    storage.next_obs[:] = torch.arange(envs).view(envs, 1, 1, 1) + 200
    storage.terminated[2, 1] = True
    storage.valid[3, 1] = False  # the reset step after that end
    return storage


def test_ppo_samples_are_one_transition_each_with_the_following_observation():
    storage = _storage()
    index = torch.tensor([0, 5, 7, 11, 10])  # (t, env): (0,0) (1,2) (2,1) (3,2) (3,1)
    features = torch.randn(5, 8)
    seq = PPOSamples(storage, index, features).sequences()
    assert seq.obs.shape == (5, 2, 1, 2, 2) and seq.actions.shape == (5, 1)
    assert seq.obs[:, 0, 0, 0, 0].tolist() == [0, 12, 21, 32, 31]
    assert seq.obs[:, 1, 0, 0, 0].tolist() == [10, 22, 31, 202, 201]  # last step: next_obs
    assert seq.rewards[:, 0].tolist() == [0, 102, 201, 302, 301]
    assert seq.features is features
    # (2, 1) ends its episode (the transition is real); (3, 1) is the reset step after it.
    assert seq.in_episode[:, 0].tolist() == [True, True, True, True, False]
    assert seq.first(2).obs.shape[0] == 2 and seq.first(2).features.shape == (2, 8)


def test_ppo_heads_on_a_split_pass_equal_one_pass():
    """The update's torso pass in two parts (the tasks' samples first, as a tensor of their own)
    gives PPO the same policy and value as one pass."""
    torch.manual_seed(0)
    space = gym.spaces.Box(0, 255, (4, 84, 84), "uint8")
    agent = build_agent("nature_cnn", [], space, gym.spaces.Discrete(4))
    obs = torch.randint(0, 255, (12, 4, 84, 84), dtype=torch.uint8)
    pi, value, features = agent(obs)
    first = agent.torso(obs[:5])
    pi2, value2 = agent.ppo_heads(torch.cat([first, agent.torso(obs[5:])]), obs)
    assert torch.allclose(first, features[:5], atol=1e-5) and torch.allclose(value, value2, atol=1e-5)
    assert torch.allclose(pi.logits, pi2.logits, atol=1e-5)


@pytest.mark.slow
def test_an_update_with_minibatch_tasks_runs_no_extra_torso_pass(monkeypatch):
    """reward_prediction and next_state on PPO's minibatch: per minibatch the torso runs on the
    tasks' samples and on the rest, and nowhere else (next_state's target is its own EMA copy)."""
    from auxrl.balance import Balancer
    from auxrl.build import build_model
    from auxrl.configfile import load_config
    from auxrl.curriculum import plan_stages
    from auxrl.learner import Learner
    from auxrl.tasks.combine import AuxTasks

    torch.manual_seed(0)
    cfg = load_config(
        "atari100k",
        [
            "aux.enabled=true",
            "aux.tasks.pixel_control.enabled=false",
            "ppo.num_steps=8",
            "env.num_envs=4",
            "aux.batch_size=6",
        ],
    )
    space = gym.spaces.Box(0, 255, (4, 84, 84), "uint8")
    agent = build_model(cfg, plan_stages(cfg), space, gym.spaces.Discrete(4))
    storage = RolloutStorage(8, 4, (4, 84, 84), torch.uint8, (), torch.long, torch.device("cpu"))
    storage.obs.random_(0, 256)
    storage.next_obs.random_(0, 256)
    storage.rewards[::3] = 1.0
    tasks = {n: h for n, h in agent.heads.items() if n in ("reward_prediction", "next_state")}
    assert all(t.needs.minibatch for t in tasks.values())
    aux = AuxTasks(tasks, cfg.aux, storage, seed=0)
    aux.add_rollout(storage)
    batches: list[int] = []
    agent.torso.register_forward_hook(lambda module, args, out: batches.append(args[0].shape[0]))
    optimizer = torch.optim.Adam(agent.parameters(), lr=1e-4)
    weights = {n: 1.0 for n in tasks}
    learner = Learner(agent, optimizer, Balancer(cfg.aux.balance), list(agent.parameters()))
    out = learner.update(storage, cfg.ppo, cfg.aux, aux, weights, step=32)
    minibatches = cfg.ppo.update_epochs * cfg.ppo.num_minibatches
    assert batches == [6, 32 // cfg.ppo.num_minibatches - 6] * minibatches
    assert torch.isfinite(out["aux/reward_prediction/loss"]) and torch.isfinite(out["aux/next_state/loss"])
