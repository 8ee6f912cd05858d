"""Where a run computes: one home for turning ``--device`` (or a ``torch.device``) into a device.

Every choice that depends on the device (the process group's backend, the GPU of a rank, bf16,
the env workers' start method) reads ``resolve_device(...).type``, never the string it came from:
``torch.device("cpu") != "cpu"`` is True, so comparing strings sent a CPU run under torchrun on a
GPU node to NCCL.
"""

from __future__ import annotations

import torch


def resolve_device(name: str | torch.device) -> torch.device:
    """``auto``: CUDA when PyTorch sees a GPU, else the CPU; ``cpu``, ``cuda``, ``cuda:N`` or a
    ``torch.device`` as given (a CUDA name where PyTorch sees no GPU is refused)."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r}: PyTorch sees no CUDA device here. Use cpu or auto.")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ValueError(
            f"device {name!r}: not a device name torch knows; use auto, cpu, cuda or cuda:N."
        ) from None
