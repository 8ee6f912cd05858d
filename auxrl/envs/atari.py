"""Atari through ale-py's native C++ ``AtariVectorEnv`` (threads, no Python subprocesses).

The C++ env runs with reward clipping off and, for episodic life, ``life_loss_info=True``: a
lost life is reported as a termination while the game carries on, and only a game over resets.
That lets us clip rewards for training here and still report the real, unclipped score of the
whole game (all lives), which is the number comparable with published results.
"""

from __future__ import annotations

import os

import numpy as np

from auxrl.config import EnvConfig
from auxrl.envs.base import EpisodeTracker, Step, VecEnv


def is_atari_id(env_id: str) -> bool:
    return env_id.startswith("ALE/")


def rom_name(env_id: str) -> str:
    """``ALE/MsPacman-v5`` -> ``ms_pacman`` (ale-py's snake_case ROM names)."""
    game = env_id.split("/", 1)[1].rsplit("-v", 1)[0]
    out = []
    for i, ch in enumerate(game):
        if ch.isupper() and i > 0 and not game[i - 1].isupper():
            out.append("_")
        out.append(ch.lower())
    return "".join(out)


def check_rom(env_id: str) -> str:
    from ale_py import roms

    name = rom_name(env_id)
    if roms.get_rom_path(name) is None:
        raise ValueError(
            f"env.id {env_id!r}: ale-py has no ROM {name!r}. Use ALE/<Game>-v5 with the game's "
            f"CamelCase name, e.g. ALE/Breakout-v5, ALE/Pong-v5, ALE/MsPacman-v5."
        )
    return name


class AtariVecEnv(VecEnv):
    """ALE vector env with uint8 observations of shape (stack, 84, 84)."""

    def __init__(self, cfg: EnvConfig, *, training: bool = True) -> None:
        from ale_py.vector_env import AtariVectorEnv

        self.episodic_life = cfg.episodic_life and training
        self.reward_clip = cfg.reward_clip and training
        threads = cfg.num_threads or min(cfg.num_envs, os.cpu_count() or 1)
        self.env = AtariVectorEnv(
            check_rom(cfg.id),
            cfg.num_envs,
            num_threads=threads,
            frameskip=cfg.frameskip,
            stack_num=cfg.frame_stack,
            noop_max=cfg.noop_max,
            use_fire_reset=cfg.fire_reset,
            repeat_action_probability=cfg.sticky_actions,
            full_action_space=cfg.full_action_space,
            max_num_frames_per_episode=cfg.max_episode_frames,
            episodic_life=False,
            life_loss_info=self.episodic_life,
            reward_clipping=False,
            autoreset_mode="NextStep",
        )
        self.num_envs = cfg.num_envs
        self.single_observation_space = self.env.single_observation_space
        self.single_action_space = self.env.single_action_space
        self.tracker = EpisodeTracker(cfg.num_envs)
        self._frame = np.zeros(cfg.num_envs, dtype=np.int64)

    def reset(self, seed: int | None = None) -> np.ndarray:
        obs, info = self.env.reset(seed=seed)
        self.tracker = EpisodeTracker(self.num_envs)
        self._frame = info["episode_frame_number"].astype(np.int64)
        return obs

    def step(self, actions: np.ndarray) -> Step:
        self.send(actions)
        return self.recv()

    def send(self, actions: np.ndarray) -> None:
        self.env.send(actions.astype(np.int64))  # returns at once; C++ threads step the games

    def recv(self) -> Step:
        obs, reward, terminated, truncated, info = self.env.recv()
        frame = info["episode_frame_number"].astype(np.int64)
        # The episode frame counter only goes back when the game was reset: this is exact for
        # every game, including ones that end with lives left.
        reset = frame < self._frame
        self._frame = frame
        return self.tracker.step(obs, reward, terminated, truncated, reset, self.reward_clip)

    def close(self) -> None:
        self.env.close()
