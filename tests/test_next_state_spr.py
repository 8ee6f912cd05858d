"""next_state's SPR form (``mode: spr``) and the cheap form it leaves as it was."""

from __future__ import annotations

import copy
import math
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

from auxrl import checkpoint
from auxrl.config import build
from auxrl.configfile import load_config
from auxrl.models.torsos import MLP, layer_init
from auxrl.tasks import next_state as ns
from auxrl.tasks.base import Needs, Sequences, TaskContext, TaskMismatch
from auxrl.tasks.next_state import NextStateConfig, NextStatePrediction
from auxrl.trainer import train

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

# Tests that set other than SPR's horizon / ema_tau on purpose (e.g. a target equal to the online
# torso without augmentation, to construct exact cases) silence mode spr's warning about it.
not_spr_settings = pytest.mark.filterwarnings("ignore:aux.tasks.next_state. mode spr runs with")

SMALL_IMAGES = gym.spaces.Box(0, 255, (4, 20, 20), np.uint8)
VECTORS = gym.spaces.Box(-1.0, 1.0, (8,), np.float32)
ACTIONS = gym.spaces.Discrete(3)


class SmallConv(nn.Module):
    """A cheap image torso for 4x20x20 uint8 frames (any float input in the 0-255 scale too)."""

    def __init__(self, feature_dim: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(4, 8, 4, stride=2),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(8 * 9 * 9, feature_dim),
            nn.ReLU(),
        )
        self.feature_dim = feature_dim

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs.float() / 255.0)


def make(torso: nn.Module, obs_space=SMALL_IMAGES, action_space=ACTIONS, **params) -> NextStatePrediction:
    ctx = TaskContext(obs_space, action_space, torso.feature_dim, torso)
    return NextStatePrediction(build(NextStateConfig, params, "aux.tasks.next_state"), ctx)


def windows(
    obs: torch.Tensor, actions: torch.Tensor, done=None, valid=None, seed: int | None = 0
) -> Sequences:
    batch, length = actions.shape[:2]
    false = torch.zeros(batch, length, dtype=torch.bool)
    return Sequences(
        obs=obs,
        actions=actions,
        rewards=torch.zeros(batch, length),
        terminated=false if done is None else done,
        truncated=false,
        valid=~false if valid is None else valid,
        generator=None if seed is None else torch.Generator().manual_seed(seed),
    )


def noise_frames(batch: int, steps: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, steps, *SMALL_IMAGES.shape), generator=gen, dtype=torch.uint8)


# ---------------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------------


def test_the_modes_resolve_their_settings():
    cheap = NextStateConfig()
    assert (cheap.mode, cheap.horizon, cheap.ema_tau, cheap.augment) == ("cheap", 1, 0.01, "none")
    spr = NextStateConfig(mode="spr")  # SPR: K=5, shift + intensity, momentum tau 0 = ema_tau 1
    assert (spr.horizon, spr.ema_tau, spr.augment) == (5, 1.0, "shift_intensity")
    # SPR's unaugmented variant keeps a slow EMA target (momentum 0.99 = ema_tau 0.01).
    assert NextStateConfig(mode="spr", augment="none").ema_tau == 0.01
    # A key given wins over the mode's default, and spr says when it is not SPR's.
    with pytest.warns(UserWarning, match="horizon 1 and ema_tau 0.01, SPR's are 5 and 1.0"):
        odd = build(NextStateConfig, {"mode": "spr", "horizon": 1, "ema_tau": 0.01})
    assert (odd.horizon, odd.ema_tau, odd.augment) == (1, 0.01, "shift_intensity")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        NextStateConfig(mode="spr", horizon=5, ema_tau=1.0)  # SPR's own: no warning
        NextStateConfig(horizon=3, augment="shift")  # the cheap form with other keys: no warning


@not_spr_settings
def test_spr_mode_draws_windows_of_five_and_builds_spr_heads():
    torch.manual_seed(0)
    torso = SmallConv()
    task = make(torso, mode="spr")
    assert task.needs == Needs(sequence_length=5, replay=True)
    assert isinstance(task.predictor, nn.Linear)  # SPR's prediction head q: one linear layer
    assert any(isinstance(m, nn.LayerNorm) for m in task.transition)
    assert make(SmallConv(), mode="spr", horizon=3).needs.sequence_length == 3
    cheap = make(SmallConv())
    assert cheap.needs == Needs(sequence_length=1, replay=True, minibatch=True)
    assert isinstance(cheap.predictor, nn.Sequential)


def test_augmenting_needs_image_frames():
    torso = MLP(8, [16])
    with pytest.raises(TaskMismatch, match="augment=none"):
        make(torso, VECTORS, mode="spr")  # its default augmentation cannot shift vectors
    with pytest.raises(TaskMismatch, match="augment=none"):
        make(torso, VECTORS, augment="shift")
    task = make(torso, VECTORS, mode="spr", augment="none")
    seq = windows(torch.randn(4, 6, 8), torch.randint(0, 3, (4, 5)))
    assert torch.isfinite(task.loss(seq, torso).loss)


# ---------------------------------------------------------------------------------------------
# Augmented views
# ---------------------------------------------------------------------------------------------


def twin_tasks(**params) -> tuple[nn.Module, NextStatePrediction, NextStatePrediction]:
    """One torso, and two spr tasks with the same weights: ``params`` and no augmentation."""
    torch.manual_seed(0)
    torso = SmallConv()
    torch.manual_seed(1)
    task = make(torso, mode="spr", **params)
    torch.manual_seed(1)
    plain = make(torso, mode="spr", augment="none", ema_tau=1.0)
    return torso, task, plain


@not_spr_settings
def test_the_online_and_the_target_frames_go_through_the_augmentation(monkeypatch):
    torso, task, plain = twin_tasks()
    obs, actions = noise_frames(6, 6), torch.randint(0, 3, (6, 5))
    calls = []

    def identity(frames: torch.Tensor, kind: str, generator=None) -> torch.Tensor:
        calls.append((tuple(frames.shape), kind, generator))
        return frames

    seq = windows(obs, actions)
    monkeypatch.setattr(ns, "augment", identity)
    with_identity = task.loss(seq, torso)
    # Once for the online input obs[:, 0], once for the targets obs[:, 1:], from the learner's stream.
    assert calls == [
        ((6, 4, 20, 20), "shift_intensity", seq.generator),
        ((6, 5, 4, 20, 20), "shift_intensity", seq.generator),
    ]
    monkeypatch.undo()
    plain_out = plain.loss(windows(obs, actions), torso)
    assert torch.equal(with_identity.loss, plain_out.loss)  # an identity augmentation changes nothing
    shifted = task.loss(windows(obs, actions), torso)  # the real one does
    assert abs(shifted.loss.item() - plain_out.loss.item()) > 1e-3
    again = task.loss(windows(obs, actions), torso)  # the same stream: the same draws
    assert torch.equal(shifted.loss, again.loss)


@not_spr_settings
def test_online_and_target_views_are_drawn_independently():
    torso, task, _ = twin_tasks(augment="shift")
    frame = noise_frames(8, 1)
    obs = frame.expand(8, 6, *SMALL_IMAGES.shape).clone()  # one frame, repeated over the window
    seen: dict[str, torch.Tensor] = {}

    def online(x: torch.Tensor) -> torch.Tensor:
        seen["online"] = x
        return torso(x)

    task.target_torso.register_forward_pre_hook(lambda _m, args: seen.update(target=args[0]))
    task.loss(windows(obs, torch.randint(0, 3, (8, 5))), online)
    raw = frame[:, 0]
    views = seen["target"].reshape(8, 5, *SMALL_IMAGES.shape)
    assert seen["online"].shape == raw.shape and views.shape == (8, 5, 4, 20, 20)
    # Shifted (+-4 px): most views differ from the raw frame, and the online view of a frame
    # differs from its target views, and those from each other: every view has its own draw.
    differs = [not torch.equal(seen["online"][i], raw[i]) for i in range(8)]
    assert sum(differs) >= 6
    assert sum(not torch.equal(seen["online"][i], views[i, 0]) for i in range(8)) >= 6
    assert sum(not torch.equal(views[i, 0], views[i, 1]) for i in range(8)) >= 6


# ---------------------------------------------------------------------------------------------
# Target, loss, mask
# ---------------------------------------------------------------------------------------------


def test_tau_zero_target_is_the_online_torso_after_an_update():
    torch.manual_seed(0)
    torso = SmallConv()
    task = make(torso, mode="spr")
    assert task.cfg.ema_tau == 1.0
    opt = torch.optim.Adam([*torso.parameters(), *task.parameters()], lr=1e-2)
    seq = windows(noise_frames(6, 6), torch.randint(0, 3, (6, 5)))
    for _ in range(2):
        out = task.loss(seq, torso)
        opt.zero_grad()
        out.loss.backward()
        assert all(p.grad is None for p in task.target_torso.parameters())  # stop-gradient
        opt.step()
        online = [*torso.parameters(), *task.projection.parameters()]
        target = [*task.target_torso.parameters(), *task.target_projection.parameters()]
        assert not all(torch.equal(t, o) for t, o in zip(target, online, strict=True))  # the step moved it
        task.after_update()
        assert all(torch.equal(t, o) for t, o in zip(target, online, strict=True))
        assert not any(t.requires_grad for t in target)


def perfect(task: NextStatePrediction, sign: float = 1.0) -> None:
    """Make the transition model return z unchanged and the predictor ``sign`` x identity, so that
    on frames that never change the prediction is ``sign`` x the target (the target is the online
    torso and projection at ema_tau 1)."""
    dim = task.projection.in_features

    class KeepState(nn.Module):
        def forward(self, za: torch.Tensor) -> torch.Tensor:
            return za[:, :dim]

    task.transition = KeepState()
    with torch.no_grad():
        task.predictor.weight.copy_(sign * torch.eye(task.predictor.out_features))
        task.predictor.bias.zero_()


def still_windows(batch: int = 6, done=None, valid=None) -> Sequences:
    frames = noise_frames(batch, 1)
    obs = frames.expand(batch, 6, *SMALL_IMAGES.shape).clone()
    return windows(obs, torch.randint(0, 3, (batch, 5)), done=done, valid=valid)


@not_spr_settings
def test_the_loss_is_zero_when_predictions_equal_targets_and_sums_the_steps():
    torch.manual_seed(0)
    torso = SmallConv()
    task = make(torso, mode="spr", augment="none", ema_tau=1.0)
    perfect(task)
    out = task.loss(still_windows(), torso)
    assert out.loss.item() == pytest.approx(0.0, abs=1e-5)
    assert out.metrics["cosine"].item() == pytest.approx(1.0, abs=1e-5)
    for k in range(1, 6):
        assert out.metrics[f"cosine_k{k}"].item() == pytest.approx(1.0, abs=1e-5)
    # Predictions opposite to the targets: 2 - 2 cos = 4 per step, summed over K = 5 steps.
    perfect(task, sign=-1.0)
    out = task.loss(still_windows(), torso)
    assert out.loss.item() == pytest.approx(4.0 * 5, rel=1e-5)
    assert out.metrics["cosine"].item() == pytest.approx(-1.0, abs=1e-5)
    # The cheap form centres the targets on their batch mean: the same perfect prediction of the
    # raw targets then misses (spr follows SPR and leaves them uncentred).
    torch.manual_seed(0)
    cheap = make(torso, horizon=5, ema_tau=1.0)
    cheap.predictor = nn.Identity()
    cheap.transition = task.transition
    cheap.target_projection.load_state_dict(cheap.projection.state_dict())
    assert cheap.loss(still_windows(), torso).loss.item() > 0.1


@not_spr_settings
def test_steps_after_an_episode_end_are_masked():
    torch.manual_seed(0)
    torso = SmallConv()
    task = make(torso, mode="spr", augment="none", ema_tau=1.0)
    perfect(task, sign=-1.0)  # 4 per real step
    done = torch.zeros(6, 5, dtype=torch.bool)
    done[0, 1] = True  # sample 0: transitions 0 and 1 are in the episode, 2..4 are not
    done[1, 4] = True  # sample 1: the last transition ends it, its target obs is still in it
    valid = torch.ones(6, 5, dtype=torch.bool)
    valid[2, 0] = False  # sample 2: not a real transition (a reset placeholder): no target at all
    out = task.loss(still_windows(done=done, valid=valid), torso)
    # Sums over the steps: 8 (sample 0) + 20 (1) + 20 x 3 (3..5), over the 5 samples with a target.
    assert out.loss.item() == pytest.approx((8 + 20 + 60) / 5, rel=1e-5)
    assert out.metrics["cosine_k3"].item() == pytest.approx(-1.0, abs=1e-5)

    # A trained-from-scratch task, augmented: frames after the end change nothing, gradients included.
    torch.manual_seed(0)
    torso = SmallConv()
    task = make(torso, mode="spr")
    obs, actions = noise_frames(6, 6), torch.randint(0, 3, (6, 5))
    done = torch.zeros(6, 5, dtype=torch.bool)
    done[0, 1] = True
    first = task.loss(windows(obs, actions, done=done), torso)
    grads = torch.autograd.grad(first.loss, list(torso.parameters()))
    obs2 = obs.clone()
    obs2[0, 3:] = noise_frames(1, 3, seed=7)[0]  # obs[0, 3..5]: after the end (targets of steps 2..4)
    second = task.loss(windows(obs2, actions, done=done), torso)
    assert torch.equal(first.loss, second.loss)
    grads2 = torch.autograd.grad(second.loss, list(torso.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(grads, grads2, strict=True))
    obs2[0, 2] = noise_frames(1, 1, seed=8)[0, 0]  # obs[0, 2] is still in the episode: it counts
    assert not torch.equal(task.loss(windows(obs2, actions, done=done), torso).loss, first.loss)


# ---------------------------------------------------------------------------------------------
# The cheap form is unchanged
# ---------------------------------------------------------------------------------------------


class PreSPRNextState(nn.Module):
    """next_state's head and loss as they were before mode spr (auxrl/tasks/next_state.py, frozen
    here verbatim but for the names): the cheap form must give the same numbers."""

    def __init__(self, cfg: NextStateConfig, ctx: TaskContext) -> None:
        super().__init__()
        self.cfg = cfg
        object.__setattr__(self, "_online", ctx.torso)
        self.target_torso = copy.deepcopy(ctx.torso).requires_grad_(False)
        space = ctx.action_space
        self.discrete = isinstance(space, gym.spaces.Discrete)
        self.action_dim = (
            int(space.n) if isinstance(space, gym.spaces.Discrete) else math.prod(space.shape or ())
        )
        dim = ctx.feature_dim
        self.transition = nn.Sequential(
            layer_init(nn.Linear(dim + self.action_dim, cfg.hidden)),
            nn.ReLU(),
            layer_init(nn.Linear(cfg.hidden, dim)),
        )
        proj = cfg.projection_dim
        self.projection = layer_init(nn.Linear(dim, proj))
        self.target_projection = copy.deepcopy(self.projection).requires_grad_(False)
        self.predictor = nn.Sequential(
            layer_init(nn.Linear(proj, proj)), nn.ReLU(), layer_init(nn.Linear(proj, proj))
        )

    def _action_inputs(self, actions: torch.Tensor) -> torch.Tensor:
        if self.discrete:
            return F.one_hot(actions.long(), self.action_dim).float()
        return actions.float().flatten(2)

    def loss(self, seq: Sequences, encode):
        batch, horizon = seq.actions.shape[:2]
        with torch.no_grad():
            targets = self.target_projection(self.target_torso(seq.obs[:, 1:].flatten(0, 1)))
            targets = targets.reshape(batch, horizon, -1)
        actions = self._action_inputs(seq.actions)
        z = encode(seq.obs[:, 0])
        predictions = []
        for k in range(horizon):
            z = self.transition(torch.cat([z, actions[:, k]], dim=-1))
            predictions.append(self.predictor(self.projection(z)))
        p = F.normalize(torch.stack(predictions, 1).float(), dim=-1)
        targets = targets.float()
        t = F.normalize(targets - targets.mean(dim=(0, 1), keepdim=True), dim=-1)
        mask = seq.in_episode.float()
        count = mask.sum().clamp(min=1.0)
        distance = (p - t).square().sum(-1)
        cosine = (p * t).sum(-1).detach()
        first = F.normalize(targets[:, 0], dim=-1)
        similarity = ((first @ first.T).sum() - batch) / max(batch * batch - batch, 1)
        metrics = {"cosine": (cosine * mask).sum() / count, "target_similarity": similarity}
        return (distance * mask).sum() / count, metrics

    @torch.no_grad()
    def after_update(self) -> None:
        target = [*self.target_torso.parameters(), *self.target_projection.parameters()]
        online = [p.detach() for p in (*self._online.parameters(), *self.projection.parameters())]
        torch._foreach_lerp_(target, online, self.cfg.ema_tau)
        for t_buf, o_buf in zip(self.target_torso.buffers(), self._online.buffers(), strict=True):
            t_buf.copy_(o_buf)


def cheap_run(build_task) -> tuple[list[float], dict, list[torch.Tensor]]:
    """3 Adam steps on a fixed batch from a fixed seed: the losses, the last metrics, the weights."""
    torch.manual_seed(0)
    torso = MLP(8, [16, 16])
    ctx = TaskContext(VECTORS, ACTIONS, torso.feature_dim, torso)
    task = build_task(build(NextStateConfig, {"horizon": 3}), ctx)
    gen = torch.Generator().manual_seed(1)
    obs = torch.randn(6, 4, 8, generator=gen)
    actions = torch.randint(0, 3, (6, 3), generator=gen)
    done = torch.zeros(6, 3, dtype=torch.bool)
    done[0, 1] = True
    seq = windows(obs, actions, done=done, seed=None)
    opt = torch.optim.Adam([*torso.parameters(), *task.parameters()], lr=1e-2)
    losses = []
    for _ in range(3):
        out = task.loss(seq, torso)
        loss, metrics = (out.loss, out.metrics) if hasattr(out, "metrics") else out
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
        task.after_update()
    out = task.loss(seq, torso)
    loss, metrics = (out.loss, out.metrics) if hasattr(out, "metrics") else out
    losses.append(loss.item())
    weights = [*torso.parameters(), *(v for _, v in sorted(task.state_dict().items()))]
    return losses, metrics, weights


def test_the_cheap_form_gives_the_numbers_it_gave_before_mode_spr():
    losses, metrics, weights = cheap_run(NextStatePrediction)
    old_losses, old_metrics, old_weights = cheap_run(PreSPRNextState)
    assert losses == old_losses  # bit-identical, step by step
    assert all(torch.equal(a, b) for a, b in zip(weights, old_weights, strict=True))
    for key in ("cosine", "target_similarity"):
        assert torch.equal(metrics[key], old_metrics[key])
    assert set(metrics) == {"cosine", "target_similarity", "cosine_k1", "cosine_k2", "cosine_k3"}
    # And as measured on the code before the edit (orthogonal init runs on one thread: portable).
    expected = [1.991663932800293, 1.6464084386825562, 1.0873016119003296, 0.8753101825714111]
    assert losses == pytest.approx(expected, rel=1e-5)
    assert metrics["cosine"].item() == pytest.approx(0.5623449087142944, rel=1e-4)


# ---------------------------------------------------------------------------------------------
# End to end: Breakout with next_state in spr mode, checkpointed
# ---------------------------------------------------------------------------------------------


def test_breakout_trains_and_checkpoints_with_next_state_in_spr_mode(tmp_path, monkeypatch):
    lengths = []
    loss = NextStatePrediction.loss

    def recording(self, seq, encode):
        lengths.append(seq.actions.shape[1])
        return loss(self, seq, encode)

    monkeypatch.setattr(NextStatePrediction, "loss", recording)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the mapping replaces breakout.yaml's cheap horizon / ema_tau
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
                "aux.tasks.reward_prediction.enabled=false",
                "aux.tasks.pixel_control.enabled=false",
                "aux.tasks.next_state={mode: spr, weight: 0.1}",
                "aux.batch_size=8",
            ],
        )
    run = tmp_path / "run"
    result = train(cfg, run, device="cpu", progress=False)
    assert result.global_step == 256
    assert lengths and set(lengths) == {5}  # windows of K = 5 transitions
    saved = checkpoint.load(run)
    assert saved["state"]["global_step"] == 256
    model = saved["model"]
    target = {k.split("target_torso.", 1)[1]: v for k, v in model.items() if "next_state.target_torso." in k}
    online = {k.split("torso.", 1)[1]: v for k, v in model.items() if k.startswith("torso.")}
    assert target and target.keys() == online.keys()
    assert all(torch.equal(target[k], online[k]) for k in target)  # tau = 0: the online weights
    acc = EventAccumulator(str(run), size_guidance={"scalars": 0})
    acc.Reload()
    tags = acc.Tags()["scalars"]
    for key in ("loss", "cosine", "target_similarity", "cosine_k1", "cosine_k5", "grad_cosine"):
        assert f"aux/next_state/{key}" in tags, key
    assert all(np.isfinite(e.value) for e in acc.Scalars("aux/next_state/loss"))
