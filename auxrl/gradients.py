"""How the gradients of several objectives become one step (used by auxrl/learner.py).

PPO's gradient is clipped on its own to ``ppo.max_grad_norm`` (its step is CleanRL's, whatever
the heads do: a large head gradient in a shared clip would silently lower PPO's learning rate).
Each auxiliary task's loss gives a gradient on the torso and on the parameters it owns; the
balancer (``aux.balance``, auxrl/balance.py) turns each task's torso gradient into what is added
to PPO's, and each task's own gradient is clipped to ``aux.max_grad_norm``. With several
processes the raw gradients are averaged first (auxrl/distributed.py), so every rank decides the
same. Nothing is applied before :func:`check_finite` has seen every loss and norm.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from auxrl.balance import EPS, Balancer, cosine
from auxrl.distributed import Dist

# Terms checked for NaN/inf before every optimizer step (losses and gradient norms).
GUARDED = ("loss", "_norm", "ratio", "entropy", "total")


class NonFiniteError(ValueError):
    """A loss or gradient became NaN or infinite; nothing was applied."""


@dataclass
class LearnerParams:
    """The trainable parameters, grouped by who owns them."""

    torso: list[nn.Parameter]
    ppo_heads: list[nn.Parameter]  # policy and value
    # Each aux task's own parameters, then those of other modules its loss trains (the PPO heads
    # for augment_consistency: AuxTask.shared_parameters); the torso is never among them.
    tasks: dict[str, list[nn.Parameter]]

    @classmethod
    def of(cls, agent: nn.Module, task_names: list[str]) -> LearnerParams:
        shared = {id(p) for p in agent.torso.parameters()}  # a task may hold the torso itself

        def trainable(module: nn.Module) -> list[nn.Parameter]:
            return [p for p in module.parameters() if p.requires_grad and id(p) not in shared]

        def owned(task: nn.Module) -> list[nn.Parameter]:
            out, seen = [], set(shared)  # frozen ones (model.freeze) left out, each parameter once
            for p in [*task.parameters(), *getattr(task, "shared_parameters", list)()]:
                if p.requires_grad and id(p) not in seen:
                    seen.add(id(p))
                    out.append(p)
            return out

        return cls(
            [p for p in agent.torso.parameters() if p.requires_grad],
            trainable(agent.heads["policy"]) + trainable(agent.heads["value"]),
            {name: owned(agent.heads[name]) for name in task_names},
        )

    @property
    def ppo(self) -> list[nn.Parameter]:
        return self.torso + self.ppo_heads


def _grads(loss: torch.Tensor, params: list[nn.Parameter], retain: bool = False) -> list[torch.Tensor]:
    """d loss / d params (zeros where a parameter is not used). ``retain``: keep the graph for a
    later loss that shares it (tasks on PPO's minibatch features)."""
    if not params:
        return []
    if not loss.requires_grad:  # e.g. a task whose loss does not depend on any parameter
        return [torch.zeros_like(p) for p in params]
    grads = torch.autograd.grad(loss, params, allow_unused=True, retain_graph=retain)
    return [g if g is not None else torch.zeros_like(p) for g, p in zip(grads, params, strict=True)]


def _norm(tensors: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    if not tensors:
        return torch.zeros((), device=device)
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(tensors)))


def _clip_(
    tensors: list[torch.Tensor], max_norm: float | None, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale ``tensors`` in place to a total norm of at most ``max_norm``; (norm, factor)."""
    norm = _norm(tensors, device)
    if max_norm is None or not tensors:
        return norm, torch.ones_like(norm)
    factor = (max_norm / (norm + 1e-6)).clamp(max=1.0)  # clip_grad_norm_'s formula
    torch._foreach_mul_(tensors, factor)
    return norm, factor


def _flat(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def set_gradients(
    ppo_total: torch.Tensor,
    aux_losses: dict[str, torch.Tensor],
    params: LearnerParams,
    balancer: Balancer,
    max_grad_norm: float,
    aux_max_grad_norm: float | None,
    dist: Dist | None = None,
    shared_graph: bool = False,
    ppo_grads: list[torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Steps 1-4 above: fill ``p.grad`` of every parameter that gets one; returns diagnostics.

    ``aux_losses`` are already multiplied by their weights. With ``dist`` (several processes)
    every raw gradient is averaged over the ranks first, in one flattened all-reduce, so the clip
    and the balancer see the gradient of all ranks' data (as CleanRL averages, then clips) and
    decide identically everywhere. Diagnostics (device tensors): ``losses/grad_norm`` (PPO's,
    before its clip), ``losses/clip_factor``, and per task ``grad_cosine`` and
    ``grad_norm_ratio`` (its weighted torso gradient against PPO's, before balancing),
    ``scale`` (what the balancer multiplied it by) and ``head_grad_norm``.
    """
    n_torso = len(params.torso)
    # shared_graph: some task losses are taken on PPO's own forward pass (Needs.minibatch).
    # (multi-task: given, the tasks' gradients already combined by task_gradients)
    if ppo_grads is None:
        ppo_grads = _grads(ppo_total, params.ppo, retain=shared_graph)
    # Several tasks may share that pass too: every backward keeps the graph (it goes with the step).
    task_grads = {
        name: _grads(loss, params.torso + params.tasks[name], retain=shared_graph)
        for name, loss in aux_losses.items()
    }
    if dist is not None:
        dist.average_([*ppo_grads, *(g for grads in task_grads.values() for g in grads)])
    grad_norm, clip = _clip_(ppo_grads, max_grad_norm, ppo_total.device)
    out = {"losses/grad_norm": grad_norm, "losses/clip_factor": clip}
    heads: list[tuple[list[nn.Parameter], list[torch.Tensor]]] = [(params.ppo_heads, ppo_grads[n_torso:])]
    aux_torso: dict[str, torch.Tensor] = {}
    for name, grads in task_grads.items():
        head_norm, _ = _clip_(grads[n_torso:], aux_max_grad_norm, ppo_total.device)
        out[f"aux/{name}/head_grad_norm"] = head_norm
        heads.append((params.tasks[name], grads[n_torso:]))
        if n_torso:
            aux_torso[name] = _flat(grads[:n_torso])

    if n_torso:
        g_main = _flat(ppo_grads[:n_torso])  # clipped
        main_norm = g_main.norm() / clip  # before the clip
        balanced, scales = balancer(g_main, aux_torso)
        for name, g in aux_torso.items():
            out[f"aux/{name}/grad_cosine"] = cosine(g_main, g)
            out[f"aux/{name}/grad_norm_ratio"] = g.norm() / main_norm.clamp(min=1e-12)
            out[f"aux/{name}/scale"] = scales[name]
        torso_grad = g_main + sum(balanced.values()) if balanced else g_main
        pieces = torch.split(torso_grad, [p.numel() for p in params.torso])
        for p, g in zip(params.torso, pieces, strict=True):
            p.grad = g.view_as(p)
    for owned, grads in heads:
        for p, g in zip(owned, grads, strict=True):
            p.grad = g if p.grad is None else p.grad + g  # a head shared between owners gets both
    return out


def check_finite(terms: dict[str, torch.Tensor], step: int) -> None:
    """Raise :class:`NonFiniteError` naming the first non-finite term (one host sync)."""
    names = list(terms)
    finite = torch.isfinite(torch.stack([terms[n].detach().float().reshape(()) for n in names]))
    if bool(finite.all()):
        return
    bad = [n for n, ok in zip(names, finite.tolist(), strict=True) if not ok]
    raise NonFiniteError(
        f"{bad[0]} is {float(terms[bad[0]].detach()):g} in the update after env step {step:,} "
        f"(non-finite: {', '.join(bad)}); nothing was applied and no checkpoint is written (the "
        f"run's last checkpoint, if it has one, stays `latest`). Likely causes: a learning rate too "
        f"high for this model (ppo.lr), a loss weight or coefficient too large (aux.tasks.<name>.weight, "
        f"ppo.vf_coef), or a custom head producing NaN. Lower it and resume with --resume."
    )


def pcgrad_tasks(flat: torch.Tensor) -> torch.Tensor:
    """PCGrad (Yu et al. 2020) over the rows of ``flat`` ([tasks, parameters]): from each task's
    gradient the component that conflicts with another task's (negative dot product) is removed,
    one other task after another (in index order: no random draw), against the original ones."""
    out = flat.clone()
    squares = flat.pow(2).sum(1).clamp(min=EPS)
    for i in range(flat.shape[0]):
        for j in range(flat.shape[0]):
            if i != j:
                dot = (out[i] * flat[j]).sum()
                out[i] = out[i] - dot.clamp(max=0.0) / squares[j] * flat[j]
    return out


def task_gradients(
    losses: list[torch.Tensor], names: list[str], params: LearnerParams, method: str
) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
    """Multi-task PPO: each task's gradient on the PPO parameters (torso, then heads), their torso
    parts combined by ``ppo.task_balance`` (none: the mean; norm: each rescaled to the mean of
    their norms first; pcgrad: conflicts projected out first), their head parts averaged (a task's
    heads only get gradients from its own samples). The result is the gradient of the tasks'
    mean loss when ``method`` is none. Diagnostics per task: ``tasks/<name>/grad_norm`` (its torso
    gradient's norm) and ``tasks/<name>/grad_cosine`` (its cosine with the other tasks' sum)."""
    per = [_grads(loss, params.ppo, retain=True) for loss in losses]
    count, n_torso = len(losses), len(params.torso)
    heads = [sum(g[k] for g in per) / count for k in range(n_torso, len(params.ppo))]
    out: dict[str, torch.Tensor] = {}
    if not n_torso:
        return heads, out
    flat = torch.stack([_flat(g[:n_torso]) for g in per])  # [tasks, torso parameters]
    norms = flat.norm(dim=1)
    total = flat.sum(0)
    for i, name in enumerate(names):
        out[f"tasks/{name}/grad_norm"] = norms[i]
        out[f"tasks/{name}/grad_cosine"] = cosine(flat[i], total - flat[i])
    if method == "norm":
        flat = flat * (norms.mean() / norms.clamp(min=EPS)).unsqueeze(1)
    elif method == "pcgrad":
        flat = pcgrad_tasks(flat)
    torso = [
        g.view_as(p)
        for g, p in zip(
            torch.split(flat.mean(0), [p.numel() for p in params.torso]), params.torso, strict=True
        )
    ]
    return torso + heads, out
