"""Speed settings: CPU threads, and opt-in speed-ups for the GPU path that fall back cleanly.

- ``perf.threads``: torch's CPU thread count (:func:`torch_threads`). By default a small MLP gets
  one thread (its parallel regions are too small to pay for waking more), and a CNN every core
  the process may use (its update dominates the time, and the emulator threads sleep meanwhile).
- ``perf.compile``: ``torch.compile`` the torso (the only heavy module; heads are a few linear
  layers). If compilation fails (no compiler, an unsupported platform) the run goes on eagerly
  with a warning.
- ``perf.bf16``: bfloat16 autocast for the forward passes on CUDA (the rollout's and each
  minibatch's torso passes; backward, the balancer and the optimizer step run outside it). The
  torsos compute in bf16; every head (PPO's and the auxiliary tasks') runs its matmuls in float32
  on ``features.float()`` (:func:`float32`), so logits, values and the losses on them are float32.
  Ignored, with a warning, off CUDA.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import torch
from torch import nn

if TYPE_CHECKING:
    from auxrl.config import Config

T = TypeVar("T")

# Set by users who pin threads themselves: auxrl then leaves torch's thread count alone.
THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. under taskset or a container)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def torch_threads(cfg: Config) -> int | None:
    """The torch CPU thread count a run uses (None: leave torch's own setting).

    ``perf.threads`` when set; else None when ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` is set (the
    user's choice stands); else 1 for the ``mlp`` torso (its matrices are too small to gain from
    threads, while every parallel region costs a wake-up of each thread); else every core this
    process may use: a CNN's update dominates the time and the emulator threads sleep while it
    runs (measured on a quiet 2-core machine, Breakout with all heads: 247 SPS with 2 threads,
    148 with 1; benchmarks/results/threads-*).
    """
    if cfg.perf.threads > 0:
        return cfg.perf.threads
    if any(os.environ.get(name) for name in THREAD_ENV_VARS):
        return None
    if cfg.model.torso == "mlp":
        return 1
    return available_cores()


def set_torch_threads(threads: int | None) -> Callable[[], None]:
    """Set torch's CPU thread count (None: leave it); returns a function that restores the previous
    count, so that ``auxrl.train`` in a notebook leaves the notebook's own setting as it was."""
    before = torch.get_num_threads()
    if threads is not None and threads != before:
        torch.set_num_threads(threads)

    def restore() -> None:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)

    return restore


def try_compile(
    torso: nn.Module, sample_obs: torch.Tensor, batch_sizes: tuple[int, int] = (2, 2), bf16: bool = False
) -> bool:
    """Compile ``torso`` in place (state_dict keys unchanged); True if it runs compiled.

    ``batch_sizes``: the rollout's and the PPO minibatch's torso batch. The trial calls the torso as
    training will, so that the graphs compiled here are the ones it reuses and a compiler failure
    falls back to eager here rather than crashing the first rollout or update: dynamo guards on
    sizes, strides, grad mode and autocast, so a call differing in any of them compiles anew. The
    rollout's call runs without grad, the minibatch's with a backward (the backward graph compiles
    at the first backward), both under the run's bf16 autocast. Other sizes (an auxiliary task's
    batch, a short last minibatch) still compile at their first call.
    """
    device = sample_obs.device
    try:
        # Donated buffers let a compiled backward free its saved tensors, so a graph cannot be
        # differentiated twice; a user's aux task may do that (retain_graph=True). Memory only.
        # The option exists from torch 2.5 on; setting an unknown option raises.
        import torch._functorch.config as functorch_config

        if hasattr(functorch_config, "donated_buffer"):
            functorch_config.donated_buffer = False
        torso.compile()
        # Contiguous batches (repeat, not expand: a stride-0 batch would compile a graph of its
        # own); size 1 is avoided, as dynamo specialises size-1 dimensions.
        rollout, minibatch = (max(2, n) for n in batch_sizes)
        with torch.no_grad(), autocast(bf16, device):
            torso(sample_obs.repeat(rollout, *[1] * (sample_obs.dim() - 1)))
        with autocast(bf16, device):
            out = torso(sample_obs.repeat(minibatch, *[1] * (sample_obs.dim() - 1)))
        if out.requires_grad:  # a frozen torso has no backward to compile
            out.float().sum().backward()
        return True
    except Exception as err:  # any compiler failure means: run eagerly
        torso._compiled_call_impl = None  # undo Module.compile
        torch._dynamo.reset()
        warnings.warn(
            f"perf.compile: torch.compile failed, running eagerly ({type(err).__name__}: {err})", stacklevel=2
        )
        return False
    finally:
        for p in torso.parameters():  # the trial backward leaves no gradient behind
            p.grad = None


def autocast(enabled: bool, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA when enabled, else a no-op context.

    For forward passes only (PyTorch's advice): the trainer opens one around the rollout and one
    around each minibatch's forward passes and losses (auxrl/learner.py); backward,
    ``autograd.grad``, the balancer and ``optimizer.step`` run outside. So the bf16 copies of the
    weights that autocast caches for a block are dropped when it closes, before the next step
    changes the weights.
    """
    if enabled and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def float32(head: Callable[..., T], *inputs: torch.Tensor) -> T:
    """``head(*inputs)`` in float32, also inside a bf16 autocast block (``perf.bf16``).

    Autocast runs every matmul in bf16 whatever its inputs' dtype, and a bf16 output carries an
    8-bit mantissa (a value of ~20 in steps of 0.125, logits and Q-values as coarse), which would
    go on into GAE and the losses. So the heads read ``features.float()`` (floating inputs are
    cast; a float32 tensor is passed as it is) with autocast off; only the torsos, where the
    time goes, compute in bf16. Outside autocast this is ``head(*inputs)`` on float32 inputs.
    """
    args = [x.float() if x.is_floating_point() else x for x in inputs]
    device_type = args[0].device.type
    if not _autocast_enabled(device_type):
        return head(*args)
    with torch.autocast(device_type, enabled=False):
        return head(*args)


def _autocast_enabled(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4: no device argument; the CUDA and CPU flags apart
        return torch.is_autocast_cpu_enabled() if device_type == "cpu" else torch.is_autocast_enabled()


def check_bf16(enabled: bool, device: torch.device) -> bool:
    if enabled and device.type != "cuda":
        warnings.warn("perf.bf16 only applies on CUDA; running in float32 on this device.", stacklevel=2)
        return False
    # Native bf16 from Ampere (compute capability 8) on; is_bf16_supported() also says yes where
    # it is only emulated (V100, T4), which is slower than float32.
    if enabled and not torch.version.hip and torch.cuda.get_device_capability(device)[0] < 8:
        warnings.warn(
            f"perf.bf16: {torch.cuda.get_device_name(device)} has no native bf16; running in float32.",
            stacklevel=2,
        )
        return False
    return enabled
