"""Fixtures shared by the test modules."""

import pytest
import torch

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
