"""Environment families: which env ids a family takes, the ``env.*`` keys it reads, its own
options, and how it builds a :class:`~auxrl.envs.base.VecEnv`.

Built in: ``atari`` (``ALE/<Game>-v5`` on ale-py's native vector env), ``minigrid``
(``MiniGrid-*``, ``BabyAI-*``; auxrl/envs/minigrid.py), ``crafter`` (``CrafterReward-v1``;
auxrl/envs/crafter.py), ``vizdoom`` (``Vizdoom*-v1``; auxrl/envs/vizdoom.py) and ``gymnasium``
(every other registered id, through ``gymnasium.vector``; it takes any id, so it is asked last). A
package adds a family as it adds an auxiliary task: a subclass of :class:`EnvFamily` registered
under the ``auxrl.env_families`` entry-point group, or named by import path in the config
(``env.family=my_pkg.envs:MyFamily``). ``env.family`` unset: the first family whose
:meth:`EnvFamily.handles` takes ``env.id`` (registered families before the built-ins).

A family's own settings go under ``env.options`` and are checked against its ``Options``
dataclass (types, unknown keys) when the config is validated (``config.family_options``)::

    @dataclass
    class Options:
        scenario: str = "basic"
        frame_skip: int = 4

    class MyFamily(EnvFamily):
        name = "mine"
        Options = Options
        def handles(self, env_id): return env_id.startswith("Mine/")
        def make(self, cfg, options, *, training, stats, render): return MyVecEnv(cfg, options)
"""

from __future__ import annotations

import importlib
import importlib.metadata
from typing import TYPE_CHECKING, Any, ClassVar

from auxrl.errors import ConfigError

if TYPE_CHECKING:
    from auxrl.config import EnvConfig
    from auxrl.envs.base import VecEnv
    from auxrl.envs.normalize import NormStats

BUILTINS = {
    "atari": "auxrl.envs.builtin:AtariFamily",
    "minigrid": "auxrl.envs.minigrid:MiniGridFamily",  # needs auxrl[minigrid] to make envs
    "crafter": "auxrl.envs.crafter:CrafterFamily",  # needs auxrl[crafter]
    "vizdoom": "auxrl.envs.vizdoom:VizdoomFamily",  # needs auxrl[vizdoom]
    "gymnasium": "auxrl.envs.builtin:GymFamily",
}
FALLBACK = "gymnasium"  # takes any id: asked after every other family
ENTRY_POINT_GROUP = "auxrl.env_families"


class EnvFamily:
    """One kind of environment (see the module docstring)."""

    name: ClassVar[str] = ""
    # EnvConfig keys that this family alone reads (e.g. atari's frameskip): another family's
    # config setting one of them is an error, not a silent no-op.
    keys: ClassVar[tuple[str, ...]] = ()
    # Its own settings (env.options), a dataclass; None: it takes none.
    Options: ClassVar[type | None] = None
    # The env scores its envs log from the episodes' metrics (VecEnv.summarize_metrics, e.g.
    # crafter/score): what a study spec's `score:` may name besides return.
    scores: ClassVar[tuple[str, ...]] = ()

    def handles(self, env_id: str) -> bool:
        """Whether ``env_id`` belongs to this family (used when ``env.family`` is unset)."""
        return False

    def make(
        self, cfg: EnvConfig, options: Any, *, training: bool, stats: NormStats | None, render: bool
    ) -> VecEnv:
        """``cfg.num_envs`` envs of ``cfg.id`` as one VecEnv. ``options``: ``env.options`` as an
        ``Options`` instance (None without). ``training=False``: evaluation (whole games, no
        training-only reward shaping); ``render``: :meth:`VecEnv.render` gives the screen."""
        raise NotImplementedError

    @classmethod
    def description(cls) -> str:
        return (cls.__doc__ or cls.__name__).strip().splitlines()[0]


def _config_error(message: str) -> ConfigError:
    return ConfigError(message)


def _entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def available() -> list[str]:
    """Registered family names, registered ones first, the fallback last."""
    registered = [n for n in _entry_points() if n not in BUILTINS]
    return [*registered, *(n for n in BUILTINS if n != FALLBACK), FALLBACK]


def _load(name: str) -> type[EnvFamily]:
    eps = _entry_points()
    path = BUILTINS.get(name)
    try:
        if path is None and name in eps:
            cls = eps[name].load()
        else:
            path = path or name
            module_name, _, attr = path.partition(":")
            if not attr:
                raise _config_error(
                    f"env.family={name!r} is neither a registered family ({', '.join(available())}) nor an "
                    f"import path of the form package.module:ClassName."
                )
            cls = getattr(importlib.import_module(module_name), attr)
    except ImportError as err:
        raise _config_error(
            f"env.family={name!r}: cannot import it ({err}). Install its package or add its folder to "
            f"PYTHONPATH (e.g. PYTHONPATH=. auxrl ...)."
        ) from None
    except AttributeError:
        raise _config_error(f"env.family={name!r}: its module has no such class.") from None
    except Exception as err:
        if isinstance(err, ConfigError):  # ours, above
            raise
        first = (str(err).strip().splitlines() or [""])[0]
        raise _config_error(
            f"env.family={name!r}: importing it raised {type(err).__name__}: {first}. Fix that module "
            f"(importing it in Python shows the traceback)."
        ) from err
    if not (isinstance(cls, type) and issubclass(cls, EnvFamily)) or cls is EnvFamily:
        raise _config_error(f"env.family={name!r} is {cls!r}, not a subclass of auxrl.envs.family.EnvFamily.")
    return cls


def family_for(env_id: str, family: str | None = None) -> EnvFamily:
    """The family named ``family``, or else the first one that handles ``env_id``."""
    if family:
        return _load(family)()
    for name in available():
        try:
            found = _load(name)()
        except Exception:  # a broken plugin must not stop the other families' ids
            if name in BUILTINS:
                raise
            continue
        if name == FALLBACK or found.handles(env_id):
            return found
    raise AssertionError("unreachable: the fallback family takes every id")


def family_keys() -> dict[str, tuple[str, ...]]:
    """Family name -> the EnvConfig keys only it reads (built-ins and registered ones)."""
    out = {}
    for name in available():
        try:
            out[name] = _load(name).keys
        except Exception:
            continue
    return out
