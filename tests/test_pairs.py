"""Needs.gap: a task gets pairs of observations at a random gap, two frames each (not the whole
window), with whether both are in one episode."""

from __future__ import annotations

import pytest
import torch

from auxrl.config import AuxConfig, build
from auxrl.ppo.rollout import RolloutStorage
from auxrl.tasks.base import AuxOutput, AuxTask, Needs, Pairs
from auxrl.tasks.combine import AuxTasks

STEPS, ENVS = 16, 3


class Recorder(AuxTask):
    """Keeps what it was given; its loss is a plain function of the encoded pair."""

    name = "recorder"
    needs = Needs(gap=(2, 5))

    def __init__(self) -> None:
        super().__init__(None, None)  # type: ignore[arg-type]
        self.seen: list[Pairs] = []

    def loss(self, seq, encode) -> AuxOutput:
        assert isinstance(seq, Pairs)
        self.seen.append(seq)
        return AuxOutput(encode(seq.obs[:, 0].float()).sum() * 0.0)


def _storage() -> RolloutStorage:
    """obs of step t of env e: 100 t + e (so a pair tells its gap and env); env 1 ends an
    episode at step 6, env 2 has a reset step (not a transition) at step 9."""
    st = RolloutStorage(STEPS, ENVS, (1,), torch.float32, (), torch.long, torch.device("cpu"))
    t = torch.arange(STEPS).view(-1, 1).float()
    st.obs.copy_((100 * t + torch.arange(ENVS)).unsqueeze(-1))
    st.next_obs.copy_((100 * STEPS + torch.arange(ENVS)).float().unsqueeze(-1))
    st.terminated[6, 1] = True
    st.valid[9, 2] = False
    st.truncated[8, 2] = True
    return st


def _brute_force_same_episode(st: RolloutStorage, start: int, env: int, gap: int) -> bool:
    for s in range(start, start + gap):
        if not st.valid[s, env]:
            return False
        if s < start + gap - 1 and (st.terminated[s, env] or st.truncated[s, env]):
            return False
    return True


def test_pairs_are_two_frames_gap_apart_with_the_episode_flag():
    st = _storage()
    task = Recorder()
    aux_cfg = build(AuxConfig, {"batch_size": 64, "tasks": {"recorder": {"type": "x"}}})
    aux = AuxTasks({"recorder": task}, aux_cfg, st, seed=0)
    aux.add_rollout(st)
    aux.draw(2)
    aux.losses(lambda x: x)
    aux.losses(lambda x: x)
    pairs = task.seen
    assert len(pairs) == 2
    gaps = torch.cat([p.gap for p in pairs])
    assert pairs[0].obs.shape == (64, 2, 1) and pairs[0].obs.dtype == torch.float32
    assert gaps.min() >= 2 and gaps.max() <= 5
    assert set(gaps.tolist()) == {2, 3, 4, 5}  # uniform over [lo, hi]: every gap drawn
    for p in pairs:
        first, second = p.obs[:, 0, 0], p.obs[:, 1, 0]
        env, start = (first % 100).long(), (first // 100).long()
        assert torch.equal(second % 100, first % 100)  # the same env
        assert torch.equal(((second - first) // 100).long(), p.gap)  # gap steps later
        expected = [
            _brute_force_same_episode(st, int(s), int(e), int(g))
            for s, e, g in zip(start, env, p.gap, strict=True)
        ]
        assert p.same_episode.tolist() == expected
    assert any(not p.same_episode.all() for p in pairs)  # the episode ends were sampled


def test_a_gap_beyond_a_rollout_is_refused_at_start_up(monkeypatch):
    import auxrl.build
    from auxrl.configfile import load_config
    from auxrl.curriculum import plan_stages

    class Far(AuxTask):
        needs = Needs(gap=(1, 40))

    far = Far(None, None)  # type: ignore[arg-type]
    monkeypatch.setattr(auxrl.build, "stage_tasks", lambda agent, stage: {"far": far})
    stages = plan_stages(load_config("cartpole", ["ppo.num_steps=32"]))
    with pytest.raises(ValueError, match="needs windows of 40 steps"):
        auxrl.build.check_task_windows(None, stages)  # type: ignore[arg-type]


def test_needs_gap_must_be_ordered():
    with pytest.raises(ValueError, match="1 <= lo <= hi"):
        Needs(gap=(3, 2))
