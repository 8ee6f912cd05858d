"""Evaluating a trained agent: whole games, unclipped scores."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from auxrl.config import build
from auxrl.envs import make_envs
from auxrl.envs.base import Step
from auxrl.inference import TrainedAgent, load_agent

__all__ = ["EvalResult", "evaluate", "load_agent"]


@dataclass
class EvalResult:
    returns: list[float]
    lengths: list[int]
    # Means of the episodes' metrics (e.g. Crafter's achievements: success rates), and the env's
    # scores from them (e.g. crafter/score); empty for envs without such metrics.
    metrics: dict[str, float] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)

    @property
    def mean(self) -> float:
        return float(np.mean(self.returns))

    @property
    def std(self) -> float:
        return float(np.std(self.returns))


def evaluate(
    agent: TrainedAgent,
    episodes: int = 10,
    *,
    deterministic: bool = False,
    num_envs: int = 8,
    seed: int = 12345,
    on_step: Callable[[np.ndarray, Step, np.ndarray | None], None] | None = None,
    render: bool = False,
    task: str | None = None,
) -> EvalResult:
    """Play ``episodes`` whole games (no episodic life, no reward clipping or scaling).

    Each env contributes at most ceil(episodes / num_envs) games, so short games are not
    over-represented. ``seed`` seeds the envs and the sampled actions: a call repeats exactly.
    Observations are normalised with the run's frozen statistics.
    ``on_step(obs, step, screen)`` sees every step (used to record video): ``screen`` is env 0's
    RGB screen before the step with ``render=True``, else None. ``task``: which game a multi-task
    agent plays (its name, see ``agent.task_names``).
    """
    cfg = agent.config
    num_envs = max(1, min(num_envs, episodes))
    index = agent.task_index(task) if agent.model.task_aware else None
    env = {"num_envs": num_envs}
    if agent.task_names:  # multi-task: that task's env alone
        env.update(id=agent.model.tasks[index].env_id, tasks=[])
    env_cfg = build(type(cfg.env), {**cfg.env.model_dump(), **env})
    per_env = math.ceil(episodes / num_envs)
    counts = np.zeros(num_envs, dtype=np.int64)
    returns: list[float] = []
    lengths: list[int] = []
    metrics: dict[str, list[float]] = {}
    # The sampled actions are seeded too (the same seed plays the same games), from torch's
    # generators forked for the call, so a caller's own random stream is left as it was.
    cuda = [agent.device] if agent.device.type == "cuda" else []
    with (
        torch.random.fork_rng(devices=cuda),
        make_envs(env_cfg, training=False, stats=agent.stats, render=render) as envs,
    ):
        torch.default_generator.manual_seed(seed)  # not torch.manual_seed: it seeds every GPU
        if cuda:
            with torch.cuda.device(agent.device):
                torch.cuda.manual_seed(seed)
        obs = envs.reset(seed=seed)
        task_t = None if index is None else torch.full((envs.num_envs,), index, device=agent.device)
        while len(returns) < episodes:
            screen = envs.render() if render else None
            obs_t = torch.as_tensor(obs, device=agent.device)
            action = agent.model.act(obs_t, deterministic=deterministic, task=task_t).action.cpu().numpy()
            step = envs.step(action)
            if on_step is not None:
                on_step(obs, step, screen)
            obs = step.obs
            # Finished games come in env order, one per env that just reset.
            done_envs = np.flatnonzero(step.reset)
            for i, (ret, length) in enumerate(zip(step.episode_returns, step.episode_lengths, strict=True)):
                env_id = done_envs[i]
                if counts[env_id] < per_env and len(returns) < episodes:
                    counts[env_id] += 1
                    returns.append(float(ret))
                    lengths.append(int(length))
                    for name, values in step.episode_metrics.items():
                        if np.isfinite(values[i]):
                            metrics.setdefault(name, []).append(float(values[i]))
        means = {name: float(np.mean(values)) for name, values in metrics.items()}
        return EvalResult(returns, lengths, means, envs.summarize_metrics(means) if means else {})
