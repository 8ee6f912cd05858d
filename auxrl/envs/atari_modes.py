"""Atari games in a chosen ALE mode / difficulty, through gymnasium.vector.

ale-py's native ``AtariVectorEnv`` cannot select game modes or difficulties, so a config that
sets ``env.mode`` or ``env.difficulty`` runs each game in a gymnasium ``AtariEnv`` with
``AtariPreprocessing`` (noop reset, frame skip with max-pooling, 84x84 gray) and
``FrameStackObservation``, under gymnasium.vector. Observations (the first frame repeated in
the stack), rewards, episodic life and episode statistics match the native path, except that a
lost life is not followed by FIRE and random no-ops (the native path does that, as envpool);
it is slower (Python per-env wrappers). Evaluation videos of the game screen also play here
(``render=True``): gymnasium's env renders the RGB screen, the native vector env cannot. So do
state labels (``env.labels``, training only): the RAM is read from each env's ``ale.getRAM()``
after its step or reset (auxrl/envs/labels.py), which the native vector env does not expose.
"""

from __future__ import annotations

import ale_py
import gymnasium as gym
import numpy as np
from gymnasium.wrappers import AtariPreprocessing, FrameStackObservation

from auxrl.config import EnvConfig
from auxrl.envs.base import EpisodeTracker, Step, VecEnv
from auxrl.envs.gym import close_vector_env, vector_kwargs, worker_deaths
from auxrl.envs.labels import LabelReader, LabelSpec, RamLabels, label_spec

gym.register_envs(ale_py)


class FireOnReset(gym.Wrapper):
    """Press FIRE after each reset in games that need it to start (as the native env does)."""

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        if self.env.unwrapped.get_action_meanings()[1] == "FIRE":
            obs, _, terminated, truncated, info = self.env.step(1)
            if terminated or truncated:
                obs, info = self.env.reset(**kwargs)
        return obs, info


def _make_one(cfg: EnvConfig, render: bool = False, ram: tuple[int, ...] = ()):
    """``ram``: RAM bytes put in each step's and reset's info (env.labels=[ram])."""

    def thunk() -> gym.Env:
        env = gym.make(
            cfg.id,
            render_mode="rgb_array" if render else None,
            mode=cfg.mode,
            difficulty=cfg.difficulty,
            frameskip=1,
            repeat_action_probability=cfg.sticky_actions,
            full_action_space=cfg.full_action_space,
            max_num_frames_per_episode=cfg.max_episode_frames,
        )
        env = AtariPreprocessing(env, noop_max=cfg.noop_max, frame_skip=cfg.frameskip, screen_size=84)
        if cfg.fire_reset:
            env = FireOnReset(env)
        env = FrameStackObservation(env, cfg.frame_stack)
        return RamLabels(env, ram) if ram else env  # outermost: read once the step or reset is done

    return thunk


def check_mode(cfg: EnvConfig) -> None:
    probe = gym.make(cfg.id)
    ale = probe.unwrapped.ale
    modes, difficulties = list(ale.getAvailableModes()), list(ale.getAvailableDifficulties())
    probe.close()
    if cfg.mode is not None and cfg.mode not in modes:
        raise ValueError(f"env.mode={cfg.mode} is not a mode of {cfg.id}. Its modes: {modes}.")
    if cfg.difficulty is not None and cfg.difficulty not in difficulties:
        raise ValueError(
            f"env.difficulty={cfg.difficulty} is not a difficulty of {cfg.id}. Its difficulties: "
            f"{difficulties}."
        )


class AtariModesVecEnv(VecEnv):
    def __init__(self, cfg: EnvConfig, *, training: bool = True, render: bool = False) -> None:
        try:
            import cv2  # noqa: F401  (AtariPreprocessing resizes with OpenCV)
        except ImportError:
            raise ImportError(
                "env.mode / env.difficulty run Atari through gymnasium's AtariPreprocessing, which "
                'needs OpenCV: pip install "auxrl[atari-modes]"'
            ) from None
        check_mode(cfg)
        spec = label_spec(cfg) if training else LabelSpec()  # env.labels: read for training only
        self.label_names = spec.names
        self._labels = LabelReader(spec, cfg.num_envs, cfg.id) if len(spec) else None
        vector = gym.vector.AsyncVectorEnv if cfg.vector_mode == "async" else gym.vector.SyncVectorEnv
        envs = [_make_one(cfg, render, spec.ram_indices) for _ in range(cfg.num_envs)]
        self.env = vector(envs, **vector_kwargs(cfg.vector_mode))
        self.episodic_life = cfg.episodic_life and training
        self.reward_clip = cfg.reward_clip and training
        self.num_envs = cfg.num_envs
        self.env_id = cfg.id
        self.single_observation_space = self.env.single_observation_space
        self.single_action_space = self.env.single_action_space
        self.tracker = EpisodeTracker(cfg.num_envs)
        self._done = np.zeros(cfg.num_envs, dtype=bool)
        self._lives = np.zeros(cfg.num_envs, dtype=np.int64)

    def reset(self, seed: int | None = None) -> np.ndarray:
        with worker_deaths(self.env, self.env_id, "reset"):
            obs, info = self.env.reset(seed=seed)
        self.tracker = EpisodeTracker(self.num_envs)
        self._done[:] = False
        self._lives = np.asarray(info["lives"], dtype=np.int64)
        if self._labels is not None:
            self.reset_labels = self._labels.read(info)
        return obs

    def step(self, actions: np.ndarray) -> Step:
        with worker_deaths(self.env, self.env_id, "a step"):
            obs, reward, terminated, truncated, info = self.env.step(actions)
        reset = self._done
        self._done = terminated | truncated
        lives = np.asarray(info["lives"], dtype=np.int64)
        # A lost life ends the training episode but not the game: computed here, at the
        # vector level, so gymnasium's autoreset only fires at a real game over.
        life_lost = (lives < self._lives) & ~reset
        self._lives = lives
        terminated = np.asarray(terminated, dtype=bool) | (self.episodic_life & life_lost)
        step = self.tracker.step(obs, reward, terminated, truncated, reset, self.reward_clip)
        if self._labels is not None:  # a reset step's info is the reset's: the new game's
            step.labels = self._labels.read(info, reset)
        return step

    def render(self) -> np.ndarray | None:
        frames = self.env.render()  # the full-colour screen of each env (render=True only)
        return None if not frames else np.asarray(frames[0])

    def close(self) -> None:
        close_vector_env(self.env)
