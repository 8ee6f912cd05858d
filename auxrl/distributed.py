"""Training across processes, GPUs and machines with torch.distributed: one small interface.

The trainer holds one :class:`Dist` and never tests ranks itself. ``Dist.from_env()`` reads the
variables ``torchrun`` (or :func:`launch`, auxrl's launcher behind ``auxrl train --nproc N``) sets; a
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
import inspect
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as torch_dist
from torch import nn

from auxrl.device import resolve_device


def check_gpus(local_processes: int, device: str | torch.device = "auto") -> None:
    """One GPU per local process: NCCL refuses two ranks on one GPU, so refuse it here, with the fix."""
    if not torch.cuda.is_available() or resolve_device(device).type != "cuda":
        return
    gpus = torch.cuda.device_count()
    if local_processes > gpus:
        raise ValueError(
            f"{local_processes} processes on this machine need {local_processes} GPUs (one each), "
            f"but {gpus} {'is' if gpus == 1 else 'are'} visible. Use --nproc {gpus} (torchrun: "
            f"--nproc-per-node {gpus}), or --device cpu to train on the CPU."
        )


def local_gpu(local_rank: int, device: str | torch.device = "auto") -> int:
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
    def from_env(cls, device: str | torch.device = "auto") -> Dist:
        """Join the process group torchrun set up (``WORLD_SIZE`` > 1), else a single process.

        Backend: ``nccl`` when training on CUDA (one GPU per local rank, bound to the group with
        ``device_id``, so its collectives and barriers know their GPU), ``gloo`` on CPU; decided
        by ``resolve_device(device).type``, the device the model will be on.
        """
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        cuda = resolve_device(device).type == "cuda"
        gpu = local_gpu(local, device) if cuda else 0
        if cuda:
            torch.cuda.set_device(gpu)
        if not torch_dist.is_initialized():
            options: dict[str, Any] = {"timeout": datetime.timedelta(minutes=30)}
            if cuda and "device_id" in inspect.signature(torch_dist.init_process_group).parameters:
                options["device_id"] = torch.device("cuda", gpu)  # torch >= 2.3
            torch_dist.init_process_group("nccl" if cuda else "gloo", **options)
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


LAUNCHER_PID = "AUXRL_LAUNCHER_PID"  # set for the workers of launch(); auxrl/__main__.py reads it
STOP_GRACE_S = 5.0  # how long stopped workers get before SIGKILL
# What the launcher forwards to its workers (the signals torch's launcher forwarded).
FORWARDED = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT") if hasattr(signal, name)
)
LOOPBACK = "127.0.0.1"


def usable_cpus() -> int:
    """The CPU cores this process may run on (its affinity on Linux, else all of the machine's)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS, Windows
        return os.cpu_count() or 1


def loopback_interface() -> str:
    """The name of the loopback interface (``lo`` on Linux, ``lo0`` on macOS and the BSDs)."""
    try:
        names = {name for _, name in socket.if_nameindex()}
    except (AttributeError, OSError):
        names = set()
    for name in ("lo", "lo0"):
        if name in names:
            return name
    return "lo0" if sys.platform == "darwin" else "lo"


def launch(nproc: int, argv: list[str]) -> None:
    """Run ``python -m auxrl <argv>`` in ``nproc`` local workers and supervise them; returns when
    all are done.

    auxrl's own small launcher for one machine (several machines: ``torchrun``). It hosts the
    rendezvous store on 127.0.0.1 (a port the system picks), and the workers' gloo / NCCL sockets
    use the loopback interface (``GLOO_SOCKET_IFNAME`` / ``NCCL_SOCKET_IFNAME``, unless set): nothing
    listens on another interface. Each worker runs in its own session and gets ``RANK``,
    ``LOCAL_RANK``, ``WORLD_SIZE``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR`` / ``MASTER_PORT`` (the
    store; ``TORCHELASTIC_USE_AGENT_STORE`` makes every rank a client of it) and
    ``AUXRL_LAUNCHER_PID``, by which it dies with the launcher (``auxrl/__main__.py``).

    A worker that fails takes the others down; the error then names the first failed rank and its
    exit code, and the run's last checkpoint resumes. SIGINT, SIGTERM, SIGHUP or SIGQUIT to the
    launcher is forwarded to every worker and raises :class:`~auxrl.stopping.Stopped`. Workers
    still running when the launcher leaves, by any path it sees, get SIGTERM, then SIGKILL after
    ``STOP_GRACE_S`` (at once on a second signal).
    """
    cpus = usable_cpus()
    if nproc > cpus:
        print(
            f"auxrl: warning: --nproc {nproc} starts {nproc} processes but this machine gives auxrl "
            f"{cpus} CPU core{'s' if cpus != 1 else ''}: they will share the cores and each run slower; "
            f"use --nproc {cpus} or fewer (env.num_envs sets the envs per process).",
            file=sys.stderr,
        )
    received: list[int] = []  # signals to the launcher, in order
    previous = _catch(FORWARDED, received.append)
    workers: list[subprocess.Popen] = []
    stop_with: int = signal.SIGTERM
    try:
        store = _loopback_store()
        env = {
            **os.environ,
            "WORLD_SIZE": str(nproc),
            "LOCAL_WORLD_SIZE": str(nproc),
            "GROUP_RANK": "0",
            "MASTER_ADDR": LOOPBACK,
            "MASTER_PORT": str(store.port),
            "TORCHELASTIC_USE_AGENT_STORE": str(True),  # every rank connects to the store above
            LAUNCHER_PID: str(os.getpid()),
        }
        # OMP_NUM_THREADS as torch's launcher set it (auxrl's own perf.threads applies in each worker).
        for key, value in (
            ("OMP_NUM_THREADS", "1"),
            ("GLOO_SOCKET_IFNAME", loopback_interface()),
            ("NCCL_SOCKET_IFNAME", loopback_interface()),
        ):
            env.setdefault(key, value)
        exits: queue.Queue[tuple[int, int]] = queue.Queue()  # (rank, exit code) as each worker ends
        for rank in range(nproc):
            if received:
                break
            worker = subprocess.Popen(
                [sys.executable, "-m", "auxrl", *argv],
                env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
                start_new_session=True,  # a Ctrl-C in the terminal reaches the launcher, which forwards it
            )
            workers.append(worker)
            threading.Thread(target=lambda w=worker, r=rank: exits.put((r, w.wait())), daemon=True).start()
        failed, finished = None, 0
        while not received and failed is None and finished < nproc:
            try:
                rank, code = exits.get(timeout=0.1)
            except queue.Empty:
                continue
            finished += code == 0
            failed = (rank, code) if code != 0 else None
        if received:  # Ctrl-C or a kill: the workers are stopped; the last checkpoint resumes
            from auxrl.stopping import Stopped

            stop_with = received[0]
            _stop(workers, stop_with, received)
            raise Stopped(stop_with)
        if failed is not None:
            _stop(workers, signal.SIGTERM, received)
            rank, code = failed
            raise WorkerFailed(
                f"worker rank {rank} of {nproc} exited with code {code} (its output is above); "
                f"the other workers were stopped. Fix the cause, then continue from the last checkpoint "
                f"with `auxrl train --resume RUN_DIR --nproc {nproc}`."
            )
    except KeyboardInterrupt:  # Python's own Ctrl-C (launch() outside the main thread): pass it on
        if not received:
            stop_with = signal.SIGINT
        raise
    finally:
        _stop(workers, stop_with, received)  # nothing left to stop on a normal end
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def _loopback_store() -> torch_dist.TCPStore:
    """The rendezvous store, listening on 127.0.0.1 only (its ``port`` picked by the system).

    ``TCPStore(host, 0, is_master=True)`` listens on every interface; a socket bound here first
    and handed over (``master_listen_fd``) keeps it on loopback."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.bind((LOOPBACK, 0))
        listener.listen()
        port = listener.getsockname()[1]
        store = torch_dist.TCPStore(
            LOOPBACK,
            port,
            None,
            True,
            wait_for_workers=False,
            multi_tenant=True,
            master_listen_fd=listener.fileno(),
        )
    except BaseException:
        listener.close()
        raise
    listener.detach()  # the store owns (and closes) the descriptor now
    return store


def _catch(signals: tuple[int, ...], record: Callable[[int], None]) -> dict[int, Any]:
    """Record ``signals`` instead of their usual effect; returns the handlers they had. Only in the
    main thread, and a signal the process was started with ignored stays ignored (as
    :class:`~auxrl.stopping.StopSignals` does)."""
    previous: dict[int, Any] = {}
    if threading.current_thread() is not threading.main_thread():
        return previous
    for sig in signals:
        if signal.getsignal(sig) is not signal.SIG_IGN:
            previous[sig] = signal.signal(sig, lambda signum, frame: record(signum))
    return previous


def _stop(workers: list[subprocess.Popen], sig: int, received: list[int]) -> None:
    """Send ``sig`` to the workers still running (each with its process group: its env
    subprocesses too), wait up to ``STOP_GRACE_S`` (less on another signal), then SIGKILL."""
    live = [w for w in workers if w.returncode is None]
    for worker in live:
        _signal(worker, sig)
    deadline, seen = time.monotonic() + STOP_GRACE_S, len(received)
    while any(w.returncode is None for w in live) and time.monotonic() < deadline and len(received) == seen:
        time.sleep(0.02)
    for worker in live:
        if worker.returncode is None:
            _signal(worker, signal.SIGKILL)
    for worker in live:
        try:
            worker.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:  # stuck in the kernel (a wedged GPU): nothing more to do
            print(f"auxrl: warning: worker pid {worker.pid} did not end after SIGKILL.", file=sys.stderr)


def _signal(worker: subprocess.Popen, sig: int) -> None:
    try:
        if hasattr(os, "killpg"):
            os.killpg(worker.pid, sig)  # the worker leads its own process group (its own session)
        else:
            worker.send_signal(sig)
    except (ProcessLookupError, PermissionError):  # ended (and reaped) meanwhile
        pass


class WorkerFailed(RuntimeError):
    """A worker process of a multi-process run failed."""


def weights_checksum(module: nn.Module) -> float:
    """A float64 sum over every parameter and buffer: equal on ranks whose weights are equal."""
    with torch.no_grad():
        return float(sum(t.double().sum() * (i + 1) for i, t in enumerate(module.state_dict().values())))
