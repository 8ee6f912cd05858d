"""Fixtures shared by the test modules."""

import os

import pytest
import torch

# submitit configures logging when imported (logging.config.dictConfig), which closes every logging
# handler of the process; absl's (tensorboard imports it) then closes the stream it holds, which in a
# test session can be pytest's captured stderr: the session loses its stderr. auxrl's slurm backend
# imports it the same way (auxrl/study/cluster.py); tests that import it themselves need this too.
os.environ.setdefault("SUBMITIT_LOG_LEVEL", "NOCONFIG")

# A CartPole run that trains, checkpoints (twice) and finishes in about a second.
TINY_RUN = [
    "env.num_envs=4",
    "ppo.num_steps=64",
    "ppo.num_minibatches=2",
    "ppo.update_epochs=2",
    "log.checkpoint_every=256",
    "ppo.total_steps=512",
]


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: one torch thread beats several, and a busy machine does not stall them.
    Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True, scope="session")
def ctrl_c_as_in_a_terminal():
    """A suite started in the background (``nohup .ci/run &``) inherits SIGINT ignored, which
    auxrl rightly leaves ignored (auxrl/stopping.py): its Ctrl-C tests would then see runs that
    cannot be stopped. They test a run started in a terminal, so give the session Python's own
    handler (children then start with SIGINT's default, as from a terminal)."""
    import signal

    before = signal.getsignal(signal.SIGINT)
    if before is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


@pytest.fixture(autouse=True, scope="session")
def event_files_sort_in_creation_order():
    """TensorBoard names event files ``events.out.tfevents.<second>.<host>.<pid>.<N>`` with one
    counter N per process, and readers take a run's files in name order. Tests train and resume
    many runs in one process within a second, so file N=10 would be read before N=9 and a resumed
    run's purge would drop the original's steps (a real run resumes in a new process, later).
    Starting N at 1000 keeps its digits, hence the name order, for the whole session."""
    from tensorboard.summary.writer import event_file_writer

    if hasattr(event_file_writer, "AtomicCounter") and hasattr(event_file_writer, "_global_uid"):
        event_file_writer._global_uid = event_file_writer.AtomicCounter(1000)
    yield
