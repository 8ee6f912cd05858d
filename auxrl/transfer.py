"""Transfer: start a model from an earlier run's modules (``model.init_from``), freeze some
(``model.freeze``)."""

from __future__ import annotations

from auxrl.models.agent import Agent
from auxrl.rundir import read_checkpoint


def load_pretrained(agent: Agent, run_dir_or_checkpoint: str, modules: list[str] | None = None) -> list[str]:
    """Copy the torso and every same-named, same-shaped head from an earlier run.

    Returns the names of the modules that were loaded. Heads absent from the checkpoint, or of
    another shape (a new game's policy with a different number of actions), keep their fresh
    initialisation.
    """
    saved = read_checkpoint(run_dir_or_checkpoint, "model")["model"]
    own = agent.state_dict()
    names = list(agent.named_modules_for_freeze())
    for name in modules or []:
        if name not in names:
            raise ValueError(
                f"model.init_modules: no module {name!r}. Modules of this model: {', '.join(names)}."
            )
    loaded = []
    for name in modules if modules is not None else names:
        prefix = "torso." if name == "torso" else f"heads.{name}."
        keys = [k for k in own if k.startswith(prefix)]
        if keys and all(k in saved and saved[k].shape == own[k].shape for k in keys):
            for k in keys:
                own[k] = saved[k]
            loaded.append(name)
    if "torso" not in loaded:
        raise ValueError(
            f"model.init_from={run_dir_or_checkpoint!r}: its torso does not match this model "
            f"(a different model.torso or observation shape)."
        )
    agent.load_state_dict(own)
    return loaded


def freeze(agent: Agent, names: list[str]) -> list[str]:
    """Stop gradients into the named modules (they are then left out of the optimizer)."""
    modules = agent.named_modules_for_freeze()
    for name in names:
        if name not in modules:
            raise ValueError(
                f"model.freeze: no module {name!r}. Modules of this model: {', '.join(modules)}."
            )
        modules[name].requires_grad_(False)
    return list(names)
