"""Opt-in speed-ups for the GPU path, each falling back cleanly where it is unavailable.

- ``perf.compile``: ``torch.compile`` the torso (the only heavy module; heads are a few linear
  layers). If compilation fails (no compiler, an unsupported platform) the run goes on eagerly
  with a warning.
- ``perf.bf16``: bfloat16 autocast for forward passes on CUDA. Losses and distributions stay
  in float32 (the heads cast their outputs). Ignored, with a warning, off CUDA.
"""

from __future__ import annotations

import contextlib
import warnings

import torch
from torch import nn


def try_compile(torso: nn.Module, sample_obs: torch.Tensor) -> bool:
    """Compile ``torso`` in place (state_dict keys unchanged); True if it runs compiled."""
    try:
        # The gradient diagnostics take several gradients of one graph (retain_graph=True),
        # which compiled backward graphs with donated buffers refuse.
        import torch._functorch.config as functorch_config

        functorch_config.donated_buffer = False
        torso.compile()
        with torch.no_grad():
            torso(sample_obs)  # compilation happens here: fail now rather than mid-run
        return True
    except Exception as err:  # any compiler failure means: run eagerly
        torso._compiled_call_impl = None  # undo Module.compile
        torch._dynamo.reset()
        warnings.warn(
            f"perf.compile: torch.compile failed, running eagerly ({type(err).__name__}: {err})", stacklevel=2
        )
        return False


def autocast(enabled: bool, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA when enabled, else a no-op context."""
    if enabled and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def check_bf16(enabled: bool, device: torch.device) -> bool:
    if enabled and device.type != "cuda":
        warnings.warn("perf.bf16 only applies on CUDA; running in float32 on this device.", stacklevel=2)
        return False
    return enabled
