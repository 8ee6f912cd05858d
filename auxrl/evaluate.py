"""Evaluating a trained agent: whole games, unclipped scores."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from auxrl import checkpoint
from auxrl.config import Config, build
from auxrl.envs import make_envs
from auxrl.models.agent import Agent, build_agent


@dataclass
class EvalResult:
    returns: list[float]
    lengths: list[int]

    @property
    def mean(self) -> float:
        return float(np.mean(self.returns))

    @property
    def std(self) -> float:
        return float(np.std(self.returns))


def load_agent(run_dir_or_checkpoint: str, device: torch.device) -> tuple[Agent, Config]:
    """The torso and PPO heads of a saved run (auxiliary heads are not needed to act)."""
    saved = checkpoint.load(run_dir_or_checkpoint, device)
    cfg = build(Config, saved["config"])
    obs_space, action_space = saved["spaces"]
    agent = build_agent(cfg.model.torso, cfg.model.hidden_sizes, obs_space, action_space)
    state = {
        k: v for k, v in saved["model"].items() if k.startswith(("torso.", "heads.policy.", "heads.value."))
    }
    agent.load_state_dict(state)
    return agent.to(device).eval(), cfg


def evaluate(
    agent: Agent,
    cfg: Config,
    episodes: int,
    device: torch.device,
    *,
    deterministic: bool = False,
    num_envs: int = 8,
    seed: int = 12345,
    on_step=None,
) -> EvalResult:
    """Play ``episodes`` whole games (no episodic life, no reward clipping).

    Each env contributes at most ceil(episodes / num_envs) games, so short games are not
    over-represented. ``on_step(obs, step)`` sees every step (used to record video).
    """
    num_envs = max(1, min(num_envs, episodes))
    env_cfg = build(type(cfg.env), {**vars(cfg.env), "num_envs": num_envs})
    per_env = math.ceil(episodes / num_envs)
    counts = np.zeros(num_envs, dtype=np.int64)
    returns: list[float] = []
    lengths: list[int] = []
    with make_envs(env_cfg, training=False) as envs:
        obs = envs.reset(seed=seed)
        while len(returns) < episodes:
            obs_t = torch.as_tensor(obs, device=device)
            action = agent.act(obs_t, deterministic=deterministic).action.cpu().numpy()
            step = envs.step(action)
            if on_step is not None:
                on_step(obs, step)
            obs = step.obs
            # Finished games come in env order, one per env that just reset.
            done_envs = np.flatnonzero(step.reset)
            for i, (ret, length) in enumerate(zip(step.episode_returns, step.episode_lengths, strict=True)):
                env_id = done_envs[i]
                if counts[env_id] < per_env and len(returns) < episodes:
                    counts[env_id] += 1
                    returns.append(float(ret))
                    lengths.append(int(length))
    return EvalResult(returns, lengths)
