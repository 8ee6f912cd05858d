"""Running the enabled auxiliary tasks beside PPO: sampling, weights, summed loss, diagnostics."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

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

    def __bool__(self) -> bool:
        return bool(self.tasks)

    def add_rollout(self, storage: RolloutStorage) -> None:
        if self.replay is not None:
            self.replay.add(storage)

    def current_weights(self, step: int) -> dict[str, float]:
        return {name: scheduled_weight(w, step) for name, w in self.weights.items()}

    def losses(self, encode: Encoder) -> dict[str, AuxOutput]:
        out = {}
        for name, task in self.tasks.items():
            assert self.replay is not None
            seq = self.replay.sample(
                self.batch_sizes[name],
                task.needs.sequence_length,
                recent=None if task.needs.replay else self.recent,
                rewarding_fraction=task.needs.rewarding_fraction,
                generator=self.generator,
            )
            out[name] = task.loss(seq, encode)
        return out

    def after_update(self) -> None:
        for task in self.tasks.values():
            task.after_update()


def gradient_diagnostics(
    main_loss: torch.Tensor, aux_losses: dict[str, torch.Tensor], params: list[nn.Parameter]
) -> dict[str, Any]:
    """Cosine and norm ratio between each weighted aux loss's gradient and PPO's, on ``params``.

    A negative cosine means the task pulls the shared torso against the RL objective; a large
    norm ratio means it dominates the torso's update.
    """
    params = [p for p in params if p.requires_grad]
    if not params:
        return {}

    def flat_grad(loss: torch.Tensor) -> torch.Tensor:
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        return torch.cat(
            [
                (g if g is not None else torch.zeros_like(p)).flatten()
                for g, p in zip(grads, params, strict=True)
            ]
        )

    g_main = flat_grad(main_loss)
    main_norm = g_main.norm()
    out = {}
    for name, loss in aux_losses.items():
        g = flat_grad(loss)
        out[f"aux/{name}/grad_cosine"] = torch.nn.functional.cosine_similarity(g, g_main, dim=0, eps=1e-12)
        out[f"aux/{name}/grad_norm_ratio"] = g.norm() / main_norm.clamp(min=1e-12)
    return out
