"""Multi-task training (env.tasks): per-task heads, PopArt, learning two tasks, resume, eval,
a trained torso under a new task's heads."""

from __future__ import annotations

import cue_envs
import gymnasium as gym
import numpy as np
import pytest
import torch

from auxrl.config import ConfigError
from auxrl.configfile import load_config
from auxrl.evaluate import evaluate
from auxrl.inference import load_agent
from auxrl.models.agent import build_agent
from auxrl.models.multitask import TaskSpec, task_name
from auxrl.ppo.loss import PPOObjective
from auxrl.ppo.rollout import Batch
from auxrl.trainer import train

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

cue_envs.register()
TASKS = ["env.tasks=[CueA-v0,CueB-v0]", "env.id=CueA-v0", "env.num_envs=4", "perf.threads=1"]


def _agent(popart: bool = True):
    torch.manual_seed(0)
    box = gym.spaces.Box(0.0, 1.0, (4,), np.float32)
    specs = [TaskSpec("A", "A-v0", gym.spaces.Discrete(2)), TaskSpec("B", "B-v0", gym.spaces.Discrete(3))]
    return build_agent("mlp", [16, 16], box, specs[0].action_space, tasks=specs, popart=popart)


def test_task_names():
    assert task_name("ALE/Pong-v5") == "Pong"
    assert task_name("CartPole-v1") == "CartPole"
    assert task_name("my_env") == "my_env"


def test_each_tasks_heads_get_gradients_only_from_its_own_samples():
    agent = _agent()
    obs = torch.rand(12, 4)
    task = torch.tensor([0] * 6 + [1] * 6)
    batch = Batch(
        obs=obs,
        actions=torch.tensor([0, 1] * 3 + [2, 1, 0] * 2),
        log_probs=torch.full((12,), -0.9),
        values=torch.randn(12),
        advantages=torch.randn(12),
        returns=torch.randn(12) * 10,
        valid=torch.ones(12),
        task=task,
    )
    losses = PPOObjective(load_config("cartpole").ppo).per_task(agent, batch, agent.torso(obs))
    for i, name in enumerate(["A", "B"]):
        agent.zero_grad()
        losses[i].total.backward(retain_graph=True)
        own = agent.policy.heads[name].logits.weight.grad
        other = agent.policy.heads["AB"[1 - i]].logits.weight.grad
        assert own is not None and own.abs().sum() > 0
        assert other is None or torch.all(other == 0)
        value_rows = agent.value.popart.linear.weight.grad
        assert value_rows[i].abs().sum() > 0 and torch.all(value_rows[1 - i] == 0)
    # A task never samples another task's actions: A's rows put no mass on action 2.
    dist = agent.policy(agent.torso(obs), task)
    assert torch.all(dist.probs[:6, 2] == 0) and torch.all(dist.probs[6:] > 0)
    assert torch.isfinite(dist.entropy()).all()


@pytest.mark.slow
def test_a_two_task_run_learns_both_logs_each_and_eval_reports_each(tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "mt"
    cfg = load_config("cartpole", [*TASKS, "ppo.total_steps=16384"])
    train(cfg, run, progress=False)
    agent = load_agent(run, "cpu")
    assert agent.task_names == ["CueA", "CueB"]
    # Best returns: CueA 16 (16 steps x 1), CueB 1600 (16 x 100); a random policy gets 8 and 533.
    assert evaluate(agent, 8, task="CueA").mean >= 14.0
    assert evaluate(agent, 8, task="CueB").mean >= 1400.0
    with pytest.raises(ValueError, match="name one"):
        evaluate(agent, 2)
    events = EventAccumulator(str(run))
    events.Reload()
    tags = events.Tags()["scalars"]
    for name in ("CueA", "CueB"):
        assert f"charts/{name}/episodic_return" in tags
        assert f"tasks/{name}/grad_cosine" in tags
    sigma = [e.value for e in events.Scalars("popart/CueB/sigma")]
    assert sigma[-1] > 50 * [e.value for e in events.Scalars("popart/CueA/sigma")][-1]  # 100x reward scale

    from auxrl.cli import main

    assert main(["eval", str(run), "--episodes", "2", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "CueA-v0: 2 episodes" in out and "CueB-v0: 2 episodes" in out

    # A study scores each task's games; the run's score is the mean of the tasks' (as `auxrl study`
    # and benchmarks/multitask.py read it), and its curve keeps each task's returns.
    import json

    from auxrl.study.score import score_run

    data = score_run(run, episodes=2, steps=16384, device="cpu")
    tasks = data["task_scores"]
    assert sorted(tasks) == ["CueA-v0", "CueB-v0"] and data["episodes"] == 4
    assert tasks["CueA-v0"]["score"] >= 14.0 and tasks["CueB-v0"]["score"] >= 1400.0
    assert data["score"] == pytest.approx((tasks["CueA-v0"]["score"] + tasks["CueB-v0"]["score"]) / 2)
    curve = json.loads((run / "curve.json").read_text())
    assert sorted(curve["tasks"]) == ["CueA", "CueB"] and len(curve["tasks"]["CueA"]["value"]) > 0


def test_a_resumed_multi_task_run_continues_from_its_checkpoint(tmp_path):
    import shutil

    from auxrl import checkpoint

    run = tmp_path / "mt"
    cfg = load_config("cartpole", [*TASKS, "ppo.total_steps=2048", "ppo.num_steps=64"])
    train(cfg, run, progress=False)
    first = checkpoint.load(run)
    twin = tmp_path / "twin"
    shutil.copytree(run, twin)
    for r in (run, twin):
        longer = load_config("cartpole", [*TASKS, "ppo.total_steps=4096", "ppo.num_steps=64"])
        train(longer, r, progress=False, resume=True)
    final = checkpoint.load(run)
    assert final["state"]["global_step"] == 4096
    # Two resumes of the same checkpoint end bit-identical: everything the continuation depends on
    # (weights, optimizer moments, PopArt statistics, RNG streams, counters) came from the file.
    other = checkpoint.load(twin)
    assert all(torch.equal(other["model"][k], final["model"][k]) for k in final["model"])
    assert final["optimizer"]["state"][0]["step"] == 2 * first["optimizer"]["state"][0]["step"]
    # PopArt's statistics carried over: 4096 / (2 tasks x 4 envs x 64 steps) = 8 updates each.
    assert first["model"]["heads.value.popart.updates"].tolist() == [4.0, 4.0]
    assert final["model"]["heads.value.popart.updates"].tolist() == [8.0, 8.0]
    # and a resume with nothing left to train keeps every tensor as it was
    again = load_config("cartpole", [*TASKS, "ppo.total_steps=4096", "ppo.num_steps=64"])
    train(again, run, progress=False, resume=True)
    same = checkpoint.load(run)
    assert all(torch.equal(same["model"][k], final["model"][k]) for k in final["model"])


def test_a_new_tasks_heads_on_a_trained_multi_task_torso(tmp_path, capsys):
    run = tmp_path / "mt"
    train(load_config("cartpole", [*TASKS, "ppo.total_steps=4096"]), run, progress=False)
    new = tmp_path / "new"
    cfg = load_config(
        "cartpole",
        [
            "env.id=CueB-v0",
            "perf.threads=1",
            "ppo.total_steps=1024",
            f"model.init_from={run}",
            "model.freeze=[torso]",
        ],
    )
    train(cfg, new, progress=False)
    out = capsys.readouterr().out
    assert "Loaded torso" in out and "Frozen: torso" in out
    from auxrl import checkpoint

    trained, fresh = checkpoint.load(run)["model"], checkpoint.load(new)["model"]
    torso = [k for k in trained if k.startswith("torso.")]
    assert torso and all(torch.equal(trained[k], fresh[k]) for k in torso)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["env.tasks=[CueA-v0,CueB-v0]", "env.id=CartPole-v1"], "is not one of env.tasks"),
        (["env.tasks=[CueA-v0,CueA-v0]", "env.id=CueA-v0"], "lists a task twice"),
        (["env.tasks=[ALE/Pong-v5,CueA-v0]", "env.id=CueA-v0"], "mixes env families"),
        (["ppo.task_balance=norm"], "multi-task runs only"),
    ],
)
def test_bad_task_configs_are_one_line_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config("cartpole", overrides)


def test_tasks_with_different_observation_shapes_are_refused(tmp_path):
    cfg = load_config("cartpole", ["env.tasks=[CartPole-v1,Acrobot-v1]", "env.id=CartPole-v1"])
    with pytest.raises(ValueError, match="differ in shape"):
        train(cfg, tmp_path / "r", progress=False)


def test_curriculum_stages_may_be_task_sets(tmp_path):
    """Stage 0 plays CueA alone, stage 1 CueB and CueA (in another order): one model with both
    games' heads from the start, each game's envs routed to its own heads by name."""
    from auxrl import checkpoint
    from auxrl.plot import read_scalars

    stages = (
        "curriculum.stages=[{steps: 1024, overrides: {env.tasks: [CueA-v0]}}, "
        "{overrides: {env.tasks: [CueB-v0, CueA-v0], env.id: CueB-v0}}]"
    )
    run = tmp_path / "cur"
    train(
        load_config("cartpole", [*TASKS, "ppo.total_steps=4096", "ppo.num_steps=64", stages]),
        run,
        progress=False,
    )
    assert [t[0] for t in checkpoint.load(run)["tasks"]] == ["CueA", "CueB"]
    steps_b, returns_b = read_scalars(run, "charts/CueB/episodic_return")
    steps_a, returns_a = read_scalars(run, "charts/CueA/episodic_return")
    assert steps_b.min() > 1024 and steps_a.min() < 1024  # CueB only in stage 1
    assert returns_a[-4:].mean() > 12  # of 16: CueA's head kept learning across the stages
    assert returns_b[-4:].mean() > 800  # of 1600: CueB's head learned in its 3072 steps
