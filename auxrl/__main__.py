"""``python -m auxrl ...`` (what ``torchrun -m auxrl train ...`` runs on every rank, and each worker
of ``auxrl train --nproc N``: see :func:`auxrl.distributed.launch`)."""

import os
import signal
import sys
import threading
import time

LAUNCHER_PID = "AUXRL_LAUNCHER_PID"  # auxrl.distributed.LAUNCHER_PID (read here without torch)
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def follow_launcher(launcher: int, interval: float = 0.5) -> None:
    """Make this worker of ``auxrl train --nproc N`` die with its launcher (pid ``launcher``), even
    when the launcher is killed with SIGKILL: on Linux the kernel sends this process SIGKILL when
    its parent dies (``PR_SET_PDEATHSIG``); on every platform a daemon thread checks every
    ``interval`` seconds that the launcher is still the parent, and else kills this worker's
    process group (the worker and its env subprocesses). A worker that dies so leaves the run
    resumable: checkpoints are written atomically."""
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):  # no prctl in this libc: the thread below still watches
            pass
    if os.getppid() != launcher:  # gone before the line above took hold
        _die(launcher)
    threading.Thread(target=_watch, args=(launcher, interval), name="auxrl-launcher", daemon=True).start()


def _watch(launcher: int, interval: float) -> None:
    while os.getppid() == launcher:
        time.sleep(interval)
    _die(launcher)


def _die(launcher: int) -> None:
    try:
        print(
            f"auxrl: worker rank {os.environ.get('RANK', '?')}: its launcher (pid {launcher}) is gone; "
            f"stopping (the run's last checkpoint resumes).",
            file=sys.stderr,
            flush=True,
        )
    except (OSError, ValueError):  # the launcher's terminal may be gone too
        pass
    if os.getpgid(0) == os.getpid():  # its own process group (launch starts each worker so)
        os.killpg(0, signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    launcher = os.environ.pop(LAUNCHER_PID, None)  # popped: not for the processes this one starts
    if launcher:
        follow_launcher(int(launcher))

    from auxrl.cli import main

    code = main()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # A rank of a multi-process run ends here, past Python's teardown: gloo's worker threads
        # may still drop their last tensors then, and doing so while the interpreter shuts down
        # aborts the process (std::terminate, exit -6) after a run that finished well. Everything
        # of the run is written and closed by now (checkpoints, events, envs, the process group).
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
