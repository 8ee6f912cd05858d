"""The learner's fast paths give the results of the plain ones, up to float rounding."""

from __future__ import annotations

import pytest
import torch

from auxrl.build import make_optimizer
from auxrl.models.torsos import NatureCNN
from auxrl.ppo.rollout import RolloutStorage
from auxrl.tasks.replay import Replay

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _storage(num_steps: int = 8, num_envs: int = 3) -> RolloutStorage:
    return RolloutStorage(num_steps, num_envs, (2,), torch.int64, (), torch.long, torch.device("cpu"))


def test_replay_windows_match_the_stream_they_came_from():
    """Obs encode (env, global step): every window, including the ones ending in the obs after the
    newest step (the spare row), reads that env's consecutive steps after several wrap-arounds."""
    storage = _storage()
    replay = Replay(20, storage)  # 20 steps per env: wraps around every few rollouts
    step = 0
    for _rollout in range(7):
        for t in range(storage.num_steps):
            for e in range(storage.num_envs):
                storage.obs[t, e] = torch.tensor([e, step + t])
                storage.actions[t, e] = step + t
        step += storage.num_steps
        storage.next_obs[:] = torch.stack([torch.tensor([e, step]) for e in range(storage.num_envs)])
        replay.add(storage)
    gen = torch.Generator().manual_seed(0)
    start, env = replay.draw(2000, 4, generator=gen)
    seq = replay.gather(start, env, 4)
    oldest = step - replay.size
    expected = oldest + start.unsqueeze(1) + torch.arange(5)
    assert torch.equal(seq.obs[..., 1], expected)
    assert torch.equal(seq.obs[..., 0], env.unsqueeze(1).expand(-1, 5))
    assert torch.equal(seq.actions, expected[:, :4])
    assert int(seq.obs[..., 1].max()) == step  # windows do reach the obs after the newest step


def test_one_draw_per_update_equals_one_draw_per_minibatch():
    storage = _storage()
    replay = Replay(64, storage)
    for _ in range(4):
        replay.add(storage)
    once = replay.draw(16 * 5, 3, generator=torch.Generator().manual_seed(3))
    gen = torch.Generator().manual_seed(3)
    parts = [replay.draw(16, 3, generator=gen) for _ in range(5)]
    assert torch.equal(once[0], torch.cat([p[0] for p in parts]))
    assert torch.equal(once[1], torch.cat([p[1] for p in parts]))


@pytest.mark.parametrize("fraction", [0.0, 0.25, 0.5, 1.0])
def test_skewed_draw_hits_the_requested_share_and_stays_uniform_within_groups(fraction):
    storage = _storage(num_steps=40, num_envs=2)
    storage.valid[:] = True
    storage.rewards[::8, 0] = 1.0  # 5 rewarding steps of 80
    replay = Replay(40, storage)
    replay.add(storage)
    start, env = replay.draw(
        40_000, 1, rewarding_fraction=fraction, generator=torch.Generator().manual_seed(1)
    )
    seq = replay.gather(start, env, 1)
    rewarding = seq.rewards[:, 0] != 0
    assert float(rewarding.float().mean()) == pytest.approx(fraction, abs=0.01)
    if 0 < fraction:
        counts = torch.bincount(start[rewarding], minlength=40)[::8]  # each rewarding step alike
        assert counts.min() > 0.8 * counts.float().mean()


def test_frame_scaling_matches_divide_and_leaves_input_alone():
    torch.manual_seed(0)
    net = NatureCNN(4)
    obs = torch.randint(0, 256, (5, 4, 84, 84), dtype=torch.uint8)
    reference = net.fc(net.convs(obs.float() / 255.0))
    torch.testing.assert_close(net(obs), reference, rtol=1e-5, atol=1e-6)
    floats = obs.float()
    net(floats)
    assert torch.equal(floats, obs.float())  # float input is not scaled in place


def test_fused_adam_steps_like_the_default_adam():
    torch.manual_seed(0)
    a = torch.nn.Linear(16, 4)
    b = torch.nn.Linear(16, 4)
    b.load_state_dict(a.state_dict())
    fast = make_optimizer(list(a.parameters()), 1e-2, 1e-5)
    plain = torch.optim.Adam(b.parameters(), lr=1e-2, eps=1e-5, foreach=False)
    for i in range(5):
        x = torch.randn(8, 16, generator=torch.Generator().manual_seed(i))
        for net, opt in ((a, fast), (b, plain)):
            opt.zero_grad()
            net(x).square().mean().backward()
            opt.step()
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    plain.load_state_dict(fast.state_dict())  # checkpoints move between the two


def test_hot_path_benchmark_times_every_change_against_a_git_ref(tmp_path, monkeypatch):
    # The benchmark itself (benchmarks/hot_path.py), on small shapes, with HEAD as "before":
    # every component gets a before and an after row, and the report is written.
    import json
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import hot_path

    overrides = ["env.num_envs=2", "ppo.num_steps=16", "ppo.num_minibatches=2", "aux.replay_size=64"]
    argv = ["--baseline-ref", "HEAD", "--repeats", "1", "--warmup", "0", "--no-compile"]
    assert hot_path.main([*argv, "--out-dir", str(tmp_path), *overrides]) == 0
    (report,) = tmp_path.glob("hot-path-*.json")
    rows = json.loads(report.read_text())["rows"]
    by = {(r["component"], r["variant"]) for r in rows}
    for component in ("adam step", "frame scaling", "replay windows per update"):
        assert (component, "before") in by and (component, "after") in by
    assert all(r["ms"] > 0 for r in rows)
