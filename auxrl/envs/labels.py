"""State labels (``env.labels``): per env and step, variables of the state each observation shows.

Auxiliary tasks such as ``state_prediction`` learn from them (Lample & Chaplot 2017's "game
features"; AtariARI's RAM variables, Anand et al. 2019). Two sources, in the order listed:

* ``ram``: the AtariARI variables of the game (:mod:`auxrl.envs.atari_ram`), read with
  ``ale.getRAM()`` after each step and after each reset, inside each env (so sync and async
  vector envs alike), into ``info["auxrl_ram"]``. Kind ``byte``: 256-way classification.
* ``info:KEY``: the numeric entry ``KEY`` of each env's ``info`` dict (gymnasium vector envs
  batch it into an array, with a ``_KEY`` mask of the envs that had it). Kind ``real``.

A step's labels are those of the observation it returns: under NEXT_STEP autoreset the reset
step's are the new episode's first observation's (its ``info`` is the reset's). An info key that
a real step lacks, or whose value is not a number, is an error naming it; one that a reset
lacks (reset infos often hold fewer keys) gives NaN there, which tasks leave out of their loss,
as they do non-finite values.

Labels are read for training only: evaluation envs skip them (and Atari then runs natively).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np

if TYPE_CHECKING:
    from auxrl.config import EnvConfig

RAM = "ram"
INFO = "info:"
RAM_INFO_KEY = "auxrl_ram"  # where RamLabels puts the bytes in each env's info
BYTE, REAL = "byte", "real"  # label kinds: 256-way classification, or a real number


@dataclass(frozen=True)
class LabelSpec:
    """What ``env.labels`` asks for, known from the config alone (tasks size their heads by it)."""

    names: tuple[str, ...] = ()  # RAM variable names (atari_ram), or the info KEYs
    kinds: tuple[str, ...] = ()  # BYTE or REAL, per label
    sources: tuple[str, ...] = ()  # per label: RAM, or the info key it is read from
    ram_indices: tuple[int, ...] = ()  # the RAM bytes of the RAM labels, in their order

    def __len__(self) -> int:
        return len(self.names)


def label_spec(cfg: EnvConfig) -> LabelSpec:
    """The labels of ``cfg.labels`` (empty when none are asked for). ValueError, one line, for
    ``ram`` on a game AtariARI does not annotate (the syntax is checked with the config)."""
    from auxrl.envs import atari_ram

    names: list[str] = []
    kinds: list[str] = []
    sources: list[str] = []
    ram: list[int] = []
    for entry in cfg.labels:
        if entry == RAM:
            game = atari_ram.game_of(cfg.id)
            if game is None:
                raise ValueError(
                    f"env.labels=[ram]: AtariARI has no RAM annotations for {cfg.id} (annotated games: "
                    f"{', '.join(atari_ram.games())}); label it with info:KEY entries instead."
                )
            for var in atari_ram.variables(game):
                names.append(var.name)
                kinds.append(BYTE)
                sources.append(RAM)
                ram.append(var.index)
        else:
            key = entry.removeprefix(INFO)
            names.append(key)
            kinds.append(REAL)
            sources.append(key)
    if len(set(names)) < len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"env.labels: label {twice[0]!r} is given twice; list each label once.")
    return LabelSpec(tuple(names), tuple(kinds), tuple(sources), tuple(ram))


class RamLabels(gym.Wrapper):
    """Puts the RAM bytes ``indices`` into ``info[RAM_INFO_KEY]`` after every step and reset."""

    def __init__(self, env: gym.Env, indices: tuple[int, ...]) -> None:
        super().__init__(env)
        self._indices = np.asarray(indices, dtype=np.int64)

    def _ram(self) -> np.ndarray:
        return self.env.unwrapped.ale.getRAM()[self._indices].astype(np.float32)

    def reset(self, **kwargs: Any):
        obs, info = self.env.reset(**kwargs)
        return obs, {**info, RAM_INFO_KEY: self._ram()}

    def step(self, action: Any):
        obs, reward, terminated, truncated, info = self.env.step(action)
        return obs, reward, terminated, truncated, {**info, RAM_INFO_KEY: self._ram()}


class LabelReader:
    """Turns a vector env's batched ``info`` into the ``[num_envs, K]`` float32 labels."""

    def __init__(self, spec: LabelSpec, num_envs: int, env_id: str) -> None:
        self.spec, self.num_envs, self.env_id = spec, num_envs, env_id

    def read(self, info: dict[str, Any], reset: np.ndarray | None = None) -> np.ndarray:
        """``reset``: the envs whose info is a reset's (missing keys are NaN there); None: all."""
        out = np.full((self.num_envs, len(self.spec)), np.nan, dtype=np.float32)
        ram_columns = [j for j, s in enumerate(self.spec.sources) if s == RAM]
        if ram_columns:
            out[:, ram_columns] = np.asarray(info[RAM_INFO_KEY], dtype=np.float32)
        lenient = np.ones(self.num_envs, dtype=bool) if reset is None else np.asarray(reset, dtype=bool)
        for j, key in enumerate(self.spec.sources):
            if key == RAM:
                continue
            have = np.zeros(self.num_envs, dtype=bool)  # which envs' info has it (gymnasium's _KEY)
            if key in info:
                have = np.asarray(info.get(f"_{key}", ~have), dtype=bool)
            missing = ~have & ~lenient
            if missing.any():
                known = ", ".join(sorted(k for k in map(str, info) if not k.startswith("_"))) or "none"
                raise ValueError(
                    f"env.labels info:{key}: {self.env_id}'s info has no entry {key!r} at a step of env "
                    f"{int(np.flatnonzero(missing)[0])} (its entries: {known}); label an entry every step "
                    f"has."
                )
            values = info[key] if have.any() else None
            if isinstance(values, np.ndarray) and values.ndim == 1 and values.dtype.kind in "biuf":
                column = values[have].astype(np.float32)  # the usual case: one number per env
                out[have, j] = np.where(np.isfinite(column), column, np.nan)
            else:
                for i in np.flatnonzero(have):
                    out[i, j] = self._number(values[i], key)
        return out

    def _number(self, value: Any, key: str) -> float:
        if isinstance(value, np.ndarray) and value.size == 1:
            value = value.reshape(()).item()
        if isinstance(value, np.generic):
            value = value.item()
        if isinstance(value, bool | numbers.Real):
            return float(value) if np.isfinite(float(value)) else np.nan  # non-finite: left out
        what = f"an array of shape {value.shape}" if isinstance(value, np.ndarray) else repr(value)[:60]
        raise ValueError(
            f"env.labels info:{key}: {self.env_id}'s info[{key!r}] is {what}, not a number; label a "
            f"numeric scalar entry."
        )
