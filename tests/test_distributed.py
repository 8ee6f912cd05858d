"""Two processes on the CPU (gloo): identical weights, every rank's games logged, resume, failure;
the launcher of ``--nproc``: loopback only, and no worker outlives it."""

from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from auxrl import checkpoint
from auxrl.plot import read_scalars
from auxrl.tasks.base import AuxOutput, AuxTask, Needs, Sequences, TaskContext

# Each test starts several processes (a launcher and its workers).
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


class FailingTask(AuxTask):
    """An inverse-dynamics head whose rank 1 raises once ``AUXRL_TEST_FAIL_AFTER`` losses ran."""

    name = "failing"
    needs = Needs(sequence_length=1, replay=True)

    def __init__(self, cfg, ctx: TaskContext) -> None:
        super().__init__(cfg, ctx)
        self.head = nn.Linear(2 * ctx.feature_dim, int(ctx.action_space.n))
        self.calls = 0

    def loss(self, seq: Sequences, encode) -> AuxOutput:
        self.calls += 1
        fail_after = int(os.environ.get("AUXRL_TEST_FAIL_AFTER", "0"))
        if fail_after and os.environ.get("RANK") == "1" and self.calls > fail_after:
            raise RuntimeError("simulated worker crash")
        features = encode(seq.obs.flatten(0, 1)).reshape(seq.obs.shape[0], -1)
        return AuxOutput(F.cross_entropy(self.head(features), seq.actions[:, 0].long()))


def _env(fail_after: int = 0) -> dict[str, str]:
    return {
        **os.environ,
        # tests/ itself: the workers import FailingTask from this module as test_distributed (a
        # package installed with crafter, opensimplex, ships a top-level `tests` that would
        # shadow this folder as `tests.`).
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
        "AUXRL_TEST_FAIL_AFTER": str(fail_after),
    }


def _cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "auxrl", "train", *args, "--nproc", "2", "--no-progress", "--device", "cpu"]


def _train(*args: str, fail_after: int = 0) -> subprocess.CompletedProcess:
    return subprocess.run(
        _cmd(*args), env=_env(fail_after), cwd=ROOT, capture_output=True, text=True, timeout=600
    )


TASK = [
    "aux.enabled=true",
    "aux.tasks.failing.type=test_distributed:FailingTask",
    "aux.tasks.failing.weight=0.5",
    "ppo.update_epochs=4",
    "log.checkpoint_every=512",
]


def test_two_ranks_stay_identical_log_all_games_and_resume(tmp_path):
    run = tmp_path / "run"
    # 8 envs x 32 steps per rank and update: 512 env steps per update for both ranks together.
    done = _train("cartpole", "ppo.total_steps=2048", *TASK, "--run-dir", str(run))
    assert done.returncode == 0, done.stderr[-3000:]
    saved = checkpoint.load(run)
    info = saved["distributed"]
    assert saved["state"]["global_step"] == 2048 and info["world_size"] == 2
    assert info["checksums"][0] == info["checksums"][1]  # weights identical on both ranks
    steps, returns = read_scalars(run, "charts/episodic_return")
    assert min(info["episodes_per_rank"]) > 0  # both ranks played games ...
    assert len(returns) == sum(info["episodes_per_rank"]) == saved["state"]["episodes"]  # ... all logged
    assert "aux/failing/loss" in {t for t in _tags(run)}

    resumed = _train("--resume", str(run), "ppo.total_steps=3072")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    saved = checkpoint.load(run)
    assert saved["state"]["global_step"] == 3072
    assert saved["distributed"]["checksums"][0] == saved["distributed"]["checksums"][1]
    steps, _ = read_scalars(run, "charts/SPS")
    assert list(steps) == list(range(512, 3073, 512))  # one curve, no step twice


def test_a_dead_worker_stops_the_run_and_the_last_checkpoint_resumes(tmp_path):
    run = tmp_path / "run"
    # Rank 1 dies in its 3rd update (4 aux losses per update), after the checkpoint at 1024.
    failed = _train("cartpole", "ppo.total_steps=2048", *TASK, "--run-dir", str(run), fail_after=9)
    assert failed.returncode == 1
    assert "worker rank 1 of 2 exited" in failed.stderr and "--resume" in failed.stderr
    assert checkpoint.load(run)["state"]["global_step"] == 1024
    resumed = _train("--resume", str(run))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert checkpoint.load(run)["state"]["global_step"] == 2048


def _share_worker(rank: int, init_file: str, out_dir: str) -> None:
    from auxrl.distributed import Dist

    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    dist = Dist(rank=rank, world_size=2, local_rank=rank)
    # Rank 1 sees another (or no) checkpoint: it must still resume from rank 0's.
    mine = ("resume", {"step": 1024, "w": torch.arange(4.0)}) if rank == 0 else ("fresh", None)
    torch.save(dist.share(mine), Path(out_dir) / f"rank{rank}.pt")
    dist.close(barrier=True)


def test_every_rank_resumes_from_the_checkpoint_rank_0_loaded(tmp_path):
    import torch.multiprocessing as mp

    from auxrl.distributed import Dist

    assert Dist().share(("fresh", None)) == ("fresh", None)  # one process: no collective
    mp.spawn(_share_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    for rank in (0, 1):
        start, saved = torch.load(tmp_path / f"rank{rank}.pt")
        assert start == "resume" and saved["step"] == 1024 and saved["w"].tolist() == [0, 1, 2, 3]


def _rollout_obs(rank: int, rollout: int):
    """Rank ``rank``'s observations in rollout ``rollout``: another mean, scale and size per rank."""
    import numpy as np

    rng = np.random.default_rng(10 * rank + rollout)
    return rng.normal(rank + rollout, 1 + rank, (64 * (rank + 1), 3))


def _norm_worker(rank: int, init_file: str, out_dir: str) -> None:
    from gymnasium.wrappers.utils import RunningMeanStd

    from auxrl.distributed import Dist
    from auxrl.envs import NormStats

    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    dist = Dist(rank=rank, world_size=2, local_rank=rank)
    stats = NormStats(obs=RunningMeanStd(shape=(3,)))
    for i in range(2):  # two rollouts, each rank its own data, a sync after each
        stats.obs.update(_rollout_obs(rank, i))
        stats.sync(dist.gather)
    torch.save(stats.state_dict(), Path(out_dir) / f"norm{rank}.pt")
    dist.close(barrier=True)


def test_normalisation_statistics_are_pooled_over_ranks(tmp_path):
    """Every rank ends with the statistics of all ranks' data, as one process would have them."""
    import numpy as np
    import torch.multiprocessing as mp

    mp.spawn(_norm_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    data = np.concatenate([_rollout_obs(rank, i) for rank in (0, 1) for i in range(2)])
    ranks = [torch.load(tmp_path / f"norm{rank}.pt")["obs"] for rank in (0, 1)]
    for saved in ranks:
        assert saved["count"] == pytest.approx(len(data) + 1e-4)
        assert np.allclose(saved["mean"].numpy(), data.mean(0), atol=1e-5)
        assert np.allclose(saved["var"].numpy(), data.var(0), atol=1e-4)
    assert torch.equal(ranks[0]["mean"], ranks[1]["mean"]) and torch.equal(ranks[0]["var"], ranks[1]["var"])


def _tags(run: Path) -> list[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run), size_guidance={"scalars": 0})
    acc.Reload()
    return acc.Tags()["scalars"]


def test_single_process_has_no_process_group():
    from auxrl.distributed import Dist

    dist = Dist.from_env()
    assert not dist.enabled and dist.is_main
    grad = torch.ones(3)
    p = nn.Parameter(torch.zeros(3))
    p.grad = grad
    dist.average_([p.grad])
    assert p.grad is grad  # untouched: no copy, no collective


def test_more_processes_than_gpus_is_refused_before_spawning(monkeypatch, tmp_path, capsys):
    # NCCL rejects two ranks on one GPU at the first collective; say so before any worker starts.
    from auxrl.cli import main
    from auxrl.distributed import check_gpus

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    check_gpus(1)
    check_gpus(4, "cpu")  # gloo on the CPU: any number
    run = tmp_path / "run"
    assert main(["train", "cartpole", "--nproc", "2", "--run-dir", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "need 2 GPUs" in err and "--nproc 1" in err and "--device cpu" in err
    assert not run.exists()


def test_each_local_rank_gets_its_own_gpu(monkeypatch):
    from auxrl.distributed import local_gpu

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # torchrun --nproc-per-node 4
    assert [local_gpu(r) for r in range(4)] == [0, 1, 2, 3]
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    with pytest.raises(ValueError, match="8 processes on this machine need 8 GPUs"):
        local_gpu(0)
    # A launcher that shows each process its own single GPU (Slurm --gpus-per-task=1).
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert local_gpu(3) == 0


# The launcher of --nproc (auxrl.distributed.launch): loopback only, no orphans, the CPU warning.

LONG_RUN = ["cartpole", "ppo.total_steps=1024000", "log.checkpoint_every=512"]  # 512 steps per update
GONE_WITHIN = 5.0  # seconds from the launcher's SIGKILL until no worker is alive (measured: ~0.02 s)


def _start_long_run(run: Path, log: Path):
    """A --nproc 2 run far from its end, once both workers trained an update (the process group is
    up, a checkpoint exists); returns the launcher and its workers (psutil processes)."""
    psutil = pytest.importorskip("psutil")
    with open(log, "w") as out:
        launcher = subprocess.Popen(
            _cmd(*LONG_RUN, "--run-dir", str(run)), env=_env(), cwd=ROOT, stdout=out, stderr=out
        )
    deadline = time.monotonic() + 300
    while not list((run / "checkpoints").glob("step_*.pt")):
        if launcher.poll() is not None or time.monotonic() > deadline:
            launcher.kill()
            raise AssertionError(f"no checkpoint (exit {launcher.poll()}): {log.read_text()[-3000:]}")
        time.sleep(0.05)
    workers = psutil.Process(launcher.pid).children(recursive=True)
    assert len([w for w in workers if w.ppid() == launcher.pid]) == 2
    return launcher, workers


def _alive(procs) -> list:
    import psutil

    alive = []
    for proc in procs:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(proc)
        except psutil.NoSuchProcess:
            pass
    return alive


def _wait_gone(procs, within: float) -> float | None:
    """Seconds until none of ``procs`` is alive, or None if some still are after ``within``."""
    start = time.monotonic()
    while _alive(procs):
        if time.monotonic() - start > within:
            return None
        time.sleep(0.01)
    return time.monotonic() - start


def _kill_all(procs) -> None:
    for proc in _alive(procs):
        proc.kill()


def test_killing_the_launcher_kills_its_workers_and_the_run_resumes(tmp_path):
    run = tmp_path / "run"
    launcher, workers = _start_long_run(run, tmp_path / "log")
    try:
        launcher.kill()  # SIGKILL: the launcher cannot clean up; the workers must go by themselves
        launcher.wait()
        gone = _wait_gone(workers, GONE_WITHIN)
    finally:
        _kill_all(workers)
    assert gone is not None, f"workers alive {GONE_WITHIN} s after the launcher's SIGKILL: {_alive(workers)}"
    step = checkpoint.load(run)["state"]["global_step"]
    assert 0 < step < 1024000
    resumed = _train("--resume", str(run), f"ppo.total_steps={step + 1024}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert checkpoint.load(run)["state"]["global_step"] == step + 1024


_STAND_IN_WORKER = (
    "import os, sys, time\n"
    "sys.platform = 'darwin'  # no PR_SET_PDEATHSIG: the watchdog thread alone, as on macOS\n"
    "from auxrl.__main__ import follow_launcher\n"
    "follow_launcher(os.getppid())\n"
    "print('ready', flush=True)\n"
    "time.sleep(60)\n"
)


def test_the_watchdog_alone_stops_a_worker_whose_launcher_died(tmp_path):
    psutil = pytest.importorskip("psutil")
    launcher = subprocess.Popen(  # a stand-in launcher: starts one worker, says its pid, waits
        [
            sys.executable,
            "-c",
            "import subprocess, sys, time\n"
            f"w = subprocess.Popen([sys.executable, '-c', {_STAND_IN_WORKER!r}], start_new_session=True)\n"
            "print(w.pid, flush=True)\n"
            "time.sleep(60)\n",
        ],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    worker = psutil.Process(int(launcher.stdout.readline()))
    try:
        assert launcher.stdout.readline().strip() == "ready"  # the worker's watchdog runs
        launcher.kill()
        launcher.wait()
        gone = _wait_gone([worker], 3.0)  # polls every 0.5 s
    finally:
        _kill_all([worker])
    assert gone is not None
    assert f"its launcher (pid {launcher.pid}) is gone" in launcher.stderr.read()


def test_a_worker_whose_launcher_is_gone_before_it_starts_stops_at_once():
    # The race: the launcher died before PR_SET_PDEATHSIG took hold (1: not this child's parent).
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "from auxrl.__main__ import follow_launcher\nfollow_launcher(1)\nprint('ran')",
        ],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
        start_new_session=True,
    )
    assert done.returncode == -signal.SIGKILL and "ran" not in done.stdout


def test_a_multi_process_run_listens_on_loopback_only_and_stops_on_sigterm(tmp_path):
    import psutil

    launcher, workers = _start_long_run(tmp_path / "run", tmp_path / "log")
    try:
        procs = [psutil.Process(launcher.pid), *workers]
        sockets = [(proc.pid, conn) for proc in procs for conn in proc.net_connections(kind="tcp")]
        listening = [(pid, conn.laddr) for pid, conn in sockets if conn.status == psutil.CONN_LISTEN]
        assert any(pid == launcher.pid for pid, _ in listening)  # the rendezvous store
        assert all(_loopback(addr.ip) for _, addr in listening), listening
        assert all(_loopback(conn.laddr.ip) for _, conn in sockets), sockets  # gloo's pairs too
        launcher.send_signal(signal.SIGTERM)  # forwarded to the workers; 128 + 15
        assert launcher.wait(60) == 143
        assert _wait_gone(workers, 1.0) is not None  # the launcher waited for them
    finally:
        launcher.kill()
        _kill_all(workers)


def _loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip.split("%")[0])
    return addr.is_loopback or bool(getattr(addr, "ipv4_mapped", None) and addr.ipv4_mapped.is_loopback)


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs CPU affinity (Linux)")
def test_more_processes_than_cpu_cores_warns_and_runs(tmp_path):
    one_core = min(os.sched_getaffinity(0))
    done = subprocess.run(  # --nproc 2 on one core
        _cmd("cartpole", "ppo.total_steps=512", "--run-dir", str(tmp_path / "run")),
        env=_env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        preexec_fn=lambda: os.sched_setaffinity(0, {one_core}),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    warnings = [line for line in done.stderr.splitlines() if line.startswith("auxrl: warning:")]
    assert len(warnings) == 1, done.stderr
    assert "--nproc 2" in warnings[0] and "1 CPU core" in warnings[0] and "--nproc 1 or fewer" in warnings[0]
    assert checkpoint.load(tmp_path / "run")["state"]["global_step"] == 512
