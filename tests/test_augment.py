"""Image augmentation (auxrl/augment.py), RAD's ppo.augment, and the DrAC augment_consistency task."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from auxrl import augment as aug
from auxrl import checkpoint
from auxrl.balance import Balancer
from auxrl.cli import main
from auxrl.config import AuxConfig, BalanceConfig, ConfigError, PPOConfig, build
from auxrl.configfile import load_config
from auxrl.gradients import LearnerParams, set_gradients
from auxrl.learner import Learner
from auxrl.models.agent import build_agent
from auxrl.models.torsos import scale_frames
from auxrl.ppo.loss import ppo_loss
from auxrl.ppo.rollout import RolloutStorage
from auxrl.tasks.augment_consistency import AugmentConsistency
from auxrl.tasks.base import PPOHeads, Sequences, TaskContext, TaskMismatch
from auxrl.tasks.combine import AuxTasks
from auxrl.trainer import train

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

H = W = 16
FRAMES = 4
SMALL_IMAGES = gym.spaces.Box(0, 255, (FRAMES, 44, 44), np.uint8)  # NatureCNN's smallest-ish input


def coded_images(n: int, frames: int = FRAMES) -> torch.Tensor:
    """[n, frames, 16, 16] uint8 where pixel (y, x) of frame k is (16 x + y + 64 k) mod 256: every
    pixel of a frame tells where it came from."""
    y, x = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    frame = 16 * x + y
    stack = torch.stack([(frame + 64 * k) % 256 for k in range(frames)])
    return stack.to(torch.uint8).expand(n, frames, H, W).clone()


def shifts_of(out: torch.Tensor) -> torch.Tensor:
    """(dy, dx) of each frame of shifted coded images, read off the centre pixel: [..., C, 2]."""
    k = torch.arange(out.shape[-3])
    centre = (out[..., H // 2, W // 2].long() - 64 * k) % 256  # = 16 (8 + dx) + (8 + dy)
    return torch.stack([centre % 16 - H // 2, centre // 16 - W // 2], -1)


# --------------------------------------------------------------------------------------------
# random_shift / intensity
# --------------------------------------------------------------------------------------------


def test_shift_keeps_shape_and_dtype_moves_at_most_4px_and_a_stack_shares_its_shift():
    images = coded_images(2000)
    out = aug.random_shift(images, generator=torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.dtype == torch.uint8
    shifts = shifts_of(out)  # [n, C, 2]
    assert (shifts == shifts[:, :1]).all()  # the 4 frames of a stack: one shift
    assert shifts.abs().max() == aug.PAD
    # Every one of the 9 x 9 shifts occurs (2000 draws), and no other.
    assert len({tuple(s) for s in shifts[:, 0].tolist()}) == (2 * aug.PAD + 1) ** 2


def test_shift_is_replicate_padding_then_crop_on_a_constructed_image():
    images = coded_images(300)
    out = aug.random_shift(images, generator=torch.Generator().manual_seed(1))
    shifts = shifts_of(out)[:, 0]
    padded = F.pad(images.float(), (aug.PAD,) * 4, mode="replicate")
    for i, (dy, dx) in enumerate(shifts.tolist()):
        top, left = aug.PAD + dy, aug.PAD + dx
        assert torch.equal(out[i].float(), padded[i, :, top : top + H, left : left + W]), (dy, dx)
    # The border by hand: a shift to the right repeats the left edge column.
    i = int(torch.nonzero(shifts[:, 1] == -aug.PAD)[0])
    dy = int(shifts[i, 0])
    rows = (torch.arange(H) + dy).clamp(0, H - 1)
    for col in range(aug.PAD + 1):
        assert torch.equal(out[i, 0, :, col], images[i, 0, rows, 0])


def test_shift_of_sequences_of_stacks_shifts_each_stack_and_is_seeded():
    images = coded_images(64).reshape(8, 8, FRAMES, H, W)  # [B, T, C, H, W]
    first = aug.random_shift(images, generator=torch.Generator().manual_seed(7))
    assert first.shape == images.shape and first.dtype == torch.uint8
    shifts = shifts_of(first)  # [B, T, C, 2]
    assert (shifts == shifts[..., :1, :]).all()
    assert len({tuple(s) for s in shifts[..., 0, :].reshape(-1, 2).tolist()}) > 10  # each stack its own
    again = aug.random_shift(images, generator=torch.Generator().manual_seed(7))
    other = aug.random_shift(images, generator=torch.Generator().manual_seed(8))
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_intensity_noise_is_per_image_within_its_bounds_and_scales_like_uint8_frames():
    images = torch.randint(1, 256, (4000, FRAMES, 8, 8), dtype=torch.uint8)
    out = aug.intensity(images, generator=torch.Generator().manual_seed(0))
    assert out.dtype == torch.float32 and out.shape == images.shape
    factor = out / images.float()
    per_image = factor[:, :1, :1, :1]
    assert torch.allclose(factor, per_image.expand_as(factor))  # one factor per stack
    low, high = 1 - 2 * aug.INTENSITY_SCALE, 1 + 2 * aug.INTENSITY_SCALE
    assert per_image.min() >= low - 1e-6 and per_image.max() <= high + 1e-6
    assert (per_image - low).abs().min() < 1e-6 and (per_image - high).abs().min() < 1e-6  # clipped at +-2
    assert out.max() > 255  # not clipped back to the uint8 range: SPR's x * (1 + noise) on [0, 1]
    # The torso's scaling then gives SPR's input: x / 255 * factor.
    assert torch.allclose(scale_frames(out), images.float() / 255 * per_image)
    again = aug.intensity(images, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, again)


def test_augment_kinds_and_errors():
    images = coded_images(3)
    assert aug.augment(images, "none") is images
    g = torch.Generator().manual_seed(3)
    assert aug.augment(images, "shift", g).dtype == torch.uint8
    assert aug.augment(images, "shift_intensity", g).dtype == torch.float32
    with pytest.raises(ValueError, match="unknown augmentation"):
        aug.augment(images, "rotate", g)
    with pytest.raises(ValueError, match="image observations"):
        aug.random_shift(torch.zeros(8, 4))


# --------------------------------------------------------------------------------------------
# augment_consistency
# --------------------------------------------------------------------------------------------


def make_agent(action_space: gym.Space, seed: int = 0):
    torch.manual_seed(seed)
    agent = build_agent("nature_cnn", [64], SMALL_IMAGES, action_space)
    ctx = TaskContext(
        SMALL_IMAGES, action_space, agent.torso.feature_dim, agent.torso, PPOHeads(agent.policy, agent.value)
    )
    AugmentConsistency.check(ctx)
    return agent, ctx


def image_sequences(obs: torch.Tensor, generator: torch.Generator | None = None) -> Sequences:
    batch = obs.shape[0]
    false = torch.zeros(batch, 1, dtype=torch.bool)
    return Sequences(
        obs=torch.stack([obs, obs], 1),
        actions=torch.zeros(batch, 1, dtype=torch.long),
        rewards=torch.zeros(batch, 1),
        terminated=false,
        truncated=false,
        valid=~false,
        generator=generator,
    )


@pytest.mark.parametrize("space", [gym.spaces.Discrete(6), gym.spaces.Box(-1, 1, (3,), np.float32)])
def test_consistency_loss_is_zero_for_identical_views_positive_otherwise_and_trains_torso_and_heads(space):
    agent, ctx = make_agent(space)
    task = AugmentConsistency(build(AugmentConsistency.Config, {}, "aux.tasks.augment_consistency"), ctx)
    # Constant frames: a replicate-padded shift of a constant image is the image itself.
    flat = torch.full((8, *SMALL_IMAGES.shape), 90, dtype=torch.uint8)
    out = task.loss(image_sequences(flat, torch.Generator().manual_seed(0)), agent.torso)
    assert out.loss.item() == 0.0 and out.metrics["policy_kl"] == 0.0 and out.metrics["value_gap"] == 0.0

    g = torch.Generator().manual_seed(1)
    frames = torch.randint(0, 256, (8, *SMALL_IMAGES.shape), dtype=torch.uint8, generator=g)
    # The policy's logits start near 0 (std 0.01 init): larger heads put the KL well above rounding.
    with torch.no_grad():
        for p in [*agent.policy.parameters(), *agent.value.parameters()]:
            p.mul_(50.0)
    out = task.loss(image_sequences(frames, torch.Generator().manual_seed(2)), agent.torso)
    assert out.loss.item() > 0 and out.metrics["policy_kl"] > 0 and out.metrics["value_gap"] > 0
    torso, heads = (
        list(agent.torso.parameters()),
        list(agent.policy.parameters()) + list(agent.value.parameters()),
    )
    grads = torch.autograd.grad(out.loss, torso + heads, allow_unused=True)
    assert all(gr is not None and gr.abs().sum() > 0 for gr in grads[: len(torso)])
    assert all(gr is not None and gr.abs().sum() > 0 for gr in grads[len(torso) :])

    # The same seed gives the same loss (the draws come from the Sequences' generator).
    again = task.loss(image_sequences(frames, torch.Generator().manual_seed(2)), agent.torso)
    assert again.loss.item() == out.loss.item()


def test_consistency_task_owns_no_parameters_and_the_learner_gives_its_gradient_to_the_ppo_heads():
    agent, ctx = make_agent(gym.spaces.Discrete(6))
    keys, n_params = set(agent.state_dict()), len(list(agent.parameters()))
    agent.heads["augment_consistency"] = AugmentConsistency(
        build(AugmentConsistency.Config, {"augment": "shift_intensity"}, "x"), ctx
    )
    assert set(agent.state_dict()) == keys and len(list(agent.parameters())) == n_params  # nothing twice
    params = LearnerParams.of(agent, ["augment_consistency"])
    owned = {id(p) for p in params.tasks["augment_consistency"]}
    assert owned == {id(p) for p in params.ppo_heads} and not owned & {id(p) for p in params.torso}

    g = torch.Generator().manual_seed(4)
    frames = torch.randint(0, 256, (8, *SMALL_IMAGES.shape), dtype=torch.uint8, generator=g)
    seq = image_sequences(frames, torch.Generator().manual_seed(5))
    cfg = PPOConfig(max_grad_norm=1e9)
    dist, values, _ = agent(frames)
    batch = RolloutStorage(1, 8, SMALL_IMAGES.shape, torch.uint8, (), torch.long, torch.device("cpu"))
    batch.obs[0] = frames
    batch.finish(torch.zeros(8), 0.99, 0.95)
    mb = next(batch.minibatches(1))
    ppo_total = ppo_loss(
        cfg, mb, agent.policy.log_prob(dist, mb.actions), agent.policy.entropy(dist), values
    ).total
    task_loss = 0.1 * agent.heads["augment_consistency"].loss(seq, agent.torso).loss
    heads = params.ppo_heads
    g_ppo = torch.autograd.grad(ppo_total, heads, retain_graph=True, allow_unused=True)
    g_task = torch.autograd.grad(task_loss, heads, retain_graph=True, allow_unused=True)
    set_gradients(
        ppo_total,
        {"augment_consistency": task_loss},
        params,
        Balancer(BalanceConfig(method="none")),
        1e9,
        None,
    )
    for p, a, b in zip(heads, g_ppo, g_task, strict=True):
        expected = (a if a is not None else 0) + (b if b is not None else 0)
        assert torch.allclose(p.grad, expected, atol=1e-7)
    assert any(b is not None and b.abs().sum() > 0 for b in g_task)


def test_the_learner_hands_tasks_its_seeded_generator_and_the_current_rollout():
    agent, ctx = make_agent(gym.spaces.Discrete(6))
    task = AugmentConsistency(build(AugmentConsistency.Config, {}, "x"), ctx)
    st = _storage()
    aux_cfg = build(AuxConfig, {"batch_size": 4, "tasks": {"augment_consistency": {}}})
    aux = AuxTasks({"augment_consistency": task}, aux_cfg, st, seed=0)
    aux.add_rollout(st)
    seen = []
    real = task.loss
    task.loss = lambda seq, encode: seen.append(seq) or real(seq, encode)
    aux.draw(1)
    out = aux.losses(agent.torso)["augment_consistency"]
    assert seen[0].generator is aux.generator and out.loss.item() > 0
    rollout = st.obs.flatten(0, 1)
    for frame in seen[0].obs[:, 0]:  # Needs(replay=False): frames of the current rollout
        assert (rollout == frame).flatten(1).all(1).any()


def test_consistency_task_refuses_vector_observations_and_a_context_without_heads():
    agent, ctx = make_agent(gym.spaces.Discrete(6))
    vector = gym.spaces.Box(-1.0, 1.0, (8,), np.float32)
    with pytest.raises(TaskMismatch, match="uint8 image observations"):
        AugmentConsistency.check(TaskContext(vector, ctx.action_space, 64, agent.torso, ctx.ppo_heads))
    with pytest.raises(TaskMismatch, match="ppo_heads"):
        AugmentConsistency.check(TaskContext(SMALL_IMAGES, ctx.action_space, 64, agent.torso))


def test_tasks_command_lists_augment_consistency(capsys):
    assert main(["tasks"]) == 0
    assert "augment_consistency" in capsys.readouterr().out


# --------------------------------------------------------------------------------------------
# ppo.augment
# --------------------------------------------------------------------------------------------


def test_ppo_augment_is_validated():
    with pytest.raises(ConfigError, match="not a valid choice"):
        load_config("breakout", ["ppo.augment=crop"])
    with pytest.raises(ConfigError, match=r"ppo.augment=shift .*model.torso=mlp") as err:
        load_config("cartpole", ["ppo.augment=shift"])
    assert "\n" not in str(err.value)
    assert load_config("breakout", ["ppo.augment=shift_intensity"]).ppo.augment == "shift_intensity"
    assert PPOConfig().augment == "none"


def _storage(seed: int = 0) -> RolloutStorage:
    steps, envs = 8, 4
    st = RolloutStorage(steps, envs, SMALL_IMAGES.shape, torch.uint8, (), torch.long, torch.device("cpu"))
    g = torch.Generator().manual_seed(seed)
    st.obs.copy_(torch.randint(0, 256, st.obs.shape, generator=g, dtype=torch.uint8))
    st.next_obs.copy_(torch.randint(0, 256, st.next_obs.shape, generator=g, dtype=torch.uint8))
    st.actions.copy_(torch.randint(0, 6, st.actions.shape, generator=g))
    st.log_probs.fill_(float(-np.log(6)))
    st.values.copy_(torch.randn(steps, envs, generator=g))
    st.rewards.copy_(torch.randn(steps, envs, generator=g))
    st.valid.fill_(True)
    st.finish(torch.zeros(envs), 0.99, 0.95)
    return st


def _update(augment: str, monkeypatch, seed: int = 0) -> tuple[dict, list, RolloutStorage]:
    calls: list[torch.Tensor] = []
    real = aug.augment

    def spy(obs, kind, generator=None):
        calls.append(obs)
        return real(obs, kind, generator)

    monkeypatch.setattr("auxrl.learner.augment", spy)
    agent, _ = make_agent(gym.spaces.Discrete(6))
    st = _storage()
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam(agent.parameters(), lr=1e-3)
    p = PPOConfig(num_minibatches=2, update_epochs=2, augment=augment)
    aux_cfg = build(AuxConfig, {})
    Learner(agent, optimizer, Balancer(aux_cfg.balance), list(agent.parameters())).update(st, p, aux_cfg)
    return agent.state_dict(), calls, st


def test_ppo_augment_changes_the_loss_inputs_only_and_none_never_draws(monkeypatch):
    before = _storage().obs.clone()
    plain, calls, _ = _update("none", monkeypatch)
    assert calls == []  # default: the augmentation is never reached
    shifted, calls, st = _update("shift", monkeypatch)
    assert len(calls) == 4  # every minibatch of 2 epochs x 2
    assert torch.equal(st.obs, before)  # the stored rollout is not augmented
    assert any(not torch.equal(plain[k], shifted[k]) for k in plain)
    again, _, _ = _update("shift", monkeypatch)  # the same torch seed: the same augmentations
    assert all(torch.equal(again[k], shifted[k]) for k in again)
    other, _, _ = _update("shift", monkeypatch, seed=1)
    assert any(not torch.equal(other[k], shifted[k]) for k in other)


def test_default_update_draws_nothing_from_torch_rng(monkeypatch):
    """ppo.augment=none: the update's random stream is exactly what it was before ppo.augment
    existed (the minibatch permutation only), so default runs are unchanged bit for bit."""
    st = _storage()
    agent, _ = make_agent(gym.spaces.Discrete(6))
    monkeypatch.setattr("auxrl.learner.augment", lambda *a, **k: pytest.fail("augment called"))
    torch.manual_seed(3)
    for _epoch in range(2):
        torch.randperm(st.num_steps * st.num_envs)  # what each epoch's minibatch shuffle draws
    expected = torch.get_rng_state()
    torch.manual_seed(3)
    p, aux_cfg = PPOConfig(num_minibatches=2, update_epochs=2), build(AuxConfig, {})
    optimizer, balancer = torch.optim.Adam(agent.parameters()), Balancer(aux_cfg.balance)
    Learner(agent, optimizer, balancer, list(agent.parameters())).update(st, p, aux_cfg)
    assert torch.equal(torch.get_rng_state(), expected)


# --------------------------------------------------------------------------------------------
# End to end: Breakout with both, checkpointed
# --------------------------------------------------------------------------------------------


def test_breakout_trains_and_checkpoints_with_ppo_augment_and_augment_consistency(tmp_path):
    cfg = load_config(
        "breakout",
        [
            "ppo.total_steps=256",
            "env.num_envs=2",
            "ppo.num_steps=64",
            "ppo.num_minibatches=2",
            "ppo.update_epochs=1",
            "log.checkpoint_every=128",
            "perf.compile=false",
            "perf.threads=1",
            "ppo.augment=shift",
            "aux.tasks.reward_prediction.enabled=false",
            "aux.tasks.pixel_control.enabled=false",
            "aux.tasks.next_state.enabled=false",
            "aux.tasks.augment_consistency.augment=shift_intensity",
            "aux.batch_size=16",
        ],
    )
    run = tmp_path / "run"
    result = train(cfg, run, device="cpu", progress=False)
    assert result.global_step == 256
    saved = checkpoint.load(run)
    assert saved["state"]["global_step"] == 256
    assert not any("augment_consistency" in k for k in saved["model"])  # it owns no weights
    acc = EventAccumulator(str(run), size_guidance={"scalars": 0})
    acc.Reload()
    tags = acc.Tags()["scalars"]
    for key in ("loss", "policy_kl", "value_gap", "weight", "grad_cosine"):
        assert f"aux/augment_consistency/{key}" in tags, key
    assert acc.Scalars("aux/augment_consistency/weight")[-1].value == pytest.approx(0.1)
    assert all(np.isfinite(e.value) for e in acc.Scalars("aux/augment_consistency/loss"))
