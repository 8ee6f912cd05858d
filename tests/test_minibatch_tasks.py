"""Auxiliary tasks on PPO's own minibatch: the right transitions, PPO's features, no extra pass."""

import gymnasium as gym
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


def test_split_forward_equals_one_pass_and_confines_the_backward():
    torch.manual_seed(0)
    space = gym.spaces.Box(0, 255, (4, 84, 84), "uint8")
    agent = build_agent("nature_cnn", [], space, gym.spaces.Discrete(4))
    obs = torch.randint(0, 255, (12, 4, 84, 84), dtype=torch.uint8)
    pi, value, features = agent(obs)
    pi2, value2, features2 = agent(obs, split=5)
    assert torch.allclose(features, features2, atol=1e-5) and torch.allclose(value, value2, atol=1e-5)
    assert torch.allclose(pi.logits, pi2.logits, atol=1e-5)
    # A loss on the first 5 features only: the same torso gradient as encoding those 5 alone.
    first = list(agent.torso.parameters())
    grads = torch.autograd.grad(features2[:5].square().sum(), first)
    alone = torch.autograd.grad(agent.torso(obs[:5]).square().sum(), first)
    for g, a in zip(grads, alone, strict=True):
        assert torch.allclose(g, a, rtol=1e-4, atol=1e-6)
