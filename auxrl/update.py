"""One learner update: PPO's minibatch steps, with each auxiliary task's gradient balanced in.

Per minibatch, in order:

1. PPO's loss on the minibatch (its frames augmented first with ``ppo.augment``, as RAD does), and
   its gradient on the torso, policy and value parameters.
2. That gradient clipped to ``ppo.max_grad_norm``: PPO's step is CleanRL's step, whatever the
   heads do (a large head gradient in a shared clip would silently lower PPO's learning rate).
3. Each active auxiliary task: its own sampled batch through the shared torso, its weighted
   loss, and that loss's gradient on the torso and the task's own head (plus the PPO heads for a
   task that trains them, e.g. augment_consistency: then added to PPO's). Every task encodes its
   own frames, so its graph is disjoint from PPO's and one backward per loss costs no more
   than one backward of the sum.
4. The balancer (``aux.balance``, auxrl/balance.py) turns each task's torso gradient into what
   is added to PPO's; each head's own gradient is clipped to ``aux.max_grad_norm``.
5. A non-finite check (before anything is applied), the gradient average over processes
   (auxrl/distributed.py; nothing in one process), the optimizer step, the tasks' hooks.

Without active tasks the update is CleanRL's: one backward of PPO's loss, one clip, one step.

With ``perf.bf16`` (``amp``), autocast covers the forward passes and losses of 1 and 3 only: every
backward, the balancer and the step run outside it.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from auxrl.augment import augment
from auxrl.balance import Balancer, cosine
from auxrl.config import AuxConfig, PPOConfig
from auxrl.distributed import Dist
from auxrl.ppo.loss import PPOLoss, ppo_loss
from auxrl.ppo.rollout import RolloutStorage
from auxrl.tasks.base import AuxOutput
from auxrl.tasks.combine import AuxTasks, PPOSamples

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


def _ppo_terms(loss: PPOLoss) -> dict[str, torch.Tensor]:
    return {
        "losses/policy_loss": loss.policy,
        "losses/value_loss": loss.value,
        "losses/entropy": loss.entropy,
        "losses/approx_kl": loss.approx_kl,
        "losses/old_approx_kl": loss.old_approx_kl,
        "losses/clipfrac": loss.clipfrac,
    }


def _augment_generator(device: torch.device) -> torch.Generator:
    """A generator on ``device`` seeded from torch's default CPU generator: that one is seeded by
    the run's seed and saved in checkpoints, so a resumed run continues the same stream."""
    generator = torch.Generator(device=device)
    generator.manual_seed(int(torch.randint(0, 2**62, ())))
    return generator


def ppo_update(
    p: PPOConfig,
    aux_cfg: AuxConfig,
    agent: nn.Module,
    optimizer: torch.optim.Optimizer,
    storage: RolloutStorage,
    aux: AuxTasks | None,
    weights: dict[str, float],
    balancer: Balancer,
    trainable: list[nn.Parameter],
    step: int,
    dist: Dist | None = None,
    amp: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> dict[str, torch.Tensor]:
    """``update_epochs`` passes of shuffled minibatches; returns mean metrics (device tensors).

    ``amp()`` opens the context of each minibatch's forward passes and losses (the trainer's
    bf16 autocast with ``perf.bf16``, auxrl/perf.py); gradients and the step are taken outside it.

    With ``dist`` (several processes), the ranks' raw gradients are averaged before the clip
    (see :func:`set_gradients`) and early stopping uses the ranks' mean KL, so every rank takes
    the same step. ``aux.every`` counts minibatches across updates (``aux.minibatches_done``).
    """
    dist = dist or Dist()
    active = [name for name, w in weights.items() if w != 0.0]  # a zero weight: not sampled, not run
    params = LearnerParams.of(agent, active) if active else None
    sums: dict[str, torch.Tensor] = defaultdict(lambda: torch.zeros((), device=storage.device))
    counts: dict[str, int] = defaultdict(int)
    count = 0  # minibatches so far
    minibatches = p.update_epochs * p.num_minibatches
    first = aux.minibatches_done if aux is not None else 0
    split = 0  # tasks that learn from PPO's minibatch take its first `split` samples' features
    if params is not None and aux is not None:
        runs = sum((first + i) % aux_cfg.every == 0 for i in range(minibatches))
        aux.draw(runs, active)  # every window of this update at once
        split = aux.minibatch_size(active)
    # ppo.augment (RAD): the minibatch's frames are augmented for the loss only (the rollout keeps
    # the frames the policy acted on, whose log-probs are the old ones). One seed per update from
    # torch's CPU stream (checkpointed); with "none" nothing is drawn.
    augment_rng = _augment_generator(storage.device) if p.augment != "none" else None
    for _epoch in range(p.update_epochs):
        for batch in storage.minibatches(p.num_minibatches):
            with_aux = params is not None and aux is not None and (first + count) % aux_cfg.every == 0
            obs = batch.obs if augment_rng is None else augment(batch.obs, p.augment, augment_rng)
            task_features = None  # of the first `split` samples, for the Needs.minibatch tasks
            with amp():  # the forward passes and losses; their gradients are taken below, outside
                if with_aux and 0 < split < obs.shape[0]:
                    # Their own torso pass (a tensor of their own, not a slice of the joined
                    # features: a slice would send zero gradients back through the whole batch), so
                    # a task's backward runs through those samples only; PPO's heads see the joined
                    # features.
                    task_features = agent.torso(obs[:split])
                    joined = torch.cat([task_features, agent.torso(obs[split:])])
                    pi, new_values = agent.ppo_heads(joined, obs)
                else:
                    pi, new_values, features = agent(obs)  # one torso pass for policy and value
                    task_features = features[:split] if with_aux and split else None
                loss = ppo_loss(
                    p, batch, agent.policy.log_prob(pi, batch.actions), agent.policy.entropy(pi), new_values
                )
                aux_out: dict[str, AuxOutput] = {}
                if with_aux:
                    assert aux is not None
                    shared = (
                        None
                        if task_features is None
                        else PPOSamples(storage, batch.index[:split], task_features)
                    )
                    aux_out = aux.losses(agent.torso, active, shared)
            optimizer.zero_grad(set_to_none=True)
            terms = _ppo_terms(loss)
            if with_aux:
                assert params is not None
                weighted = {name: weights[name] * out.loss for name, out in aux_out.items()}
                for name, out in aux_out.items():
                    terms[f"aux/{name}/loss"] = out.loss
                    for key, value in out.metrics.items():
                        terms[f"aux/{name}/{key}"] = torch.as_tensor(value, device=storage.device)
                terms.update(
                    set_gradients(
                        loss.total,
                        weighted,
                        params,
                        balancer,
                        p.max_grad_norm,
                        aux_cfg.max_grad_norm,
                        dist,
                        shared_graph=split > 0,
                    )
                )
                terms["losses/total"] = loss.total + sum(weighted.values())
            else:
                if loss.total.requires_grad:  # False when only aux heads train (frozen torso and PPO heads)
                    loss.total.backward()
                dist.average_([q.grad for q in trainable if q.grad is not None])  # before the clip
                # .to: with no gradient at all (aux-only minibatch skipped) torch returns a CPU zero.
                norm = nn.utils.clip_grad_norm_(trainable, p.max_grad_norm).to(storage.device)
                terms["losses/grad_norm"] = norm
                terms["losses/clip_factor"] = (p.max_grad_norm / (norm + 1e-6)).clamp(max=1.0)
                terms["losses/total"] = loss.total
            # After the all-reduce: a NaN on any rank reaches every rank, and all of them stop here.
            check_finite({k: v for k, v in terms.items() if k.endswith(GUARDED)}, step)
            optimizer.step()
            if aux is not None:
                aux.after_update()

            count += 1
            for key, value in terms.items():
                sums[key] += value.detach().float()
                counts[key] += 1  # aux terms exist on aux minibatches only (aux.every)
        if p.target_kl is not None and float(dist.mean(loss.approx_kl)) > p.target_kl:
            break  # early stop: the policy moved too far from the one that collected the data
    if aux is not None:
        aux.minibatches_done += count
    balancer.end_update()
    return {key: value / counts[key] for key, value in sums.items()}
