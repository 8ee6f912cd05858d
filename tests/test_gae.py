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
