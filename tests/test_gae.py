"""GAE against a hand-computed rollout with a termination, a truncation and a reset step."""

import torch

from auxrl.ppo.rollout import compute_gae


def test_gae_hand_computed_truncation_and_termination():
    g, lam = 0.9, 0.5
    # One env, 6 steps (NEXT_STEP autoreset):
    # t0: r=1, normal            -> obs1
    # t1: r=2, truncated         -> obs2 is the final obs of that episode (V=5, bootstrapped)
    # t2: reset step (invalid)   -> obs3 is a reset obs
    # t3: r=3, terminated        -> obs4 is terminal (no bootstrap)
    # t4: reset step (invalid)
    # t5: r=1, normal            -> bootstrap from next_value
    rewards = torch.tensor([1.0, 2.0, 0.0, 3.0, 0.0, 1.0]).unsqueeze(1)
    values = torch.tensor([0.5, 1.0, 5.0, 2.0, 7.0, 1.5]).unsqueeze(1)
    terminated = torch.tensor([0, 0, 0, 1, 0, 0]).bool().unsqueeze(1)
    truncated = torch.tensor([0, 1, 0, 0, 0, 0]).bool().unsqueeze(1)
    valid = torch.tensor([1, 1, 0, 1, 0, 1]).bool().unsqueeze(1)
    next_value = torch.tensor([4.0])

    adv, ret = compute_gae(rewards, values, terminated, truncated, valid, next_value, g, lam)

    d5 = 1 + g * 4.0 - 1.5  # bootstraps from the value after the rollout
    d3 = 3 - 2.0  # terminated: no bootstrap
    d1 = 2 + g * 5.0 - 1.0  # truncated: bootstraps from V(final obs) = values[2]
    d0 = 1 + g * 1.0 - 0.5
    expected = torch.tensor([d0 + g * lam * d1, d1, 0.0, d3, 0.0, d5])
    assert torch.allclose(adv.squeeze(1), expected, atol=1e-6)
    # Returns are advantages + values on real transitions, zero on reset steps.
    expected_ret = torch.where(valid.squeeze(1), expected + values.squeeze(1), torch.zeros(6))
    assert torch.allclose(ret.squeeze(1), expected_ret, atol=1e-6)


def test_gae_no_leak_across_envs_and_lambda_one_is_discounted_return():
    # lambda = 1 and no dones: advantage + value = discounted return bootstrapped at the end.
    rewards = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 10.0]])
    values = torch.zeros(3, 2)
    flags = torch.zeros(3, 2, dtype=torch.bool)
    adv, ret = compute_gae(rewards, values, flags, flags, ~flags, torch.tensor([2.0, 0.0]), 0.5, 1.0)
    assert torch.allclose(
        ret[:, 0], torch.tensor([1 + 0.5 + 0.25 + 0.125 * 2, 1 + 0.5 + 0.25 * 2, 1 + 0.5 * 2])
    )
    assert torch.allclose(ret[:, 1], torch.tensor([2.5, 5.0, 10.0]))


def _gae_reference(rewards, values, terminated, truncated, valid, next_value, gamma, gae_lambda):
    """The plain loop compute_gae had (four kernels a step): the results must not change."""
    next_values = torch.cat([values[1:], next_value.unsqueeze(0)], dim=0)
    not_done = 1.0 - torch.maximum(terminated.float(), truncated.float())
    deltas = rewards + gamma * next_values * (1.0 - terminated.float()) - values
    advantages = torch.zeros_like(rewards)
    last = torch.zeros_like(next_value)
    for t in reversed(range(rewards.shape[0])):
        last = deltas[t] + gamma * gae_lambda * not_done[t] * last
        advantages[t] = last
    advantages = advantages * valid.float()
    return advantages, (advantages + values) * valid.float()


def test_gae_is_bit_identical_to_the_plain_loop():
    g = torch.Generator().manual_seed(0)
    for steps, envs in [(128, 8), (1, 3), (2048, 1), (16, 64)]:
        rewards = torch.randn(steps, envs, generator=g) * 10
        values = torch.randn(steps, envs, generator=g) * 20
        terminated = torch.rand(steps, envs, generator=g) < 0.02
        truncated = torch.rand(steps, envs, generator=g) < 0.01
        valid = torch.rand(steps, envs, generator=g) > 0.01
        next_value = torch.randn(envs, generator=g)
        args = (rewards, values, terminated, truncated, valid, next_value, 0.99, 0.95)
        for got, expected in zip(compute_gae(*args), _gae_reference(*args), strict=True):
            assert torch.equal(got, expected)
