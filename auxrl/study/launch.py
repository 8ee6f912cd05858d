"""Start one command of a study's run on a cluster worker: ``python -m auxrl.study.launch PARENT
IGNORE -- COMMAND...``.

It sets up the signals and then replaces itself with COMMAND (``os.execvp``), so COMMAND is the
process the worker waits for. What ``subprocess.Popen(preexec_fn=...)`` would do, without
running Python between fork and exec in a process with threads (a Ray worker has many), which
can deadlock:

- SIGINT at its default and no signal blocked, so ``auxrl train`` turns SIGINT into a checkpoint
  (a shell without job control starts background jobs with SIGINT ignored, the threads of a Ray
  worker block signals, and both the ignored and the blocked ones survive exec);
- the signals in IGNORE (comma-separated names, e.g. ``TERM,USR1,USR2``, or ``-``) ignored: on
  Slurm, ``scancel`` and the time limit's warning signal every process of a job step, and the
  job's wrapper turns them into one SIGINT for the run (two would stop it without saving);
- on Linux, SIGINT when the thread that started this process dies (``PR_SET_PDEATHSIG``), even
  by ``kill -9``: a run whose worker died saves a checkpoint and exits instead of training on
  unsupervised. PARENT is that process's pid: if it is gone already, COMMAND is not started.
"""

from __future__ import annotations

import os
import signal
import sys


def main(argv: list[str]) -> int:
    if len(argv) < 4 or argv[2] != "--":
        print("usage: python -m auxrl.study.launch PARENT_PID IGNORE -- COMMAND...", file=sys.stderr)
        return 2
    parent, ignore, command = int(argv[0]), argv[1], argv[3:]
    if hasattr(signal, "pthread_sigmask"):  # a Ray worker's thread blocks signals; exec keeps the mask
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    for name in filter(None, ignore.replace("-", "").split(",")):
        signal.signal(getattr(signal, f"SIG{name}"), signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGINT))  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # the worker died before the death signal was armed
        return 130
    sys.stdout.flush()
    os.execvp(command[0], command)
    return 127  # not reached: execvp raises OSError when it fails


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
