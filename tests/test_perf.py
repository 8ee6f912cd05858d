"""The fast-path switches fall back cleanly where CUDA or a compiler is unavailable."""

import pytest
import torch

from auxrl.configfile import load_config
from auxrl.models.torsos import NatureCNN
from auxrl.perf import autocast, check_bf16, try_compile
from auxrl.trainer import train


def test_compile_failure_falls_back_to_eager(monkeypatch):
    torso = NatureCNN(4)
    obs = torch.randint(0, 255, (2, 4, 84, 84), dtype=torch.uint8)
    expected = torso(obs)

    def broken_compile(self, *args, **kwargs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(torch.nn.Module, "compile", broken_compile)
    with pytest.warns(UserWarning, match="running eagerly"):
        assert try_compile(torso, obs) is False
    assert torch.equal(torso(obs), expected)


def test_backward_compile_failure_falls_back_to_eager(monkeypatch):
    # The forward compiles, the backward does not: found at the trial, not at the first update.
    torso = NatureCNN(4)
    obs = torch.randint(0, 255, (1, 4, 84, 84), dtype=torch.uint8)
    expected = torso(obs)

    def forward_only_compile(self, *args, **kwargs):
        def call(*a, **k):
            out = self.forward(*a, **k)
            return out + BrokenBackward.apply(out) * 0

        self._compiled_call_impl = call

    class BrokenBackward(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, grad):
            raise RuntimeError("backward compiler missing")

    monkeypatch.setattr(torch.nn.Module, "compile", forward_only_compile)
    with pytest.warns(UserWarning, match="backward compiler missing"):
        assert try_compile(torso, obs) is False
    assert torch.equal(torso(obs), expected)
    assert all(p.grad is None for p in torso.parameters())


def test_compile_trial_builds_the_graphs_training_reuses(monkeypatch):
    # The trial calls the torso as the rollout (no grad) and the update (grad, backward) will, at
    # their batch sizes: those calls then compile nothing more, so a compiler failure can only
    # surface inside the trial, where it falls back to eager. Dynamo's tracing and guards are
    # real here; only the code generation is skipped (the "eager" backend).
    from torch._dynamo.testing import CompileCounterWithBackend

    counter = CompileCounterWithBackend("eager")
    compile_module = torch.nn.Module.compile
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self: compile_module(self, backend=counter))
    torch._dynamo.reset()
    torso = NatureCNN(4)
    obs = torch.randint(0, 255, (1, 4, 84, 84), dtype=torch.uint8)
    assert try_compile(torso, obs, batch_sizes=(8, 64)) is True
    assert all(p.grad is None for p in torso.parameters())
    compiled = counter.frame_count
    assert compiled == 2  # one graph per grad mode
    for _ in range(2):
        with torch.no_grad():
            torso(obs.repeat(8, 1, 1, 1))
        torso(obs.repeat(64, 1, 1, 1)).sum().backward()
    assert counter.frame_count == compiled
    torch._dynamo.reset()


def test_bf16_is_ignored_off_cuda_and_training_runs(tmp_path):
    with pytest.warns(UserWarning, match="only applies on CUDA"):
        assert check_bf16(True, torch.device("cpu")) is False
    assert check_bf16(False, torch.device("cpu")) is False
    with autocast(True, torch.device("cpu")):
        assert not torch.is_autocast_enabled()
    cfg = load_config("cartpole", ["ppo.total_steps=256", "perf.bf16=true"])
    with pytest.warns(UserWarning, match="only applies on CUDA"):
        result = train(cfg, tmp_path / "run", device="cpu", progress=False)
    assert result.global_step == 256


@pytest.mark.slow
def test_compiled_torso_trains_with_aux_heads_and_diagnostics(tmp_path):
    # A real torch.compile (CPU inductor where a compiler exists, else the eager fallback), with
    # gradient diagnostics, which take several gradients of one graph.
    cfg = load_config(
        "cartpole",
        [
            "ppo.total_steps=512",
            "perf.compile=true",
            "aux.enabled=true",
            "aux.diagnostics_every=1",
            "aux.tasks.reward_prediction.weight=1.0",
            "aux.batch_size=8",
        ],
    )
    result = train(cfg, tmp_path / "run", device="cpu", progress=False)
    assert result.global_step == 512


@pytest.mark.parametrize("threads", [2, 3])
def test_initial_weights_do_not_depend_on_the_thread_count(threads):
    """Same seed, same weights, whatever torch's thread count when the model is built (the QR of
    orthogonal init rounds differently on more threads; CartPole then ended at 329 vs 500)."""
    before = torch.get_num_threads()

    def build(n: int) -> dict[str, torch.Tensor]:
        torch.set_num_threads(n)
        torch.manual_seed(0)
        return NatureCNN(4).state_dict()

    try:
        one, many = build(1), build(threads)
    finally:
        torch.set_num_threads(before)
    assert one.keys() == many.keys()
    for name in one:
        assert torch.equal(one[name], many[name]), name


def test_bf16_only_where_the_gpu_has_it(monkeypatch):
    # torch.cuda.is_bf16_supported() also says yes where bf16 is only emulated (V100, T4).
    from auxrl.perf import check_bf16

    cuda = torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla V100")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 0))
    with pytest.warns(UserWarning, match="Tesla V100 has no native bf16; running in float32"):
        assert check_bf16(True, cuda) is False
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert check_bf16(True, cuda) is True
    assert check_bf16(False, cuda) is False
    with pytest.warns(UserWarning, match="only applies on CUDA"):
        assert check_bf16(True, torch.device("cpu")) is False
