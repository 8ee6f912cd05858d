"""Atari through ale-py's native C++ ``AtariVectorEnv`` (threads, no Python subprocesses).

The C++ env runs with reward clipping off and, for episodic life, ``life_loss_info=True``: a
lost life is reported as a termination while the game carries on, and only a game over resets.
That lets us clip rewards for training here and still report the real, unclipped score of the
whole game (all lives), which is the number comparable with published results.

Two things envpool (and so CleanRL's ``ppo_atari_envpool.py``) does that ale-py 0.12's C++ env
does not, added here with numpy over the whole batch (no per-env Python loop):

* **The first frame fills the stack.** ale-py clears the frame stack to zeros at a reset, so the
  first observation has 3 of 4 frames black (and the next two, 2 and 1); envpool repeats the
  first frame. Missing slots are filled from the oldest real frame for the first
  ``frame_stack - 1`` steps of every game.
* **FIRE and random no-ops after a lost life** (episodic life, training only). envpool's
  ``Reset()`` after a life loss plays 0 to ``noop_max - 1`` NOOP frames, then FIRE, without
  restarting the game. ale-py's env has no such reset (its own ``episodic_life`` option restarts
  the whole game, and it cannot act on one env for single frames), so the wrapper overrides the
  agent's actions: ``n // frameskip`` NOOP steps (n drawn as envpool does), then one FIRE step
  (a NOOP step in games without FIRE). These steps are reported as ``reset`` steps (masked out
  of every loss, as envpool's reset step is) and their rewards dropped, as envpool's are. The
  differences left: no-ops come in whole steps of ``frameskip`` frames, FIRE is held for one
  step instead of one frame, and such a restart takes 1-8 steps instead of one.

At a game start both play FIRE and random no-ops at frame level (ale-py presses FIRE before its
no-ops, envpool after them).
"""

from __future__ import annotations

import os
import warnings

import numpy as np
from ale_py import Action

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
    with warnings.catch_warnings():  # ale-py warns "Rom ... not supported": the error below says it
        warnings.simplefilter("ignore", UserWarning)
        path = roms.get_rom_path(name)
    if path is None:
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
        self._age = np.zeros(cfg.num_envs, dtype=np.int64)  # steps since the game's first frame
        actions = list(self.env.ale.get_action_set())
        self._noop = actions.index(Action.NOOP)
        self._fire = actions.index(Action.FIRE) if cfg.fire_reset and Action.FIRE in actions else self._noop
        self._noop_max, self._frameskip = cfg.noop_max, cfg.frameskip
        self._lives = np.zeros(cfg.num_envs, dtype=np.int64)
        self._restart = np.zeros(cfg.num_envs, dtype=np.int64)  # forced steps left after a lost life
        self._forced = np.zeros(cfg.num_envs, dtype=bool)  # the step in flight was forced
        self._rng = np.random.default_rng()

    def reset(self, seed: int | None = None) -> np.ndarray:
        obs, info = self.env.reset(seed=seed)
        self.tracker = EpisodeTracker(self.num_envs)
        self._frame = info["episode_frame_number"].astype(np.int64)
        self._lives = info["lives"].astype(np.int64)
        self._restart[:] = 0
        self._forced[:] = False
        self._age[:] = 0
        self._rng = np.random.default_rng(seed)
        return self._fill_stack(obs)

    def step(self, actions: np.ndarray) -> Step:
        self.send(actions)
        return self.recv()

    def send(self, actions: np.ndarray) -> None:
        actions = actions.astype(np.int64)
        self._forced = self._restart > 0
        if self._forced.any():  # after a lost life: NOOPs, then FIRE on the last forced step
            forced = np.where(self._restart == 1, self._fire, self._noop)
            actions = np.where(self._forced, forced, actions)
        self.env.send(actions)  # returns at once; C++ threads step the games

    def recv(self) -> Step:
        obs, reward, terminated, truncated, info = self.env.recv()
        frame = info["episode_frame_number"].astype(np.int64)
        lives = info["lives"].astype(np.int64)
        # The episode frame counter only goes back when the game was reset: this is exact for
        # every game, including ones that end with lives left.
        reset = frame < self._frame
        self._frame = frame
        masked = self._forced & ~reset
        self._restart[self._forced] -= 1
        self._restart[reset] = 0
        if self.episodic_life:
            lost = (lives < self._lives) & (lives > 0) & ~reset
            if lost.any():  # envpool's Reset(): 0..noop_max-1 NOOP frames, then FIRE
                noops = self._rng.integers(0, max(self._noop_max, 1), size=int(lost.sum()))
                self._restart[lost] = 1 + noops // self._frameskip
        self._lives = lives
        self._age += 1
        self._age[reset] = 0
        reward = np.where(masked, 0, reward)  # envpool drops the rewards of its reset steps
        return self.tracker.step(
            self._fill_stack(obs), reward, terminated, truncated, reset, self.reward_clip, masked=masked
        )

    def _fill_stack(self, obs: np.ndarray) -> np.ndarray:
        """Repeat each game's first frame in the stack slots before it (ale-py leaves them zero)."""
        stack = obs.shape[1]
        missing = stack - 1 - self._age  # slots of each env's stack still before its first frame
        young = np.flatnonzero(missing > 0)
        if len(young):
            first = obs[young, missing[young]]  # [n, H, W]: the oldest real frame
            before = np.arange(stack) < missing[young, None]  # [n, stack]
            before = before.reshape(before.shape + (1,) * (obs.ndim - 2))
            obs[young] = np.where(before, first[:, None], obs[young])
        return obs

    def close(self) -> None:
        self.env.close()
