"""PopArt (auxrl/models/popart.py): outputs preserved when the statistics move, targets normalised
per task, one task's targets leave the others alone."""

from __future__ import annotations

import torch

from auxrl.models.popart import PopArt


def _layer(tasks: int = 3, beta: float = 0.1) -> PopArt:
    torch.manual_seed(0)
    return PopArt(8, tasks, beta=beta)


def test_an_update_preserves_every_unnormalised_output():
    layer = _layer()
    h = torch.randn(64, 8)
    task = torch.arange(64) % 3
    layer.update(torch.randn(64) * 5 + 2, task)  # statistics away from (0, 1) first
    before = layer.value(h, task)
    normalized_before = layer(h, task)
    # Targets on very different scales per task: the statistics move a lot.
    targets = torch.where(task == 0, 1000.0, torch.where(task == 1, -3.0, 0.01)) + torch.randn(64)
    layer.update(targets, task)
    after = layer.value(h, task)
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-4)
    assert not torch.allclose(layer(h, task), normalized_before)  # the normalised outputs did move


def test_targets_are_normalised_per_task():
    layer = _layer(beta=0.05)
    scales = torch.tensor([1000.0, 1.0, 0.01])
    offsets = torch.tensor([500.0, -2.0, 0.3])
    gen = torch.Generator().manual_seed(1)
    for _ in range(300):
        task = torch.randint(0, 3, (256,), generator=gen)
        targets = torch.randn(256, generator=gen) * scales[task] + offsets[task]
        layer.update(targets, task)
    assert torch.all((layer.mu - offsets).abs() < 0.1 * scales)  # EMA noise: ~0.02 sigma
    torch.testing.assert_close(layer.sigma, scales, rtol=0.1, atol=0.0)
    task = torch.randint(0, 3, (4096,), generator=gen)
    normalized = layer.normalize(torch.randn(4096, generator=gen) * scales[task] + offsets[task], task)
    for i in range(3):
        z = normalized[task == i]
        assert abs(float(z.mean())) < 0.1 and abs(float(z.std()) - 1.0) < 0.1
    # normalize and unnormalize are inverse
    x = torch.randn(32) * 100
    t = torch.arange(32) % 3
    torch.testing.assert_close(layer.unnormalize(layer.normalize(x, t), t), x, rtol=1e-5, atol=1e-3)


def test_a_task_without_targets_keeps_its_statistics_and_outputs():
    layer = _layer()
    layer.update(torch.tensor([1.0, 2.0, 3.0, 10.0, 20.0, 30.0]), torch.tensor([0, 0, 0, 1, 1, 1]))
    mu, sigma, weight = layer.mu.clone(), layer.sigma.clone(), layer.linear.weight.detach().clone()
    layer.update(torch.full((16,), 50.0), torch.zeros(16, dtype=torch.long))  # task 0 only
    assert layer.mu[0] != mu[0]
    torch.testing.assert_close(layer.mu[1:], mu[1:])
    torch.testing.assert_close(layer.sigma[1:], sigma[1:])
    torch.testing.assert_close(layer.linear.weight[1:], weight[1:])


def test_the_first_batch_sets_the_statistics_and_masked_targets_count_for_nothing():
    layer = _layer(tasks=1, beta=3e-4)
    targets = torch.tensor([2.0, 4.0, 6.0, 1e6])
    layer.update(targets, mask=torch.tensor([1.0, 1.0, 1.0, 0.0]))  # debiased: the mean outright
    torch.testing.assert_close(layer.mu, torch.tensor([4.0]))
    torch.testing.assert_close(layer.sigma, torch.tensor([(8.0 / 3.0) ** 0.5]))


def test_the_normalised_loss_gives_the_torso_comparable_gradients_across_reward_scales():
    """Why it exists: without PopArt a task with returns 1000x larger sends a 1000x larger value
    gradient into the shared torso; with it, both are of the same order."""
    torch.manual_seed(0)
    h = torch.randn(128, 8, requires_grad=True)
    task = torch.arange(128) % 2
    returns = torch.where(task == 0, 1000.0, 1.0) * (1 + 0.1 * torch.randn(128))
    layer = PopArt(8, 2, beta=1.0)
    layer.update(returns, task)
    with torch.no_grad():  # a freshly initialised layer: both tasks' rows alike
        layer.linear.weight.copy_(0.1 * torch.randn(1, 8).expand(2, 8))
        layer.linear.bias.zero_()

    def ratio(loss: torch.Tensor) -> float:
        norms = [torch.autograd.grad(loss[task == i].mean(), h, retain_graph=True)[0].norm() for i in (0, 1)]
        return float(norms[0] / norms[1])

    normalized = ratio((layer(h, task) - layer.normalize(returns, task)) ** 2)
    plain = ratio((layer.linear(h).gather(1, task.unsqueeze(1)).squeeze(1) - returns) ** 2)
    assert 0.2 < normalized < 5.0
    assert plain > 100.0
