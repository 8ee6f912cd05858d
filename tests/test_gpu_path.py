"""The GPU path (issue 30), with CPU stand-ins where no GPU is lent: float32 heads under bf16
autocast, autocast around forward passes only, the backend from the device, the action sampler
without host syncs, one host copy per checkpoint, the deterministic switches, env workers that
start safely after CUDA."""

from __future__ import annotations

import contextlib
import inspect
import os

import gymnasium as gym
import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn
from torch.distributions import Categorical

from auxrl.config import build
from auxrl.models.heads import CategoricalPolicy, GaussianPolicy, SeparateValueHead, ValueHead
from auxrl.models.torsos import MLP
from auxrl.tasks.augment_consistency import AugmentConsistency
from auxrl.tasks.base import PPOHeads, Sequences, TaskContext
from auxrl.tasks.next_state import NextStatePrediction
from auxrl.tasks.pixel_control import PixelControl
from auxrl.tasks.reward_prediction import RewardPrediction
from auxrl.tasks.state_prediction import StatePrediction

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

IMAGE_SPACE = gym.spaces.Box(0, 255, (4, 84, 84), np.uint8)


def bf16_autocast() -> contextlib.AbstractContextManager:
    """What perf.bf16 opens on CUDA, on the CPU (autocast's CPU backend casts the same ops)."""
    return torch.autocast("cpu", dtype=torch.bfloat16)


# ------------------------------------------------------------------------------------------------
# Heads in float32 under bf16 autocast
# ------------------------------------------------------------------------------------------------


def test_a_linear_layer_under_autocast_is_bf16_whatever_its_input():
    """Why the heads disable autocast: calling .float() on the input (or output) is not enough."""
    layer = nn.Linear(8, 3)
    with bf16_autocast():
        assert layer(torch.randn(2, 8)).dtype == torch.bfloat16


@pytest.mark.parametrize("head", ["categorical", "gaussian", "value"])
def test_ppo_heads_are_float32_under_bf16_autocast_and_equal_the_float32_head(head):
    torch.manual_seed(0)
    features = (torch.randn(64, 32) * 5).bfloat16()  # what a bf16 torso returns
    module = {
        "categorical": CategoricalPolicy(32, 6),
        "gaussian": GaussianPolicy(32, 3),
        "value": ValueHead(32),
    }[head]
    for p in module.parameters():  # weights of a trained size, so a bf16 matmul would round visibly
        nn.init.normal_(p, std=1.0)

    def numbers(out):  # the head's output numbers: logits, Gaussian means, values
        return out.logits if head == "categorical" else out.mean if head == "gaussian" else out

    with bf16_autocast():
        under = numbers(module(features))
    plain = numbers(module(features.float()))  # the float32 head on the same features
    assert under.dtype == torch.float32
    assert torch.equal(under, plain)
    if head == "categorical":
        with bf16_autocast():  # the form before, Linear then .float(): rounded to bf16's mantissa
            assert not torch.equal(module.logits(features).float(), plain)


def test_the_separate_value_head_reads_its_torso_in_bf16_and_computes_in_float32():
    torch.manual_seed(0)
    head = SeparateValueHead(MLP(8, [16]))
    obs = torch.randn(32, 8)
    with bf16_autocast():
        value = head(obs)
        features = head.torso(obs)
    assert features.dtype == torch.bfloat16 and value.dtype == torch.float32
    assert torch.equal(value, head.v(features.float()).squeeze(-1))


class Bf16Torso(nn.Module):
    """A torso that computes in bf16 whether or not the caller opened autocast (as every torso
    does under perf.bf16), so that a task's loss with and without an outer autocast differs only
    in what the task itself computes after the torso."""

    def __init__(self, feature_dim: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(4, 8, 8, stride=4),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(8 * 20 * 20, feature_dim),
            nn.ReLU(),
        )
        self.feature_dim = feature_dim

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        with bf16_autocast():
            return self.net(obs.float() / 255.0)


def _sequences(batch: int, length: int, labels: torch.Tensor | None = None) -> Sequences:
    g = torch.Generator().manual_seed(1)
    false = torch.zeros(batch, length, dtype=torch.bool)
    return Sequences(
        obs=torch.randint(0, 256, (batch, length + 1, 4, 84, 84), dtype=torch.uint8, generator=g),
        actions=torch.randint(0, 4, (batch, length), generator=g),
        rewards=torch.randint(-1, 2, (batch, length), generator=g).float(),
        terminated=false,
        truncated=false,
        valid=~false,
        labels=labels,
    )


def _task(name: str, torso: nn.Module):
    action_space = gym.spaces.Discrete(4)
    heads = PPOHeads(CategoricalPolicy(torso.feature_dim, 4), ValueHead(torso.feature_dim))
    ctx = TaskContext(
        IMAGE_SPACE,
        action_space,
        torso.feature_dim,
        torso,
        ppo_heads=heads,
        label_names=("byte", "real"),
        label_kinds=("byte", "real"),
    )
    cls, params, length = {
        "reward_prediction": (RewardPrediction, {"source": "replay", "hidden": 16}, 3),
        "reward_prediction_minibatch": (RewardPrediction, {"hidden": 16}, 1),
        "pixel_control": (PixelControl, {"n_steps": 2}, 2),
        "next_state": (NextStatePrediction, {"hidden": 16, "projection_dim": 8}, 1),
        "next_state_spr": (NextStatePrediction, {"mode": "spr", "hidden": 16, "projection_dim": 8}, 5),
        "state_prediction": (StatePrediction, {"hidden": 16}, 1),
        "augment_consistency": (AugmentConsistency, {}, 1),
    }[name]
    task = cls(build(cls.Config, params, f"aux.tasks.{cls.name}"), ctx)
    return task.eval(), length  # eval: state_prediction's running statistics stay as they are


@pytest.mark.parametrize(
    "name",
    [
        "reward_prediction",
        "reward_prediction_minibatch",
        "pixel_control",
        "next_state",
        "next_state_spr",
        "state_prediction",
        "augment_consistency",
    ],
)
def test_aux_task_losses_under_bf16_autocast_are_float32_and_equal_those_without(name):
    """The torso in bf16 either way; the task's heads and loss the same float32 numbers whether or
    not the learner's bf16 autocast is open (before: every head's matmuls ran in bf16)."""
    torch.manual_seed(0)
    torso = Bf16Torso()
    task, length = _task(name, torso)
    labels = torch.stack([torch.randint(0, 256, (6, length + 1)).float(), torch.randn(6, length + 1) * 3], -1)

    def loss(autocast: bool):
        seq = _sequences(6, length, labels)
        if task.needs.minibatch:
            seq.features = torso(seq.obs[:, 0])
        seq.generator = torch.Generator().manual_seed(2)  # the same augmentation draws each time
        with bf16_autocast() if autocast else contextlib.nullcontext():
            return task.loss(seq, torso)

    under, plain = loss(True), loss(False)
    assert under.loss.dtype == torch.float32
    assert torch.equal(under.loss, plain.loss)
    for key, value in plain.metrics.items():
        assert torch.as_tensor(under.metrics[key]).dtype != torch.bfloat16, key
        assert torch.equal(torch.as_tensor(under.metrics[key]), torch.as_tensor(value)), key


def test_next_state_target_similarity_is_the_float32_mean_off_diagonal_cosine():
    torch.manual_seed(0)
    torso = Bf16Torso()
    task, _ = _task("next_state", torso)
    seq = _sequences(8, 1)
    seq.features = torso(seq.obs[:, 0])
    with bf16_autocast():
        out = task.loss(seq, torso)
        targets = task.target_projection(task.target_torso(seq.obs[:, 1]).float())
    first = nn.functional.normalize(targets.float(), dim=-1).double()
    expected = ((first @ first.T).sum() - 8) / (64 - 8)
    assert out.metrics["target_similarity"].dtype == torch.float32
    # float32 accurate (a bf16 matmul is off by ~1e-2 here)
    assert abs(out.metrics["target_similarity"].item() - expected.item()) < 1e-3


# ------------------------------------------------------------------------------------------------
# Autocast around forward passes only
# ------------------------------------------------------------------------------------------------


def test_the_update_runs_forward_passes_under_autocast_and_gradients_and_steps_outside(monkeypatch):
    from auxrl.balance import Balancer
    from auxrl.build import build_model, make_optimizer
    from auxrl.configfile import load_config
    from auxrl.curriculum import plan_stages
    from auxrl.learner import Learner
    from auxrl.ppo.rollout import RolloutStorage
    from auxrl.tasks.combine import AuxTasks

    cfg = load_config(
        "atari100k",
        [
            "aux.enabled=true",  # the shipped config has its heads off
            "ppo.num_steps=16",
            "env.num_envs=2",
            "aux.batch_size=4",
            "ppo.update_epochs=1",
            "ppo.num_minibatches=2",
        ],
    )
    torch.manual_seed(0)
    agent = build_model(cfg, plan_stages(cfg), IMAGE_SPACE, gym.spaces.Discrete(4))
    storage = RolloutStorage(16, 2, (4, 84, 84), torch.uint8, (), torch.long, torch.device("cpu"))
    storage.obs.random_(0, 256)
    storage.next_obs.random_(0, 256)
    storage.rewards[::3] = 1.0
    storage.advantages.normal_()
    storage.returns.normal_()
    seen: dict[str, set[bool]] = {}

    def note(what: str) -> None:
        seen.setdefault(what, set()).add(torch.is_autocast_enabled("cpu"))

    agent.torso.register_forward_pre_hook(lambda *args: note("torso"))
    grad, backward = torch.autograd.grad, torch.Tensor.backward
    monkeypatch.setattr(torch.autograd, "grad", lambda *a, **k: (note("autograd.grad"), grad(*a, **k))[1])
    monkeypatch.setattr(
        torch.Tensor, "backward", lambda self, *a, **k: (note("backward"), backward(self, *a, **k))
    )
    balance = Balancer.__call__
    monkeypatch.setattr(Balancer, "__call__", lambda self, *a: (note("balancer"), balance(self, *a))[1])
    policy_dtypes = set()
    agent.heads["policy"].register_forward_hook(lambda m, a, out: policy_dtypes.add(out.logits.dtype))
    value_dtypes = set()
    agent.heads["value"].register_forward_hook(lambda m, a, out: value_dtypes.add(out.dtype))

    for names in [("reward_prediction", "next_state", "pixel_control"), ()]:  # heads, then PPO alone
        tasks = {n: h for n, h in agent.heads.items() if n in names}
        aux = AuxTasks(tasks, cfg.aux, storage, seed=0) if tasks else None
        if aux is not None:
            aux.add_rollout(storage)
        optimizer = make_optimizer([p for p in agent.parameters() if p.requires_grad], 1e-4, 1e-5)
        step = optimizer.step
        monkeypatch.setattr(
            optimizer, "step", lambda *a, _step=step, **k: (note("optimizer.step"), _step(*a, **k))[1]
        )
        trainable = [p for p in agent.parameters() if p.requires_grad]
        learner = Learner(agent, optimizer, Balancer(cfg.aux.balance), trainable, amp=bf16_autocast)
        metrics = learner.update(storage, cfg.ppo, cfg.aux, aux, {n: 1.0 for n in tasks}, 32)
        assert all(torch.isfinite(v) for v in metrics.values())
    assert seen == {
        "torso": {True},
        "autograd.grad": {False},
        "balancer": {False},
        "backward": {False},
        "optimizer.step": {False},
    }
    assert policy_dtypes == value_dtypes == {torch.float32}


# ------------------------------------------------------------------------------------------------
# The process group's backend, from the device
# ------------------------------------------------------------------------------------------------


@pytest.fixture
def fake_group(monkeypatch):
    """Two ranks of torchrun on a node whose one GPU PyTorch sees; init_process_group recorded."""
    import torch.distributed as torch_dist

    calls: list[tuple[str, dict]] = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(
        torch.cuda, "set_device", lambda device: calls.append(("set_device", {"device": device}))
    )
    monkeypatch.setattr(torch_dist, "is_initialized", lambda: False)
    assert "device_id" in inspect.signature(torch_dist.init_process_group).parameters  # torch >= 2.3

    def init_process_group(backend, timeout=None, device_id=None):  # torch's own parameters
        calls.append((backend, {"timeout": timeout} | ({"device_id": device_id} if device_id else {})))

    monkeypatch.setattr(torch_dist, "init_process_group", init_process_group)
    return calls


@pytest.mark.parametrize(
    ("device", "backend"),
    [
        (torch.device("cpu"), "gloo"),  # torch.device("cpu") != "cpu": the string test chose nccl
        ("cpu", "gloo"),
        (torch.device("cuda"), "nccl"),
        ("cuda", "nccl"),
        ("auto", "nccl"),
    ],
)
def test_the_backend_follows_the_device_the_model_is_on(fake_group, device, backend):
    from auxrl.distributed import Dist

    dist = Dist.from_env(device)
    assert dist.enabled and dist.rank == 0
    groups = [(b, kw) for b, kw in fake_group if b != "set_device"]
    assert [b for b, _ in groups] == [backend]
    if backend == "nccl":  # bound to its GPU: collectives and barriers know their device
        assert groups[0][1]["device_id"] == torch.device("cuda", 0)
        assert ("set_device", {"device": 0}) in fake_group
    else:
        assert "device_id" not in groups[0][1]
        assert not [c for c in fake_group if c[0] == "set_device"]


def test_check_gpus_reads_a_torch_device(monkeypatch):
    from auxrl.distributed import check_gpus

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    check_gpus(4, torch.device("cpu"))  # gloo on the CPU: any number of processes
    with pytest.raises(ValueError, match="4 processes on this machine need 4 GPUs"):
        check_gpus(4, torch.device("cuda"))


def test_device_resolution_has_one_home():
    import auxrl.inference
    import auxrl.trainer
    from auxrl.device import resolve_device

    assert auxrl.inference.resolve_device is resolve_device
    assert resolve_device(torch.device("cpu")) == torch.device("cpu") == resolve_device("cpu")


# ------------------------------------------------------------------------------------------------
# Sampling actions without host syncs
# ------------------------------------------------------------------------------------------------


def test_the_sampler_draws_what_categorical_draws_from_the_same_stream():
    """Categorical.sample's own draw (torch.multinomial's one-sample path) without its checks: the
    same actions for the same seed, and the stream left where it was left."""
    g = torch.Generator().manual_seed(0)
    for shape in [(1, 2), (8, 4), (64, 18), (3, 5, 6)]:
        logits = torch.randn(shape, generator=g) * 4
        logits[..., 0] -= 30  # a near-impossible action
        dist = Categorical(logits=logits, validate_args=False)
        torch.manual_seed(7)
        expected = dist.sample()
        after_expected = torch.rand(3)
        torch.manual_seed(7)
        actions = CategoricalPolicy.sample(dist)
        assert torch.equal(actions, expected)
        assert torch.equal(torch.rand(3), after_expected)


def test_the_sampler_matches_the_categorical_distribution_chi_square():
    probs = torch.tensor([0.5, 0.2, 0.15, 0.1, 0.04, 0.01])
    dist = Categorical(logits=probs.log().expand(200_000, -1), validate_args=False)
    torch.manual_seed(0)
    counts = torch.bincount(CategoricalPolicy.sample(dist), minlength=6).double()
    test = stats.chisquare(counts.numpy(), (probs.double() * 200_000).numpy())
    assert test.pvalue > 0.01, (counts, test)
    # A wrong distribution (uniform) is told apart by the same test.
    assert stats.chisquare(counts.numpy(), np.full(6, 200_000 / 6)).pvalue < 1e-12


def test_the_sampled_actions_log_probs_are_categoricals():
    torch.manual_seed(0)
    head = CategoricalPolicy(16, 5)
    dist = head(torch.randn(32, 16) * 10)
    actions = CategoricalPolicy.sample(dist)
    reference = Categorical(logits=dist.logits)  # validated, as torch does by default
    assert torch.allclose(CategoricalPolicy.log_prob(dist, actions), reference.log_prob(actions))
    assert torch.allclose(
        CategoricalPolicy.log_prob(dist, actions), dist.probs.gather(-1, actions[:, None]).squeeze(-1).log()
    )


def test_acting_makes_no_host_sync(monkeypatch):
    """No torch.multinomial (two .item() checks in ATen), no .item/.cpu/.tolist/bool in act()."""
    from auxrl.models.agent import build_agent

    torch.manual_seed(0)
    agent = build_agent("nature_cnn", [], IMAGE_SPACE, gym.spaces.Discrete(4))
    obs = torch.randint(0, 256, (4, 4, 84, 84), dtype=torch.uint8)
    calls: list[str] = []
    for name in ("item", "cpu", "tolist", "__bool__", "__float__", "__int__"):
        original = getattr(torch.Tensor, name)
        monkeypatch.setattr(
            torch.Tensor,
            name,
            lambda self, *a, _n=name, _o=original, **k: (calls.append(_n), _o(self, *a, **k))[1],
        )
    monkeypatch.setattr(torch, "multinomial", lambda *a, **k: calls.append("multinomial"))
    out = agent.act(obs)
    assert calls == []
    assert out.action.shape == (4,) and out.log_prob.dtype == out.value.dtype == torch.float32


# ------------------------------------------------------------------------------------------------
# One host copy per checkpoint
# ------------------------------------------------------------------------------------------------


def test_checkpoint_flags_are_gathered_in_one_copy(monkeypatch):
    from auxrl.checkpoint import first_non_finite
    from auxrl.models.torsos import NatureCNN

    model = NatureCNN(4)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.zeros(1, 4, 84, 84, dtype=torch.uint8)).sum().backward()
    optimizer.step()
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "lr": 1e-4}
    counts: dict[str, int] = {}
    for name in ("item", "cpu", "tolist", "__bool__"):
        original = getattr(torch.Tensor, name)

        def counted(self, *a, _n=name, _o=original, **k):
            counts[_n] = counts.get(_n, 0) + 1
            return _o(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counted)
    assert first_non_finite(state) is None
    assert counts == {"cpu": 1, "tolist": 1}  # one device: one copy (before: one .cpu() per tensor)
    state["optimizer"]["state"][0]["exp_avg_sq"][0, 0] = float("nan")
    counts.clear()
    assert first_non_finite(state) == "optimizer['state'][0]['exp_avg_sq']"
    assert counts == {"cpu": 1, "tolist": 1}


# ------------------------------------------------------------------------------------------------
# Deterministic mode and cuDNN
# ------------------------------------------------------------------------------------------------


def test_deterministic_switches(monkeypatch):
    from auxrl.run import seed_everything

    for flag in ("deterministic", "benchmark"):  # restored after the test
        monkeypatch.setattr(torch.backends.cudnn, flag, getattr(torch.backends.cudnn, flag))
    calls: list[tuple] = []
    monkeypatch.setattr(torch, "use_deterministic_algorithms", lambda mode, **kw: calls.append((mode, kw)))
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    cuda = torch.device("cuda", 0)

    seed_everything(0, True, cuda)
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    assert calls == [(True, {"warn_only": True})]
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"

    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")  # the user's own stays
    calls.clear()
    seed_everything(0, False, cuda)
    assert not torch.backends.cudnn.deterministic and torch.backends.cudnn.benchmark
    assert calls == [(False, {"warn_only": True})]
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG")
    calls.clear()
    seed_everything(0, True, torch.device("cpu"))  # the CPU path as before: cuDNN flags only
    assert calls == [] and "CUBLAS_WORKSPACE_CONFIG" not in os.environ
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark


# ------------------------------------------------------------------------------------------------
# Env workers started after CUDA
# ------------------------------------------------------------------------------------------------


def test_async_env_workers_use_forkserver_where_cuda_may_be_in_use(monkeypatch):
    import multiprocessing

    from auxrl.envs.gym import start_method, vector_kwargs

    if multiprocessing.get_all_start_methods()[0] != "fork":
        pytest.skip("this platform's default start method is not fork")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert start_method() is None and "context" not in vector_kwargs("async")  # CPU-only: as before
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert vector_kwargs("async")["context"] == "forkserver"
    assert "context" not in vector_kwargs("sync")  # no subprocesses


def test_forkserver_env_workers_step_like_forked_ones(monkeypatch):
    """The whole async path under forkserver (picklable worker and env makers, the server's
    preload), on the CPU: the same observations as forked workers."""
    import multiprocessing

    from auxrl.config import EnvConfig
    from auxrl.envs import make_envs

    if "forkserver" not in multiprocessing.get_all_start_methods():
        pytest.skip("no forkserver on this platform")
    cfg = EnvConfig(id="CartPole-v1", num_envs=2, vector_mode="async")

    def play(cuda: bool) -> tuple[str, list[np.ndarray]]:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
        with make_envs(cfg) as envs:
            kind = type(envs.env.unwrapped.processes[0]).__name__
            seen = [envs.reset(seed=3)]
            for t in range(20):
                seen.append(envs.step(np.array([t % 2, 1 - t % 2])).obs)
        return kind, seen

    fork_kind, forked = play(False)
    server_kind, served = play(True)
    assert fork_kind == "ForkProcess" and server_kind == "ForkServerProcess"
    assert all(np.array_equal(a, b) for a, b in zip(forked, served, strict=True))


def test_forkserver_env_workers_see_the_trainers_environment_variables(monkeypatch):
    """A variable set after the server started (MUJOCO_GL=egl for rendering) reaches the workers
    of a vector env made afterwards, as it reaches forked ones."""
    import multiprocessing

    from auxrl.config import EnvConfig
    from auxrl.envs import make_envs

    if "forkserver" not in multiprocessing.get_all_start_methods():
        pytest.skip("no forkserver on this platform")

    class ReadsEnviron(gym.Env):  # defined here: pickled by value into the workers
        observation_space = gym.spaces.Box(0.0, 1.0, (1,), np.float32)
        action_space = gym.spaces.Discrete(2)

        def reset(self, *, seed=None, options=None):
            flag = float(os.environ.get("AUXRL_TEST_ENVIRON") == "set")
            return np.array([flag], dtype=np.float32), {}

        def step(self, action):
            return self.reset()[0], 0.0, False, False, {}

    gym.register("AuxrlReadsEnviron-v0", entry_point=ReadsEnviron)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.delenv("AUXRL_TEST_ENVIRON", raising=False)
    cfg = EnvConfig(id="AuxrlReadsEnviron-v0", num_envs=2, vector_mode="async")
    try:
        with make_envs(cfg) as envs:  # the server runs from here on (if not already)
            assert envs.reset(seed=0).tolist() == [[0.0], [0.0]]
        monkeypatch.setenv("AUXRL_TEST_ENVIRON", "set")
        with make_envs(cfg) as envs:
            assert type(envs.env.unwrapped.processes[0]).__name__ == "ForkServerProcess"
            assert envs.reset(seed=0).tolist() == [[1.0], [1.0]]
    finally:
        gym.registry.pop("AuxrlReadsEnviron-v0", None)
