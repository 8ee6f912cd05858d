"""The learner: one update from a finished rollout, objectives -> balancer -> clip -> step.

Per minibatch (``ppo.update_epochs`` passes of ``ppo.num_minibatches`` shuffled minibatches):

1. The network: the minibatch's frames (augmented with ``ppo.augment``, as RAD does) through the
   torso. Tasks that learn from PPO's minibatch (``Needs.minibatch``) get a torso pass of their
   own samples, so their backward runs through those samples only.
2. The objectives, each returning named loss terms: PPO (auxrl/ppo/loss.py, the ``policy`` and
   ``value`` heads) and every active auxiliary task (auxrl/tasks/, its own head), each on its own
   windows or on PPO's minibatch features.
3. The gradients (auxrl/gradients.py): PPO's clipped to ``ppo.max_grad_norm`` on its own, each
   task's torso gradient through the balancer, each task's own head clipped to
   ``aux.max_grad_norm``; averaged over processes first where there are several.
4. A non-finite check before anything is applied, the optimizer step, the tasks' hooks.

Without active tasks the update is CleanRL's: one backward of PPO's loss, one clip, one step.
With ``perf.bf16`` (``amp``), autocast covers the forward passes and losses of 1-2 only: every
backward, the balancer and the step run outside it.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from auxrl.augment import augment
from auxrl.balance import Balancer
from auxrl.config import AuxConfig, PPOConfig
from auxrl.distributed import Dist
from auxrl.envs.dictobs import ImageView
from auxrl.gradients import GUARDED, LearnerParams, check_finite, set_gradients, task_gradients
from auxrl.ppo.loss import PPOLoss, PPOObjective, mean_loss
from auxrl.ppo.rollout import Batch, RolloutStorage
from auxrl.tasks.base import AuxOutput
from auxrl.tasks.combine import AuxTasks, PPOSamples


def _augment_generator(device: torch.device) -> torch.Generator:
    """A generator on ``device`` seeded from torch's default CPU generator: that one is seeded by
    the run's seed and saved in checkpoints, so a resumed run continues the same stream."""
    generator = torch.Generator(device=device)
    generator.manual_seed(int(torch.randint(0, 2**62, ())))
    return generator


@dataclass
class Learner:
    """What one update needs across a run: the model, its optimizer and balancer.

    ``trainable`` are the parameters the optimizer steps (``model.freeze`` leaves some out);
    ``dist`` averages gradients over processes (one process: nothing); ``amp()`` opens the
    context of each minibatch's forward passes and losses (bf16 autocast with ``perf.bf16``).
    ``frames``: what ``ppo.augment`` shifts (a dict observation's image key; None: the
    observations themselves).
    """

    agent: nn.Module
    optimizer: torch.optim.Optimizer
    balancer: Balancer
    trainable: list[nn.Parameter]
    dist: Dist = field(default_factory=Dist)
    amp: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
    frames: ImageView | None = None

    def update(
        self,
        storage: RolloutStorage,
        ppo: PPOConfig,
        aux_cfg: AuxConfig,
        aux: AuxTasks | None = None,
        weights: dict[str, float] | None = None,
        step: int = 0,
    ) -> dict[str, torch.Tensor]:
        """Learn from ``storage`` (a finished rollout, GAE done) with the stage's ``ppo`` and
        ``aux_cfg`` settings, its tasks ``aux`` and their current ``weights``; returns the mean of
        every named term over the minibatches (device tensors). ``step``: the env step, named in
        the error when a loss turns non-finite.

        With several processes the ranks' raw gradients are averaged before the clip and early
        stopping (``ppo.target_kl``) uses the ranks' mean KL, so every rank takes the same step.
        ``aux.every`` counts minibatches across updates (``aux.minibatches_done``).
        """
        weights = weights or {}
        objective = PPOObjective(ppo)
        popart = (
            getattr(self.agent.value, "popart", None) if getattr(self.agent, "task_aware", False) else None
        )
        if popart is not None:  # PopArt: the targets' statistics first, outputs preserved (ART, then POP)
            task = storage.task.expand(storage.num_steps, storage.num_envs)
            popart.update(
                storage.returns, task, storage.valid, reduce=self.dist.average_ if self.dist.enabled else None
            )
        active = [name for name, w in weights.items() if w != 0.0]  # a zero weight: not sampled, not run
        params = LearnerParams.of(self.agent, active) if active and aux is not None else None
        sums: dict[str, torch.Tensor] = defaultdict(lambda: torch.zeros((), device=storage.device))
        counts: dict[str, int] = defaultdict(int)
        count = 0  # minibatches so far
        first = aux.minibatches_done if aux is not None else 0
        split = 0  # tasks that learn from PPO's minibatch take its first `split` samples' features
        multi = len(getattr(self.agent, "tasks", ())) > 1
        if multi and params is None:
            params = LearnerParams.of(self.agent, [])  # the tasks' PPO gradients are combined by hand
        if active and aux is not None:
            minibatches = ppo.update_epochs * ppo.num_minibatches
            aux.draw(sum((first + i) % aux_cfg.every == 0 for i in range(minibatches)), active)
            split = aux.minibatch_size(active)
        # ppo.augment (RAD): the minibatch's frames are augmented for the loss only (the rollout keeps
        # the frames the policy acted on, whose log-probs are the old ones). One seed per update from
        # torch's CPU stream (checkpointed); with "none" nothing is drawn.
        augment_rng = _augment_generator(storage.device) if ppo.augment != "none" else None
        for _epoch in range(ppo.update_epochs):
            for batch in storage.minibatches(ppo.num_minibatches):
                with_aux = bool(active) and aux is not None and (first + count) % aux_cfg.every == 0
                obs = (
                    batch.obs if augment_rng is None else self._augmented(batch.obs, ppo.augment, augment_rng)
                )
                with self.amp():  # the forward passes and losses; their gradients are taken outside
                    loss, task_losses, aux_out = self._losses(
                        objective, storage, batch, obs, aux, active, split, with_aux, multi
                    )
                self.optimizer.zero_grad(set_to_none=True)
                terms = loss.terms()
                ppo_grads = None
                if task_losses:  # multi-task: each task's terms and gradient, combined by ppo.task_balance
                    assert params is not None
                    names = self.agent.task_names
                    for name, task_loss in zip(names, task_losses, strict=True):
                        for key, value in task_loss.terms().items():
                            terms[key.replace("losses/", f"losses/{name}/")] = value
                    ppo_grads, diagnostics = task_gradients(
                        [t.total for t in task_losses], names, params, ppo.task_balance
                    )
                    terms.update(diagnostics)
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
                            self.balancer,
                            ppo.max_grad_norm,
                            aux_cfg.max_grad_norm,
                            self.dist,
                            shared_graph=split > 0,
                            ppo_grads=ppo_grads,
                        )
                    )
                    terms["losses/total"] = loss.total + sum(weighted.values())
                else:
                    if ppo_grads is not None:
                        assert params is not None
                        for q, g in zip(params.ppo, ppo_grads, strict=True):
                            q.grad = g
                    terms.update(
                        self._ppo_gradients(
                            loss.total, ppo.max_grad_norm, storage.device, backward=ppo_grads is None
                        )
                    )
                    terms["losses/total"] = loss.total
                # After the all-reduce: a NaN on any rank reaches every rank, and all stop here.
                check_finite({k: v for k, v in terms.items() if k.endswith(GUARDED)}, step)
                self.optimizer.step()
                if aux is not None:
                    aux.after_update()
                count += 1
                for key, value in terms.items():
                    sums[key] += value.detach().float()
                    counts[key] += 1  # aux terms exist on aux minibatches only (aux.every)
            if ppo.target_kl is not None and float(self.dist.mean(loss.approx_kl)) > ppo.target_kl:
                break  # early stop: the policy moved too far from the one that collected the data
        if aux is not None:
            aux.minibatches_done += count
        self.balancer.end_update()
        out = {key: value / counts[key] for key, value in sums.items()}
        if popart is not None:
            for i, name in enumerate(self.agent.task_names):
                out[f"popart/{name}/mu"] = popart.mu[i].clone()
                out[f"popart/{name}/sigma"] = popart.sigma[i]
        return out

    def _augmented(self, obs: torch.Tensor, kind: str, generator: torch.Generator) -> torch.Tensor:
        """RAD (``ppo.augment``): PPO's minibatch with its frames shifted."""
        if self.frames is None:
            return augment(obs, kind, generator)
        return self.frames.with_frames(obs, augment(self.frames.frames(obs), kind, generator))

    def _losses(
        self,
        objective: PPOObjective,
        storage: RolloutStorage,
        batch: Batch,
        obs: torch.Tensor,
        aux: AuxTasks | None,
        active: list[str],
        split: int,
        with_aux: bool,
        multi: bool = False,
    ):
        """Steps 1-2: the torso pass(es), PPO's named terms (and each game's, ``multi``) and each
        active task's output."""
        torso = self.agent.torso
        task_features = None  # of the first `split` samples, for the Needs.minibatch tasks
        if with_aux and 0 < split < obs.shape[0]:
            # Their own torso pass (a tensor of their own, not a slice of the joined features: a
            # slice would send zero gradients back through the whole batch); PPO's heads see the
            # joined features.
            task_features = torso(obs[:split])
            features = torch.cat([task_features, torso(obs[split:])])
        else:
            features = torso(obs)  # one torso pass for policy and value
            task_features = features[:split] if with_aux and split else None
        task_losses: list[PPOLoss] = []
        if multi:
            task_losses = objective.per_task(self.agent, batch, features)
            loss = mean_loss(task_losses, batch)
        else:
            loss = objective(self.agent, batch, features, obs)
        aux_out: dict[str, AuxOutput] = {}
        if with_aux:
            assert aux is not None
            shared = (
                None if task_features is None else PPOSamples(storage, batch.index[:split], task_features)
            )
            aux_out = aux.losses(torso, active, shared)
        return loss, task_losses, aux_out

    def _ppo_gradients(
        self, total: torch.Tensor, max_grad_norm: float, device: torch.device, backward: bool = True
    ) -> dict[str, torch.Tensor]:
        """PPO alone: one backward (``backward=False``: the gradients are set already), the ranks'
        average, one clip (CleanRL's step)."""
        if backward and total.requires_grad:  # False when only aux heads train (frozen torso and PPO heads)
            total.backward()
        self.dist.average_([q.grad for q in self.trainable if q.grad is not None])  # before the clip
        # .to: with no gradient at all (aux-only minibatch skipped) torch returns a CPU zero.
        norm = nn.utils.clip_grad_norm_(self.trainable, max_grad_norm).to(device)
        clip = (max_grad_norm / (norm + 1e-6)).clamp(max=1.0)
        return {"losses/grad_norm": norm, "losses/clip_factor": clip}
