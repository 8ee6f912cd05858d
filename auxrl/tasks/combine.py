"""Running the enabled auxiliary tasks beside PPO: what to sample for each, and its weight."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch

from auxrl.config import AuxConfig, WeightSchedule
from auxrl.ppo.rollout import RolloutStorage
from auxrl.tasks.base import AuxOutput, AuxTask, Encoder, Needs, Pairs, Sequences
from auxrl.tasks.replay import Replay

CHECK_ROLLOUTS = 10  # a stage's first rollouts are shown to each task's check_data()


def _warn(message: str) -> None:
    print(f"auxrl: warning: {message}", file=sys.stderr, flush=True)


@dataclass
class PPOSamples:
    """The first samples of a PPO minibatch as one-transition windows, for ``Needs.minibatch``
    tasks: ``index`` (flat ``t * num_envs + env`` indices into the rollout) and ``features``,
    the torso features PPO's forward pass computed for them (with gradients)."""

    storage: RolloutStorage
    index: torch.Tensor
    features: torch.Tensor

    def sequences(self) -> Sequences:
        st = self.storage
        t, env = self.index // st.num_envs, self.index % st.num_envs
        last = t == st.num_steps - 1  # the observation after the last step is next_obs
        after = (t + 1).clamp(max=st.num_steps - 1)

        def pair(steps: torch.Tensor, tail: torch.Tensor) -> torch.Tensor:
            following = torch.where(last.view(-1, *[1] * (tail.dim() - 1)), tail[env], steps[after, env])
            return torch.stack([steps[t, env], following], 1)

        labels = getattr(st, "labels", None)
        return Sequences(
            obs=pair(st.obs, st.next_obs),
            actions=st.actions[t, env].unsqueeze(1),
            rewards=st.rewards[t, env].unsqueeze(1),
            terminated=st.terminated[t, env].unsqueeze(1),
            truncated=st.truncated[t, env].unsqueeze(1),
            valid=st.valid[t, env].unsqueeze(1),
            labels=pair(labels, st.next_labels) if labels is not None else None,
            features=self.features,
        )


def draw_samples(
    replay: Replay, needs: Needs, count: int, recent: int, generator: torch.Generator
) -> tuple[torch.Tensor, ...]:
    """Where ``count`` samples of a task with ``needs`` come from, drawn as the learner draws them:
    ``(start, env)`` of its windows, ``(start, env, gap)`` of its pairs (``Needs.gap``). ``recent``:
    the current rollout's steps per env, all that a task with ``Needs.replay`` false samples. A
    ``Needs.minibatch`` task learns from PPO's minibatch, whose samples are one-step windows of
    the current rollout drawn uniformly: drawn here from the whole replay (``auxrl task check``)."""
    if needs.minibatch:
        return replay.draw(count, 1, generator=generator)
    if needs.gap is not None:  # pairs: windows of the largest gap, a gap per sample
        start, env = replay.draw(count, needs.span, generator=generator)
        lo, hi = needs.gap
        gap = torch.randint(lo, hi + 1, (count,), device=start.device, generator=generator)
        return start, env, gap
    return replay.draw(
        count,
        needs.sequence_length,
        recent=None if needs.replay else recent,
        rewarding_fraction=needs.rewarding_fraction,
        generator=generator,
    )


def gather_samples(replay: Replay, needs: Needs, drawn: tuple[torch.Tensor, ...]) -> Sequences | Pairs:
    """The samples :func:`draw_samples` drew (or some of them), as the task's loss takes them."""
    if needs.minibatch:
        start, env = drawn
        return replay.gather(start, env, 1)
    if needs.gap is not None:
        start, env, gap = drawn
        return replay.gather_pairs(start, env, gap, needs.span)
    start, env = drawn
    return replay.gather(start, env, needs.sequence_length)


def scheduled_weight(weight: float | WeightSchedule, step: int) -> float:
    """A constant weight, or one moving linearly from ``start`` to ``end`` over ``steps``."""
    if isinstance(weight, WeightSchedule):
        frac = min(1.0, step / weight.steps) if weight.steps > 0 else 1.0
        return weight.start + frac * (weight.end - weight.start)
    return float(weight)


class AuxTasks:
    """The tasks of one stage: what to sample for each, and each one's current weight."""

    def __init__(
        self,
        tasks: dict[str, AuxTask],
        aux: AuxConfig,
        storage: RolloutStorage,
        seed: int,
        env_id: str | None = None,
        warn: Callable[[str], None] | None = None,
    ) -> None:
        self.tasks = tasks
        self.env_id = env_id  # named in the warnings of check_data
        self.warn = warn or _warn  # several processes: the trainer's prints on rank 0 only
        # Tasks that look at the data (AuxTask.check_data), until they have found a reason.
        self._to_check = [n for n, t in tasks.items() if type(t).check_data is not AuxTask.check_data]
        self._checks_left = CHECK_ROLLOUTS
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
        # Per task: the window starts, envs (and gaps, Needs.gap) of each minibatch of the update.
        self._drawn: dict[str, tuple[tuple[torch.Tensor, ...], ...]] = {}
        self._minibatch = 0
        self.minibatches_done = 0  # PPO minibatches of this stage so far (aux.every counts these)

    def __bool__(self) -> bool:
        return bool(self.tasks)

    def add_rollout(self, storage: RolloutStorage) -> None:
        if self.replay is not None:
            self.replay.add(storage)
            self._check_data()

    def _check_data(self) -> None:
        """Show each task the transitions of the stage so far (its first rollouts only); warn once
        for a task that says they give it nothing to learn."""
        if not self._to_check or self._checks_left <= 0:
            return
        self._checks_left -= 1
        assert self.replay is not None
        valid = self.replay.stored("valid")
        rewards, terminated = self.replay.stored("rewards")[valid], self.replay.stored("terminated")[valid]
        for name in list(self._to_check):
            reason = self.tasks[name].check_data(rewards, terminated)
            if reason:
                self._to_check.remove(name)
                self.warn(
                    f"aux task {name!r} has nothing to learn on {self.env_id or 'this env'}: {reason}. "
                    f"Drop the task (aux.tasks.{name}.enabled=false): it only costs time here."
                )

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
            if needs.minibatch:  # takes PPO's minibatch samples, nothing to draw
                continue
            count, size = self.batch_sizes[name] * minibatches, self.batch_sizes[name]
            drawn = draw_samples(self.replay, needs, count, self.recent, self.generator)
            self._drawn[name] = tuple(part.split(size) for part in drawn)
        self._minibatch = 0

    def minibatch_size(self, names: list[str] | None = None) -> int:
        """How many of each PPO minibatch's first samples the ``Needs.minibatch`` tasks among
        ``names`` learn from (the largest of their batch sizes; 0: no such task)."""
        chosen = self.tasks if names is None else names
        return max((self.batch_sizes[n] for n in chosen if self.tasks[n].needs.minibatch), default=0)

    def losses(
        self, encode: Encoder, names: list[str] | None = None, minibatch: PPOSamples | None = None
    ) -> dict[str, AuxOutput]:
        """Each task's loss on its windows for the current minibatch (see :meth:`draw`); the
        ``Needs.minibatch`` tasks on ``minibatch``, the first samples of PPO's minibatch."""
        out = {}
        i = self._minibatch
        shared = minibatch.sequences() if minibatch is not None else None
        for name in self.tasks if names is None else names:
            task = self.tasks[name]
            if task.needs.minibatch:
                if shared is None:
                    raise RuntimeError(f"aux task {name!r} learns from PPO's minibatch, but none was given")
                seq = shared.first(self.batch_sizes[name])
                seq.generator = self.generator
                out[name] = task.loss(seq, encode)
                continue
            assert self.replay is not None
            if name not in self._drawn or i >= len(self._drawn[name][0]):
                raise RuntimeError(
                    f"aux task {name!r}: no windows drawn for minibatch {i}; call draw() first"
                )
            samples = gather_samples(self.replay, task.needs, tuple(part[i] for part in self._drawn[name]))
            samples.generator = self.generator  # a task's own draws (augmentations): the seeded stream
            out[name] = task.loss(samples, encode)
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
