"""Per-task torso gradients: PPO's step is CleanRL's, and each balancing rule does what it says."""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from auxrl import checkpoint
from auxrl.balance import Balancer, balance_cosine, balance_norm, balance_pcgrad, cosine
from auxrl.config import BalanceConfig, PPOConfig
from auxrl.configfile import load_config
from auxrl.gradients import LearnerParams, NonFiniteError, check_finite, set_gradients
from auxrl.models.agent import build_agent
from auxrl.ppo.loss import ppo_loss
from auxrl.ppo.rollout import Batch
from auxrl.tasks.base import AuxOutput, AuxTask, Needs, Sequences, TaskContext
from auxrl.trainer import train

OBS = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
ACTIONS = gym.spaces.Discrete(2)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@dataclass
class ScaledConfig:
    scale: float = 1000.0


class ScaledInverseDynamics(AuxTask):
    """A real task (predict a_t from obs_t, obs_t+1) whose loss is multiplied by ``scale``."""

    name = "scaled"
    Config = ScaledConfig
    needs = Needs(sequence_length=1, replay=False)

    def __init__(self, cfg: ScaledConfig, ctx: TaskContext) -> None:
        super().__init__(cfg, ctx)
        self.head = nn.Linear(2 * ctx.feature_dim, int(ctx.action_space.n))

    def loss(self, seq: Sequences, encode) -> AuxOutput:
        features = encode(seq.obs.flatten(0, 1)).reshape(seq.obs.shape[0], -1)
        loss = F.cross_entropy(self.head(features), seq.actions[:, 0].long())
        return AuxOutput(self.cfg.scale * loss)


def _setup(seed: int = 0):
    torch.manual_seed(seed)
    agent = build_agent("mlp", [32, 32], OBS, ACTIONS)
    ctx = TaskContext(OBS, ACTIONS, agent.torso.feature_dim, agent.torso)
    agent.heads["scaled"] = ScaledInverseDynamics(ScaledConfig(), ctx)
    n = 64
    g = torch.Generator().manual_seed(seed)
    batch = Batch(
        obs=torch.randn(n, 4, generator=g),
        actions=torch.randint(0, 2, (n,), generator=g),
        log_probs=torch.full((n,), -0.69),
        values=torch.randn(n, generator=g),
        advantages=torch.randn(n, generator=g),
        returns=torch.randn(n, generator=g),
        valid=torch.ones(n, dtype=torch.bool),
    )
    seq_obs = torch.randn(16, 2, 4, generator=g)
    seq_actions = torch.randint(0, 2, (16, 1), generator=g)
    false = torch.zeros(16, 1, dtype=torch.bool)
    seq = Sequences(seq_obs, seq_actions, torch.zeros(16, 1), false, false, ~false)
    return agent, batch, seq


def _ppo_total(agent, batch, cfg: PPOConfig) -> torch.Tensor:
    dist, values, _ = agent(batch.obs)
    return ppo_loss(
        cfg, batch, agent.policy.log_prob(dist, batch.actions), agent.policy.entropy(dist), values
    ).total


def _grads(params) -> list[torch.Tensor]:
    return [p.grad.clone() for p in params]


@pytest.mark.parametrize("method", ["none", "norm", "cosine", "pcgrad", "olaux"])
def test_ppo_gradients_do_not_depend_on_a_huge_task(method):
    """x1000 task loss: PPO's policy/value gradients after its clip equal those without the task,
    and the torso gets PPO's clipped gradient plus the balanced task gradient, per the rule."""
    cfg = PPOConfig(max_grad_norm=0.5)
    agent, batch, seq = _setup()
    ppo_params = [*agent.torso.parameters(), *agent.policy.parameters(), *agent.value.parameters()]

    # Reference: PPO alone, clipped as CleanRL does.
    agent.zero_grad(set_to_none=True)
    _ppo_total(agent, batch, cfg).backward()
    nn.utils.clip_grad_norm_(ppo_params, cfg.max_grad_norm)
    ref_heads = _grads([*agent.policy.parameters(), *agent.value.parameters()])
    ref_torso = torch.cat([g.flatten() for g in _grads(agent.torso.parameters())])

    agent.zero_grad(set_to_none=True)
    params = LearnerParams.of(agent, ["scaled"])
    task_loss = agent.heads["scaled"].loss(seq, agent.torso).loss
    # The task's own torso gradient (weighted), for checking the rule.
    g_task = torch.cat([g.flatten() for g in torch.autograd.grad(task_loss, list(agent.torso.parameters()))])
    task_loss = agent.heads["scaled"].loss(seq, agent.torso).loss
    balancer = Balancer(BalanceConfig(method=method, relax=1.0))
    out = set_gradients(
        _ppo_total(agent, batch, cfg), {"scaled": task_loss}, params, balancer, cfg.max_grad_norm, 0.5
    )

    for got, want in zip(
        _grads([*agent.policy.parameters(), *agent.value.parameters()]), ref_heads, strict=True
    ):
        torch.testing.assert_close(got, want)
    torso = torch.cat([g.flatten() for g in _grads(agent.torso.parameters())])
    share = torso - ref_torso  # what the task added to the torso
    head_norm = torch.linalg.vector_norm(
        torch.cat([p.grad.flatten() for p in agent.heads["scaled"].parameters()])
    )
    assert float(head_norm) <= 0.5 + 1e-4  # aux.max_grad_norm
    assert g_task.norm() > 100 * ref_torso.norm()  # the task really is huge

    if method == "none":
        torch.testing.assert_close(share, g_task, rtol=1e-4, atol=1e-4)
    elif method == "norm":
        assert share.norm() <= ref_torso.norm() * (1 + 1e-4)
        assert cosine(share, g_task) > 0.9999  # same direction, shrunk
    elif method == "cosine":
        if cosine(ref_torso, g_task) > 0:
            torch.testing.assert_close(share, g_task, rtol=1e-4, atol=1e-4)
        else:
            assert share.abs().max() < 1e-5
    elif method == "pcgrad":
        if torch.dot(ref_torso, g_task) < 0:
            assert abs(float(cosine(share, ref_torso))) < 1e-4  # conflicting part removed
        else:
            torch.testing.assert_close(share, g_task, rtol=1e-4, atol=1e-4)
    elif method == "olaux":
        torch.testing.assert_close(share, g_task, rtol=1e-4, atol=1e-4)  # multiplier starts at 1
    assert float(out["losses/clip_factor"]) < 1.0  # PPO's clip applied to PPO alone
    assert set(out) >= {
        "losses/grad_norm",
        "aux/scaled/grad_cosine",
        "aux/scaled/grad_norm_ratio",
        "aux/scaled/scale",
    }


def test_norm_rule_bounds_and_never_enlarges():
    g_main = torch.tensor([3.0, 4.0])  # norm 5
    big = torch.tensor([0.0, 100.0])
    small = torch.tensor([1.0, 0.0])
    assert balance_norm(g_main, big, relax=0.5).norm() == pytest.approx(2.5)
    torch.testing.assert_close(balance_norm(g_main, small, relax=0.5), small)


def test_cosine_rule_drops_conflict_and_weights_agreement():
    g_main = torch.tensor([1.0, 0.0])
    against = torch.tensor([-1.0, 1.0])
    along = torch.tensor([1.0, 1.0])
    assert balance_cosine(g_main, against).abs().sum() == 0
    torch.testing.assert_close(balance_cosine(g_main, along), along)
    torch.testing.assert_close(balance_cosine(g_main, along, weighted=True), along * (1 / 2**0.5))


def test_pcgrad_projects_out_only_conflicts():
    g_main = torch.tensor([1.0, 0.0, 0.0])
    against = torch.tensor([-2.0, 1.0, 3.0])
    out = balance_pcgrad(g_main, against)
    assert torch.dot(out, g_main) == pytest.approx(0.0, abs=1e-6)
    torch.testing.assert_close(out, torch.tensor([0.0, 1.0, 3.0]))
    along = torch.tensor([2.0, 1.0, 0.0])
    torch.testing.assert_close(balance_pcgrad(g_main, along), along)
    torch.testing.assert_close(balance_pcgrad(g_main, g_main * 0), g_main * 0)  # no NaN on zeros


def test_olaux_raises_helpful_and_lowers_harmful_weights():
    balancer = Balancer(BalanceConfig(method="olaux", olaux_lr=0.5, olaux_every=2, olaux_max=3.0))
    g_main = torch.tensor([1.0, 0.0])
    grads = {
        "helps": torch.tensor([1.0, 0.2]),
        "hurts": torch.tensor([-1.0, 0.2]),
        "neutral": torch.tensor([0.0, 1.0]),
    }
    for update in range(6):
        for _minibatch in range(3):
            balancer(g_main, grads)
        balancer.end_update()
        if update == 0:  # no step before olaux_every updates
            assert {k: float(v) for k, v in balancer.olaux_scale.items()} == {k: 1.0 for k in grads}
    scales = {k: float(v) for k, v in balancer.olaux_scale.items()}
    assert scales["helps"] == pytest.approx(3.0)  # up, to the cap
    assert scales["hurts"] == 0.0  # down, to the floor
    assert scales["neutral"] == pytest.approx(1.0)
    balanced, factors = balancer(g_main, grads)
    assert balanced["hurts"].abs().sum() == 0 and float(factors["helps"]) == pytest.approx(3.0)

    restored = Balancer(balancer.cfg)
    restored.load_state_dict(balancer.state_dict())
    assert {k: float(v) for k, v in restored.olaux_scale.items()} == scales


def test_non_finite_loss_stops_before_the_step():
    with pytest.raises(NonFiniteError, match=r"losses/value_loss is nan .* step 1,024.*ppo.lr"):
        check_finite(
            {"losses/policy_loss": torch.tensor(0.1), "losses/value_loss": torch.tensor(float("nan"))}, 1024
        )
    check_finite({"losses/policy_loss": torch.tensor(0.1)}, 0)


def _cartpole_with_task(steps: int, *extra: str):
    return load_config(
        "cartpole",
        [
            f"ppo.total_steps={steps}",
            "log.checkpoint_every=512",
            "aux.enabled=true",
            f"aux.tasks.scaled.type={__name__}:ScaledInverseDynamics",
            "aux.tasks.scaled.scale=1.0",
            "aux.tasks.scaled.weight=0.5",
            *extra,
        ],
    )


def test_resume_restores_balancer_and_sampler_state(tmp_path, monkeypatch):
    run = tmp_path / "run"
    train(
        _cartpole_with_task(1024, "aux.balance.method=olaux", "aux.balance.olaux_every=1"), run, "cpu", False
    )
    saved = checkpoint.load(run)
    assert saved["aux_rng"] is not None
    scale = saved["balancer"]["olaux_scale"]["scaled"]
    assert scale != 1.0  # the multiplier moved during the run

    loaded: dict = {}
    monkeypatch.setattr(Balancer, "load_state_dict", lambda self, state, device="cpu": loaded.update(state))
    from auxrl.tasks.combine import AuxTasks

    restored: list = []
    monkeypatch.setattr(AuxTasks, "set_rng_state", lambda self, state: restored.append(state) or True)
    cfg = _cartpole_with_task(2048, "aux.balance.method=olaux", "aux.balance.olaux_every=1")
    train(cfg, run, "cpu", False, resume=True)
    assert loaded["olaux_scale"]["scaled"] == scale
    assert len(restored) == 1 and torch.equal(restored[0], saved["aux_rng"])


def test_zero_weight_task_is_not_run(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(ScaledInverseDynamics, "loss", lambda self, seq, encode: calls.append(1))
    train(_cartpole_with_task(512, "aux.tasks.scaled.weight=0"), tmp_path / "run", "cpu", False)
    assert calls == []


def test_task_starting_in_a_later_stage_syncs_its_target_first(tmp_path):
    """next_state joins in stage 1: its EMA target starts from the torso stage 0 trained."""
    from auxrl.tasks.next_state import NextStatePrediction

    synced = []
    original = NextStatePrediction.on_torso_loaded

    def spy(self):
        original(self)
        online = torch.cat([p.detach().flatten() for p in self._online.parameters()])
        target = torch.cat([p.flatten() for p in self.target_torso.parameters()])
        synced.append(bool(torch.equal(online, target)))

    cfg = load_config(
        "curriculum_cartpole",
        [
            "ppo.total_steps=1024",
            "ppo.update_epochs=2",
            "aux.enabled=true",
            "aux.tasks.next_state.enabled=false",
        ],
    )
    cfg.curriculum.stages[0].steps = 512
    cfg.curriculum.stages[0].return_threshold = None
    cfg.curriculum.stages[1].overrides["aux.tasks.next_state.enabled"] = True
    import unittest.mock

    with unittest.mock.patch.object(NextStatePrediction, "on_torso_loaded", spy):
        result = train(cfg, tmp_path / "run", "cpu", False)
    assert result.stage == 1
    assert synced == [True]


def test_aux_every_runs_the_heads_on_every_kth_minibatch(tmp_path, monkeypatch):
    calls = []
    original = ScaledInverseDynamics.loss

    def spy(self, seq, encode):
        calls.append(seq.obs.shape[0])
        return original(self, seq, encode)

    monkeypatch.setattr(ScaledInverseDynamics, "loss", spy)
    # cartpole: 8 envs x 32 steps, 1 minibatch x 20 epochs per update; 2 updates.
    train(_cartpole_with_task(512, "aux.every=3"), tmp_path / "run", "cpu", False)
    assert len(calls) == 2 * 7  # minibatches 0, 3, ..., 18 of each update


def test_resume_keeps_the_aux_every_count(tmp_path, monkeypatch):
    run = tmp_path / "run"
    cfg = _cartpole_with_task(512, "aux.every=6", "log.checkpoint_every=256", "log.keep_checkpoints=5")
    train(cfg, run, "cpu", False)  # 2 updates of 20 minibatches: aux on 0, 6, 12, 18 | 24, 30, 36
    ckpts = run / "checkpoints"
    assert checkpoint.load(ckpts / "step_000000000256.pt")["aux_minibatches_done"] == 20
    (ckpts / "latest").write_text("step_000000000256.pt")
    (ckpts / "step_000000000512.pt").unlink()
    calls = []
    original = ScaledInverseDynamics.loss

    def spy(self, seq, encode):
        calls.append(1)
        return original(self, seq, encode)

    monkeypatch.setattr(ScaledInverseDynamics, "loss", spy)
    train(cfg, run, "cpu", False, resume=True)
    assert len(calls) == 3  # 24, 30, 36 as in the first run (a count restarted at 0 runs 4)
    assert checkpoint.load(run)["aux_minibatches_done"] == 40


def test_only_aux_heads_trainable_with_skipped_minibatches(tmp_path):
    """Frozen torso and PPO heads: minibatches without aux work (aux.every) step nothing."""
    cfg = _cartpole_with_task(512, "aux.every=2", "model.freeze=[torso,policy,value]")
    result = train(cfg, tmp_path / "run", "cpu", False)
    assert result.global_step == 512
