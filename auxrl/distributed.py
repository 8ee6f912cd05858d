"""Training across processes, GPUs and machines with torch.distributed: one small interface.

The trainer holds one :class:`Dist` and never tests ranks itself. ``Dist.from_env()`` reads the
variables ``torchrun`` (or ``auxrl train --nproc N``, which calls the same launcher) sets; a
plain process gets the single-process ``Dist``, whose methods do nothing, so the ordinary path
has no process group and no extra work.

Semantics (as CleanRL's ``ppo_atari_multigpu.py``):

- every rank steps its own ``env.num_envs`` envs, seeded ``seed + rank``, and samples its own
  actions and aux windows from RNG streams seeded ``seed + rank``; the model starts from the same
  weights everywhere (built from ``seed``);
- ``ppo.total_steps`` counts the env steps of all ranks;
- every rank computes PPO's and each head's gradients on its own data; one flattened all-reduce
  averages them; then PPO's clip and the balancer run on the averages, identically on every rank
  (CleanRL averages, then clips), and every rank takes the same optimizer step, so the weights
  stay identical;
- the finished episodes of every rank are gathered after each rollout, so the logs, the LR
  schedule, curriculum promotion and stopping are the same on every rank;
- rank 0 alone writes TensorBoard, checkpoints, the config and the progress bar.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as torch_dist
from torch import nn


def check_gpus(local_processes: int, device: str = "auto") -> None:
    """One GPU per local process: NCCL refuses two ranks on one GPU, so refuse it here, with the fix."""
    if device == "cpu" or not torch.cuda.is_available():
        return
    gpus = torch.cuda.device_count()
    if local_processes > gpus:
        raise ValueError(
            f"{local_processes} processes on this machine need {local_processes} GPUs (one each), "
            f"but {gpus} {'is' if gpus == 1 else 'are'} visible. Use --nproc {gpus} (torchrun: "
            f"--nproc-per-node {gpus}), or --device cpu to train on the CPU."
        )


def local_gpu(local_rank: int, device: str = "auto") -> int:
    """The GPU of this local rank. torchrun says how many processes share the machine
    (``LOCAL_WORLD_SIZE``): each takes GPU ``LOCAL_RANK``, and more processes than GPUs are
    refused. A launcher that does not say so and shows each process one GPU (e.g. Slurm's
    ``--gpus-per-task=1``) gets that GPU."""
    local_world = os.environ.get("LOCAL_WORLD_SIZE")
    if local_world is None and torch.cuda.device_count() == 1:
        return 0
    check_gpus(int(local_world) if local_world else local_rank + 1, device)
    return local_rank


@dataclass
class Dist:
    """This process's place in the run; ``world_size == 1`` means no process group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    gpu: int = 0  # CUDA device index of this rank (local_gpu)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_env(cls, device: str = "auto") -> Dist:
        """Join the process group torchrun set up (``WORLD_SIZE`` > 1), else a single process.

        Backend: ``nccl`` when training on CUDA (one GPU per local rank), ``gloo`` on CPU.
        """
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        cuda = device != "cpu" and torch.cuda.is_available()
        gpu = local_gpu(local, device) if cuda else 0
        if cuda:
            torch.cuda.set_device(gpu)
        if not torch_dist.is_initialized():
            torch_dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(minutes=30))
        return cls(rank, world, local, gpu)

    def device(self, device: torch.device) -> torch.device:
        """One GPU per local rank."""
        if device.type == "cuda" and self.enabled:
            return torch.device("cuda", self.gpu)
        return device

    def average_(self, tensors: list[torch.Tensor]) -> None:
        """Average ``tensors`` (gradients) over ranks in place, with one flattened all-reduce.

        Every rank passes the same list (same heads run everywhere, so the same shapes).
        """
        if not self.enabled or not tensors:
            return
        flat = torch.cat([t.reshape(-1) for t in tensors])
        torch_dist.all_reduce(flat, op=torch_dist.ReduceOp.SUM)
        flat /= self.world_size
        for t, avg in zip(tensors, flat.split([t.numel() for t in tensors]), strict=True):
            t.copy_(avg.view_as(t))

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The mean of a tensor over ranks (e.g. approx_kl, so early stopping agrees)."""
        if not self.enabled:
            return value
        out = value.detach().clone().float()
        torch_dist.all_reduce(out, op=torch_dist.ReduceOp.SUM)
        return out / self.world_size

    def gather(self, items: list) -> list:
        """Every rank's list, concatenated in rank order (small Python objects only)."""
        if not self.enabled:
            return items
        parts: list = [None] * self.world_size
        torch_dist.all_gather_object(parts, items)
        return [x for part in parts for x in part]

    def share(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (the others' ``obj`` is ignored; picklable objects)."""
        if not self.enabled:
            return obj
        box = [obj if self.is_main else None]
        torch_dist.broadcast_object_list(box, src=0)
        return box[0]

    def close(self, barrier: bool = False) -> None:
        """Leave the process group. ``barrier=True`` on a normal end: every rank waits until all
        are done (rank 0 may still be writing the last checkpoint), since gloo aborts a rank whose
        peer tears the group down under it. Not after an error: the others may never arrive."""
        if self.enabled and torch_dist.is_initialized():
            if barrier:
                torch_dist.barrier()
            torch_dist.destroy_process_group()


def launch(nproc: int, argv: list[str]) -> None:
    """Run ``python -m auxrl <argv>`` in ``nproc`` local workers with torch's own launcher (the
    ``torch.distributed.run`` API behind ``torchrun --standalone``); returns when all are done.

    A worker that fails takes the others down (the launcher's rule); the error then names the
    first failed rank and its exit code, and the run's last checkpoint resumes.
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    args = get_args_parser().parse_args(
        ["--standalone", f"--nproc-per-node={nproc}", "--module", "auxrl", *argv]
    )
    # What the launcher sets for each worker anyway when it is unset, without its 4-line banner
    # (auxrl's own thread setting, perf.threads, applies inside each worker).
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        run(args)
    except SignalException as err:  # Ctrl-C or a kill: the workers were stopped; the last checkpoint resumes
        from auxrl.stopping import Stopped

        raise Stopped(int(err.sigval)) from None
    except ChildFailedError as err:
        rank, failure = err.get_first_failure()
        raise WorkerFailed(
            f"worker rank {rank} of {nproc} exited with code {failure.exitcode} (its output is above); "
            f"the other workers were stopped. Fix the cause, then continue from the last checkpoint "
            f"with `auxrl train --resume RUN_DIR --nproc {nproc}`."
        ) from None


class WorkerFailed(RuntimeError):
    """A worker process of a multi-process run failed."""


def weights_checksum(module: nn.Module) -> float:
    """A float64 sum over every parameter and buffer: equal on ranks whose weights are equal."""
    with torch.no_grad():
        return float(sum(t.double().sum() * (i + 1) for i, t in enumerate(module.state_dict().values())))
