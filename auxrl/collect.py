"""Collecting a rollout: env -> the policy -> rollout storage on the training device."""

from __future__ import annotations

import numpy as np
import torch

from auxrl.envs import VecEnv
from auxrl.models.agent import Agent
from auxrl.ppo.rollout import RolloutStorage


def collect_rollout(envs: VecEnv, agent: Agent, storage: RolloutStorage, on_episodes) -> None:
    """Fill ``storage`` with ``num_steps`` steps of every env.

    On entry ``storage.next_obs`` holds the current observations; on exit, the ones after the
    last step. Env groups are stepped in turn (``envs.groups``): the actions of group g are sent,
    then the policy acts for group g+1 while group g's emulators run. Observations are copied
    from the env straight into their preallocated storage slot on the training device.
    ``on_episodes(returns, lengths, steps_taken, first_env, metrics)`` receives finished games as
    they end (``first_env``: the first env of the group they were played in; a group plays one
    task; ``metrics``: their per-episode metrics, :attr:`Step.episode_metrics`).
    """
    num_steps = storage.num_steps
    storage.obs[0].copy_(storage.next_obs)
    if storage.labels is not None:  # env.labels: each obs's state labels, alongside it
        storage.labels[0].copy_(storage.next_labels)

    def receive(env: VecEnv, t: int, sl: slice) -> None:
        step = env.recv()
        # One host->device copy for the four per-env scalars.
        flags = torch.from_numpy(
            np.stack([step.reward, step.terminated, step.truncated, ~step.reset]).astype(np.float32)
        ).to(storage.device, non_blocking=True)
        storage.rewards[t, sl] = flags[0]
        storage.terminated[t, sl] = flags[1].bool()
        storage.truncated[t, sl] = flags[2].bool()
        storage.valid[t, sl] = flags[3].bool()
        slot = storage.obs[t + 1, sl] if t + 1 < num_steps else storage.next_obs[sl]
        slot.copy_(torch.from_numpy(step.obs), non_blocking=True)
        if storage.labels is not None:
            labels = storage.labels[t + 1, sl] if t + 1 < num_steps else storage.next_labels[sl]
            labels.copy_(torch.from_numpy(step.labels), non_blocking=True)
        if len(step.episode_returns):
            on_episodes(
                step.episode_returns,
                step.episode_lengths,
                (t + 1) * storage.num_envs,
                sl.start,
                step.episode_metrics,
            )

    groups = envs.groups
    for t in range(num_steps):
        for sl, env in groups:
            if t > 0:
                receive(env, t - 1, sl)  # group's step t-1 is done: its obs t is in storage
            out = agent.act(storage.obs[t, sl], task=storage.task[sl] if agent.task_aware else None)
            storage.actions[t, sl] = out.action
            storage.log_probs[t, sl] = out.log_prob
            storage.values[t, sl] = out.value
            env.send(out.action.cpu().numpy())
    for sl, env in groups:
        receive(env, num_steps - 1, sl)
