"""Running the enabled auxiliary tasks beside PPO: what to sample for each, and its weight."""

from __future__ import annotations

import torch

from auxrl.config import AuxConfig, WeightSchedule
from auxrl.ppo.rollout import RolloutStorage
from auxrl.tasks.base import AuxOutput, AuxTask, Encoder
from auxrl.tasks.replay import Replay


def scheduled_weight(weight: float | WeightSchedule, step: int) -> float:
    """A constant weight, or one moving linearly from ``start`` to ``end`` over ``steps``."""
    if isinstance(weight, WeightSchedule):
        frac = min(1.0, step / weight.steps) if weight.steps > 0 else 1.0
        return weight.start + frac * (weight.end - weight.start)
    return float(weight)


class AuxTasks:
    """The tasks of one stage: what to sample for each, and each one's current weight."""

    def __init__(self, tasks: dict[str, AuxTask], aux: AuxConfig, storage: RolloutStorage, seed: int) -> None:
        self.tasks = tasks
        self.batch_sizes = {name: aux.tasks[name].batch_size or aux.batch_size for name in tasks}
        # The configured weight, or the task's documented default where none is given.
        self.weights = {
            name: w if (w := aux.tasks[name].weight) is not None else type(task).default_weight
            for name, task in tasks.items()
        }
        self.recent = storage.num_steps
        # Steps kept per env: the configured number of transitions split across envs.
        capacity = aux.replay_size // storage.num_envs if any(t.needs.replay for t in tasks.values()) else 0
        self.replay = Replay(capacity, storage) if tasks else None
        self.generator = torch.Generator(device=storage.device)
        self.generator.manual_seed(seed)
        self._drawn: dict[str, tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]] = {}
        self._minibatch = 0
        self.minibatches_done = 0  # PPO minibatches of this stage so far (aux.every counts these)

    def __bool__(self) -> bool:
        return bool(self.tasks)

    def add_rollout(self, storage: RolloutStorage) -> None:
        if self.replay is not None:
            self.replay.add(storage)

    def current_weights(self, step: int) -> dict[str, float]:
        return {name: scheduled_weight(w, step) for name, w in self.weights.items()}

    def draw(self, minibatches: int, names: list[str] | None = None) -> None:
        """Draw every window the next ``minibatches`` minibatches will use, one draw per task.

        The replay does not change during an update, so drawing all windows at once is the same
        as drawing them minibatch by minibatch, at one sampling call per task per update.
        """
        assert self.replay is not None
        self._drawn = {}
        for name in self.tasks if names is None else names:
            needs = self.tasks[name].needs
            start, env = self.replay.draw(
                self.batch_sizes[name] * minibatches,
                needs.sequence_length,
                recent=None if needs.replay else self.recent,
                rewarding_fraction=needs.rewarding_fraction,
                generator=self.generator,
            )
            self._drawn[name] = (start.split(self.batch_sizes[name]), env.split(self.batch_sizes[name]))
        self._minibatch = 0

    def losses(self, encode: Encoder, names: list[str] | None = None) -> dict[str, AuxOutput]:
        """Each task's loss on its windows for the current minibatch (see :meth:`draw`)."""
        out = {}
        i = self._minibatch
        for name in self.tasks if names is None else names:
            task = self.tasks[name]
            assert self.replay is not None
            if name not in self._drawn or i >= len(self._drawn[name][0]):
                raise RuntimeError(
                    f"aux task {name!r}: no windows drawn for minibatch {i}; call draw() first"
                )
            start, env = self._drawn[name][0][i], self._drawn[name][1][i]
            out[name] = task.loss(self.replay.gather(start, env, task.needs.sequence_length), encode)
        self._minibatch += 1
        return out

    def rng_state(self) -> torch.Tensor:
        """The sampling generator's state (a CPU ByteTensor), for checkpoints."""
        return self.generator.get_state()

    def set_rng_state(self, state: torch.Tensor) -> bool:
        """Restore the sampler's state; False (and a fresh stream) when it was saved by another
        kind of device (CPU and CUDA generators' states differ), e.g. a run resumed on a GPU."""
        state = state.cpu()
        if state.numel() != self.generator.get_state().numel():
            return False
        self.generator.set_state(state)
        return True

    def after_update(self) -> None:
        for task in self.tasks.values():
            task.after_update()
