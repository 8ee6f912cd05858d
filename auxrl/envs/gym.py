"""Any other Gymnasium id, through ``gymnasium.vector`` (sync or async) with NEXT_STEP autoreset.

Box actions are clipped to the env's bounds, and observations / rewards are normalised where the
config asks (``env.normalize_obs``, ``env.normalize_reward``; see :mod:`auxrl.envs.normalize`).
Episode statistics always report the env's own rewards.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import inspect
import multiprocessing
import os
import signal
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector.async_vector_env import AsyncState

from auxrl.config import EnvConfig
from auxrl.envs.base import EpisodeTracker, Step, VecEnv
from auxrl.envs.dictobs import DictLayout
from auxrl.envs.image import ImageOptions, image_wrappers
from auxrl.envs.labels import LabelReader, LabelSpec, label_spec
from auxrl.envs.normalize import NormStats, wrap
from auxrl.errors import EnvWorkerDied


def _worker_that_leaves_ctrl_c_to_the_trainer(*args: Any) -> None:
    """gymnasium's async env worker, deaf to SIGINT: a Ctrl-C in the terminal reaches the whole
    process group, and a worker that died of it would break the rollout the trainer finishes
    before it saves (auxrl/stopping.py); the trainer closes the workers itself. SIGTERM gets its
    default back (a forked worker inherits the trainer's handler): gymnasium and Python's exit
    stop workers with it, and a SIGTERM to the whole group that ends them mid-rollout is met by
    the trainer (it stops there and saves)."""
    from gymnasium.vector.async_vector_env import _async_worker

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _async_worker(*args)


def _worker_in_environment(environ: dict[str, str], *args: Any) -> None:
    """A ``forkserver`` worker (see :func:`start_method`) with the environment variables the trainer
    has now, as a forked worker would have them, not those the server started with: e.g.
    ``MUJOCO_GL=egl``, set for rendering after an earlier vector env started the server."""
    os.environ.clear()
    os.environ.update(environ)
    _worker_that_leaves_ctrl_c_to_the_trainer(*args)


_PIPE_ERRORS = (EOFError, BrokenPipeError, ConnectionResetError)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:  # a real-time signal, which has no name
        return str(number)


@contextlib.contextmanager
def worker_deaths(env: gym.vector.VectorEnv, env_id: str, during: str) -> Iterator[None]:
    """Turn the pipe error that an async env's dead worker leaves (``EOFError`` from its pipe, a
    bare traceback deep in gymnasium) into :class:`EnvWorkerDied`; other errors pass unchanged."""
    try:
        yield
    except _PIPE_ERRORS as err:
        processes = list(getattr(env.unwrapped, "processes", []))
        deadline = time.monotonic() + 2.0  # the pipe closes as the process exits: let it finish
        while not any(p.exitcode is not None for p in processes) and time.monotonic() < deadline:
            time.sleep(0.02)
        dead = [(i, p.exitcode) for i, p in enumerate(processes) if p.exitcode is not None]
        if not dead:
            raise
        index, code = dead[0]
        how = f"exit code {code}" if code >= 0 else f"signal {_signal_name(-code)}"
        others = f" (and {len(dead) - 1} more)" if len(dead) > 1 else ""
        raise EnvWorkerDied(
            f"env.id {env_id!r}: the worker process of env {index} of {len(processes)}{others} died "
            f"({how}) during {during}, outside Python's error handling (a crash in the env's native "
            f"code, or killed, e.g. for memory); env.vector_mode=sync runs the envs in this process "
            f"and shows the env's own error"
        ) from err


def close_vector_env(env: gym.vector.VectorEnv) -> None:
    """``env.close()``, which never waits on a worker that cannot answer.

    gymnasium's async ``close`` first waits (with no timeout) for a reset or step in flight; where
    a worker died during it, the others' answers were already read and that wait would block
    forever: then (and where any worker is gone) the workers are terminated instead. Where a
    worker is found gone only while closing (killed by a signal sent to the whole process group),
    the others are terminated and the env marked closed before the error is raised, so that its
    ``__del__`` does not try again at exit (a second traceback)."""
    base = env.unwrapped
    processes = getattr(base, "processes", [])
    state = getattr(base, "_state", None)
    stuck = (state is not None and state != AsyncState.DEFAULT) or any(
        p.exitcode is not None for p in processes
    )
    try:
        if stuck:  # no wait for the call in flight: its answers are dropped with the workers
            base._state = AsyncState.DEFAULT
            env.close(terminate=True)
        else:
            env.close()
    except _PIPE_ERRORS + (OSError,):
        for process in processes:
            if process.is_alive():
                process.terminate()
        base.closed = True
        raise


def vector_kwargs(mode: str) -> dict[str, Any]:
    """Keyword arguments of gymnasium's vector env for ``env.vector_mode``."""
    kwargs: dict[str, Any] = {"autoreset_mode": gym.vector.AutoresetMode.NEXT_STEP}
    if mode == "async":
        kwargs["worker"] = _worker_that_leaves_ctrl_c_to_the_trainer
        context = start_method()
        if context is not None:
            kwargs["context"] = context
            kwargs["worker"] = functools.partial(_worker_in_environment, dict(os.environ))
    return kwargs


def start_method() -> str | None:
    """How async env workers start: ``forkserver`` where CUDA may be in use in this process, else
    None (Python's default: ``fork`` on Linux before Python 3.14).

    Envs are made after CUDA is initialised in every ``--nproc`` worker (its process group and
    GPU come first), in later curriculum stages and in ``auxrl eval`` after ``load_agent``. A
    forked child inherits the CUDA state without the driver's threads: it works only as long as
    no env touches CUDA or a GPU API (MuJoCo's video renders over EGL). ``forkserver`` children
    fork from a clean server process instead. So it is chosen wherever PyTorch sees a GPU (or
    CUDA is initialised): on a CPU-only machine nothing changes. The server imports this module
    (and with it torch) once, so each worker does not; each worker takes the trainer's
    environment variables as they are when the vector env is made, as a forked one would
    (:func:`_worker_in_environment`). Like ``spawn``, it runs a script's ``__main__`` module again
    in each worker: a script calling ``auxrl.train`` needs Python's ``if __name__ == "__main__":``
    guard there (notebooks and the ``auxrl`` command do not).
    """
    default = multiprocessing.get_start_method(allow_none=True) or multiprocessing.get_all_start_methods()[0]
    if default != "fork" or "forkserver" not in multiprocessing.get_all_start_methods():
        return None  # spawn (macOS, Windows) or forkserver (Python 3.14 on Linux) already
    torch = sys.modules.get("torch")
    if torch is None or not (torch.cuda.is_initialized() or torch.cuda.is_available()):
        return None
    multiprocessing.get_context("forkserver").set_forkserver_preload(["__main__", __name__])
    return "forkserver"


METRIC_PREFIX = "episode_metric/"  # info keys of per-episode metrics (see GymVecEnv)


class UserEnvError(ValueError):
    """The user's env (its module, or its constructor) raised: one line naming it and the error."""


def find_spec(env_id: str) -> gym.envs.registration.EnvSpec:
    """gymnasium's registration of ``env_id``; a ``module:Env-v0`` id imports ``module`` first
    (as ``gymnasium.make`` does), so an env registered by the user's own package trains from the
    command line. Raises ValueError (one line, with the fix) when there is none."""
    module, _, name = env_id.rpartition(":")
    if module:
        try:
            importlib.import_module(module)
        except ImportError as err:
            raise ValueError(
                f"env.id {env_id!r}: cannot import {module!r} ({err}). Install it or add its folder to "
                f"PYTHONPATH; importing it must register {name!r} (gymnasium.register)."
            ) from None
        except Exception as err:  # the user's module itself raised while it was imported
            raise UserEnvError(
                f"env.id {env_id!r}: importing {module!r} raised {raised(err)}. Fix that module "
                f"(`python -c 'import {module}'` shows the traceback)."
            ) from err
    try:
        return gym.spec(name)
    except gym.error.Error as err:
        where = f"importing {module!r} did not register it" if module else "not a registered id"
        raise ValueError(
            f"env.id {env_id!r}: {where} ({err}). Atari games are named ALE/<Game>-v5; your own env "
            f"is named module:Env-v0, where importing module calls gymnasium.register('Env-v0', ...)."
        ) from None


class GymVecEnv(VecEnv):
    """``cfg.num_envs`` gymnasium envs as one VecEnv: ``gymnasium.make_vec(cfg.id)``, or, from an
    env family plugin (auxrl/envs/family.py), ``make_env(**env.kwargs)`` per env (an env class or
    function that need not be registered with gymnasium). ``image``: pixel preprocessing of each
    env's frames (auxrl/envs/image.py).

    Per-episode metrics: an env may put ``episode_metric/<name>`` numbers in the info of an
    episode's last step; they come out with that episode in :attr:`Step.episode_metrics`, and
    ``summarize`` (from its family) turns their means into scores."""

    def __init__(
        self,
        cfg: EnvConfig,
        *,
        training: bool = True,
        stats: NormStats | None = None,
        render: bool = False,
        make_env: Callable[..., gym.Env] | None = None,
        image: ImageOptions | None = None,
        summarize: Callable[[dict[str, float]], dict[str, float]] | None = None,
    ) -> None:
        if make_env is None:
            find_spec(cfg.id)
        kwargs = dict(cfg.kwargs)
        if render:
            kwargs["render_mode"] = "rgb_array"
            if not os.environ.get("DISPLAY"):
                # Off-screen rendering on a machine without a display: MuJoCo renders through GLFW
                # (needs one) unless told EGL, and pygame (classic control) complains without a
                # video driver. Both are read when the env below first imports them.
                os.environ.setdefault("MUJOCO_GL", "egl")
                os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
        mujoco = make_env is None and _is_mujoco(cfg.id)
        if mujoco:
            _route_mujoco_warnings()
        try:
            wrappers = image_wrappers(image) if image is not None else []
            if make_env is not None:
                vector = gym.vector.AsyncVectorEnv if cfg.vector_mode == "async" else gym.vector.SyncVectorEnv
                fns = [functools.partial(_wrapped, make_env, wrappers, kwargs) for _ in range(cfg.num_envs)]
                env = vector(fns, **vector_kwargs(cfg.vector_mode))
            else:
                env = gym.make_vec(
                    cfg.id,
                    num_envs=cfg.num_envs,
                    vectorization_mode=cfg.vector_mode,
                    vector_kwargs=vector_kwargs(cfg.vector_mode),
                    wrappers=wrappers,
                    **kwargs,
                )
        except TypeError as err:
            if make_env is not None or (not cfg.kwargs and _is_users(cfg.id)):  # the env's own code
                raise _construction_failed(cfg.id, err) from err
            unknown = [k for k in cfg.kwargs if k not in (valid := _make_kwargs(cfg.id))]
            if not unknown or not valid:
                raise ValueError(
                    f"env.kwargs {dict(cfg.kwargs)} were refused by {cfg.id} ({err}): check their "
                    f"values and types."
                ) from None
            raise ValueError(
                f"env.kwargs: {cfg.id} takes no {', '.join(map(repr, unknown))}. Valid keys: "
                f"{', '.join(sorted(valid))}."
            ) from None
        except ImportError:  # an optional dependency of a preprocessing step, named with its fix
            raise
        except gym.error.DependencyNotInstalled as err:
            fix = 'pip install "auxrl[mujoco]"' if mujoco else "install what it names"
            raise ImportError(f"{cfg.id}: {str(err).strip().splitlines()[0]} ({fix}).") from None
        except Exception as err:
            if make_env is None and not _is_users(cfg.id):  # gymnasium's own envs: a bug, with its traceback
                raise
            raise _construction_failed(cfg.id, err) from err
        self.stats = stats if stats is not None else NormStats()
        # Dict observations travel packed (auxrl/envs/dictobs.py); the space stays the Dict.
        dict_obs = isinstance(env.single_observation_space, gym.spaces.Dict)
        if dict_obs and cfg.normalize_obs:
            env.close()
            raise ValueError(
                f"env.normalize_obs=true: {cfg.id} has dict observations, which are not normalised; drop it."
            )
        self._layout = DictLayout(env.single_observation_space) if dict_obs else None
        self.env, self._raw = wrap(env, cfg, self.stats, training)
        self.num_envs = cfg.num_envs
        self.env_id = cfg.id
        self.single_observation_space = self.env.single_observation_space
        self.single_action_space = self.env.single_action_space
        self.tracker = EpisodeTracker(cfg.num_envs)
        self._done = np.zeros(cfg.num_envs, dtype=bool)
        self._summarize = summarize
        self._pending: list[dict[str, float]] = [{} for _ in range(cfg.num_envs)]  # per env
        spec = label_spec(cfg) if training else LabelSpec()  # env.labels: read for training only
        self.label_names = spec.names
        self._labels = LabelReader(spec, cfg.num_envs, cfg.id) if len(spec) else None

    def _packed(self, obs: Any) -> np.ndarray:
        if self._layout is None:
            return obs
        for value in obs.values():  # before packing: NaN as bytes would pass unseen
            self._check_finite("observation", np.asarray(value))
        return self._layout.pack(obs)

    def reset(self, seed: int | None = None) -> np.ndarray:
        with worker_deaths(self.env, self.env_id, "reset"):
            obs, info = self.env.reset(seed=seed)
        obs = self._packed(obs)
        self._check_finite("observation", obs)
        if self._labels is not None:
            self.reset_labels = self._labels.read(info)
        self.tracker = EpisodeTracker(self.num_envs)
        self._done[:] = False
        self._pending = [{} for _ in range(self.num_envs)]
        return obs

    def step(self, actions: np.ndarray) -> Step:
        with worker_deaths(self.env, self.env_id, "a step"):  # ClipAction bounds the actions
            obs, reward, terminated, truncated, info = self.env.step(actions)
        obs = self._packed(obs)
        self._check_finite("observation", obs)
        self._check_finite("reward", reward)
        reset = self._done  # NEXT_STEP: the step after a done only resets
        self._done = terminated | truncated
        step = self.tracker.step(obs, self._raw.last_reward, terminated, truncated, reset)
        step.episode_metrics = self._episode_metrics(info, reset)
        step.reward = np.asarray(reward, dtype=np.float32)  # what training sees (scaled, if configured)
        if self._labels is not None:  # a reset step's info is the reset's: the new episode's
            step.labels = self._labels.read(info, reset)
        return step

    def _episode_metrics(self, info: dict[str, Any], reset: np.ndarray) -> dict[str, np.ndarray]:
        """Hand out the metrics of the episodes reported at this step (those whose envs reset
        now, in env order), then keep those of the episodes that just ended."""
        out: dict[str, np.ndarray] = {}
        ended = np.flatnonzero(reset)
        rows = [self._pending[j] for j in ended]
        for name in sorted({name for row in rows for name in row}):
            out[name] = np.array([row.get(name, np.nan) for row in rows], dtype=np.float64)
        for j in ended:
            self._pending[j] = {}
        for key, values in info.items():
            if key.startswith(METRIC_PREFIX):
                mask = info.get(f"_{key}", np.ones(self.num_envs, dtype=bool)) & self._done
                for j in np.flatnonzero(mask):
                    self._pending[j][key[len(METRIC_PREFIX) :]] = float(values[j])
        return out

    def summarize_metrics(self, means: dict[str, float]) -> dict[str, float]:
        return self._summarize(means) if self._summarize is not None else {}

    def _check_finite(self, what: str, values: np.ndarray) -> None:
        """A NaN or inf from the env would reach the network and be found only as a NaN loss (or
        a NaN action sent back to the env): name the env instead. Microseconds per step."""
        if np.issubdtype(values.dtype, np.floating) and not np.isfinite(values).all():
            bad = np.flatnonzero(~np.isfinite(values.reshape(self.num_envs, -1)).all(axis=1))
            raise ValueError(
                f"env.id {self.env_id!r} returned a non-finite {what} (NaN or inf) in env "
                f"{int(bad[0])} of {self.num_envs}: auxrl cannot learn from it. Fix the env, or wrap "
                f"it to replace such values before they reach auxrl."
            )

    def render(self) -> np.ndarray | None:
        frames = self.env.render()
        return None if not frames else np.asarray(frames[0])

    def close(self) -> None:
        close_vector_env(self.env)


def raised(err: BaseException) -> str:
    """``RuntimeError: its message`` on one line (the message's first line)."""
    message = (str(err).strip().splitlines() or [""])[0]
    return f"{type(err).__name__}: {message}" if message else type(err).__name__


def _is_users(env_id: str) -> bool:
    """Whether ``env_id`` is the user's (or a third party's) env rather than one of gymnasium's:
    an error raised while it is made is then reported as the env's, on one line."""
    entry = find_spec(env_id).entry_point
    return ":" in env_id or not (isinstance(entry, str) and entry.startswith("gymnasium."))


def _construction_failed(env_id: str, err: BaseException) -> UserEnvError:
    module, _, name = env_id.rpartition(":")
    make = f"import {module}; gymnasium.make({name!r})" if module else f"gymnasium.make({name!r})"
    return UserEnvError(
        f"env.id {env_id!r}: making the env raised {raised(err)}. Fix the env (in Python, `{make}` "
        f"shows the traceback)."
    )


def _is_mujoco(env_id: str) -> bool:
    entry = find_spec(env_id).entry_point
    return isinstance(entry, str) and entry.startswith("gymnasium.envs.mujoco")


def _route_mujoco_warnings() -> None:
    """MuJoCo prints its warnings and also appends them to MUJOCO_LOG.TXT in the working directory
    (a stray file in the user's project): send them to Python's warnings instead."""
    try:
        import mujoco
    except ImportError:
        return  # gymnasium's error, raised when the env is made, says how to install it
    if hasattr(mujoco, "set_mju_user_warning"):
        mujoco.set_mju_user_warning(_mujoco_warning)


def _mujoco_warning(message: str) -> None:
    warnings.warn(f"MuJoCo: {message.strip()}", stacklevel=2)


def _make_kwargs(env_id: str) -> list[str]:
    """Keyword arguments ``gymnasium.make`` accepts for ``env_id`` (empty when they cannot be told)."""
    spec = find_spec(env_id)
    try:
        creator = spec.entry_point
        if isinstance(creator, str):
            creator = gym.envs.registration.load_env_creator(creator)
        params = inspect.signature(creator).parameters.values()
    except (ImportError, AttributeError, TypeError, ValueError):
        return []
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return []  # the env takes any keyword: the TypeError came from elsewhere
    own = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return own + ["max_episode_steps", "disable_env_checker"]


def _wrapped(
    make_env: Callable[..., gym.Env], wrappers: list[Callable[[gym.Env], gym.Env]], kwargs: dict[str, Any]
) -> gym.Env:
    env = make_env(**kwargs)
    for wrapper in wrappers:
        env = wrapper(env)
    return env
