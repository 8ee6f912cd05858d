"""``auxrl task check`` (issue 28): a head that can learn ends far below chance, one whose target
is noise stays at chance, bad input is one line with exit code 2; the built-in chance hooks equal
the loss of the best input-blind guess; per-task optimizer settings (``aux.tasks.NAME.lr`` /
``anneal_lr``) give a task's head a parameter group of its own, annealed as set, resumed, and
leave the optimizer exactly as it was when no task sets them.

The env and the noise task are in tests/taskcheck_tasks.py, loaded by import path."""

from __future__ import annotations

import math
import re

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from auxrl import checkpoint
from auxrl.build import TASK_GROUP, build_model, param_groups
from auxrl.cli import main
from auxrl.configfile import load_config
from auxrl.curriculum import plan_stages
from auxrl.envs import make_envs
from auxrl.tasks.base import Sequences, TaskContext
from auxrl.tasks.reward_prediction import RewardPrediction, RewardPredictionConfig
from auxrl.tasks.state_prediction import StatePrediction, StatePredictionConfig

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

SIGNAL = "env.id=taskcheck_tasks:Signal-v0"
SMALL = ["env.num_envs=4", "ppo.num_steps=32", "aux.replay_size=512", "perf.threads=1"]


def run_check(capsys, *args: str) -> tuple[int, dict[str, str], str]:
    """``auxrl task check ARGS`` on the CPU: exit code, the table's rows, stderr."""
    code = main(["task", "check", *args, "--device", "cpu"])
    out = capsys.readouterr()
    rows = dict(
        re.findall(r"^  (start loss|final loss|chance loss|final/chance|verdict) +(.*)$", out.out, re.M)
    )
    return code, rows, out.err


def number(text: str) -> float:
    return float(text.split()[0])


def one_line_error(code: int, err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("auxrl task: error: "), err
    return lines[0]


# ------------------------------------------------------------------------------------------------
# The check
# ------------------------------------------------------------------------------------------------


def test_reward_prediction_learns_far_below_its_chance_loss(capsys):
    # Signal-v0: the cue in each observation decides the next reward's sign, so the head can learn
    # it exactly. Chance (the task's chance_loss): the skewed class weights 0.5 / ~0.25 / ~0.25.
    code, rows, _ = run_check(
        capsys,
        "reward_prediction",
        SIGNAL,
        *SMALL,
        "--config",
        "cartpole",
        "--steps",
        "150",
        "--batches",
        "4",
    )
    assert code == 0, rows
    start, final, chance = (number(rows[k]) for k in ("start loss", "final loss", "chance loss"))
    assert abs(start - math.log(3)) < 0.05  # the head starts near uniform
    assert 0.95 < chance < 1.1 and "chance_loss" in rows["chance loss"]
    assert final < 0.1 * chance and rows["verdict"] == "learns", rows


def test_a_task_whose_target_is_noise_stays_at_measured_chance(capsys):
    # A temporal-distance head (pairs, 8 classes) whose target is random: no chance_loss, so the check
    # measures chance with each sample's features taken from another sample.
    code, rows, _ = run_check(
        capsys,
        "taskcheck_tasks:NoiseTask",
        *SMALL,
        "--config",
        "cartpole",
        "--steps",
        "150",
        "--batches",
        "4",
    )
    assert code == 0, rows
    final, chance = number(rows["final loss"]), number(rows["chance loss"])
    assert "measured" in rows["chance loss"] and abs(chance - math.log(8)) < 0.1, rows
    assert 0.9 <= final / chance < 1.1, rows
    assert rows["verdict"].startswith("stays at chance: the task's target may not be predictable"), rows


def test_bad_input_is_one_line_with_exit_code_2(capsys):
    line = one_line_error(*run_check(capsys, "no_such_task")[::2])
    assert "'no_such_task' is neither a built-in nor a registered name" in line
    line = one_line_error(*run_check(capsys, "reward_prediction", "hiden=8", "--config", "cartpole")[::2])
    assert "aux.tasks.reward_prediction.hiden" in line and "'hidden'" in line
    line = one_line_error(*run_check(capsys, "pixel_control", "--config", "cartpole")[::2])
    assert "pixel_control" in line and "image" in line
    line = one_line_error(*run_check(capsys, "reward_prediction", "--steps", "0")[::2])
    assert "--steps 0" in line


# ------------------------------------------------------------------------------------------------
# Built-in chance hooks: the loss of the best constant guess
# ------------------------------------------------------------------------------------------------


def _one_step(rewards: torch.Tensor, labels: torch.Tensor | None, features: torch.Tensor) -> Sequences:
    batch = rewards.shape[0]
    flags = torch.zeros(batch, 1, dtype=torch.bool)
    return Sequences(
        obs=torch.zeros(batch, 2, 4),
        actions=torch.zeros(batch, 1, dtype=torch.long),
        rewards=rewards.reshape(batch, 1),
        terminated=flags,
        truncated=flags,
        valid=~flags,
        labels=labels,
        features=features,
    )


def _ctx(**labels) -> TaskContext:
    import gymnasium as gym

    space = gym.spaces.Box(-1.0, 1.0, (4,))
    return TaskContext(space, gym.spaces.Discrete(2), 8, torch.nn.Identity(), **labels)


def test_the_best_constant_guess_scores_the_built_in_chance_losses():
    torch.manual_seed(0)
    features = torch.randn(12, 8)
    # reward_prediction: 6 zero, 4 positive, 2 negative rewards; skewed weights 0.5 / (1/3) / (1/6).
    task = RewardPrediction(RewardPredictionConfig(), _ctx())
    seq = _one_step(torch.tensor([0.0] * 6 + [1.0] * 4 + [-1.0] * 2), None, features)
    weights = torch.tensor([0.5, 1 / 3, 1 / 6])
    assert task.chance_loss(seq) == pytest.approx(-(weights * weights.log()).sum().item())
    last = task.head[-1]
    with torch.no_grad():  # a head that ignores its input and predicts those frequencies
        last.weight.zero_()
        last.bias.copy_(weights.log())
    assert task.loss(seq, lambda x: x).loss.item() == pytest.approx(task.chance_loss(seq), rel=1e-5)

    # state_prediction: a constant byte (entropy 0), a byte half 3 half 7 (ln 2), a real label.
    ctx = _ctx(label_names=("a", "b", "x"), label_kinds=("byte", "byte", "real"))
    task = StatePrediction(StatePredictionConfig(), ctx).eval()  # eval: the statistics stay put
    x = torch.arange(12.0)
    labels = torch.stack([torch.full((12,), 5.0), torch.tensor([3.0, 7.0] * 6), x], 1)
    seq = _one_step(torch.zeros(12), torch.stack([labels, labels], 1), features)
    expected = (0.0 + math.log(2) + x.var(unbiased=False).item()) / 3  # statistics at (0, 1): z = x
    assert task.chance_loss(seq) == pytest.approx(expected)
    with torch.no_grad():
        task.classify.weight.zero_()
        bias = torch.full((2, 256), -30.0)
        bias[0, 5], bias[1, 3], bias[1, 7] = 0.0, math.log(0.5), math.log(0.5)
        task.classify.bias.copy_(bias.flatten())
        task.regress.weight.zero_()
        task.regress.bias.fill_(x.mean().item())
    assert task.loss(seq, lambda f: f).loss.item() == pytest.approx(expected, rel=1e-4)


# ------------------------------------------------------------------------------------------------
# aux.tasks.NAME.lr / anneal_lr
# ------------------------------------------------------------------------------------------------

RUN = [
    SIGNAL,
    "env.num_envs=4",
    "ppo.num_steps=32",
    "ppo.update_epochs=1",
    "ppo.total_steps=512",
    "log.checkpoint_every=256",
    "perf.threads=1",
    "aux.tasks={reward_prediction: {}}",
]


def train(run_dir, *overrides: str, resume: bool = False) -> int:
    where = ["--resume", str(run_dir)] if resume else ["cartpole", "--run-dir", str(run_dir)]
    return main(["train", *where, *overrides, "--device", "cpu", "--no-progress"])


def scalars(run_dir, tag: str) -> list[tuple[int, float]]:
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_without_task_lrs_the_optimizer_keeps_its_one_group():
    cfg = load_config("cartpole", [SIGNAL, "aux.tasks={reward_prediction: {}}"])
    stages = plan_stages(cfg)
    with make_envs(cfg.env.model_copy(update={"num_envs": 1})) as envs:
        agent = build_model(cfg, stages, envs.single_observation_space, envs.single_action_space)
    trainable = [p for p in agent.parameters() if p.requires_grad]
    assert param_groups(agent, trainable, stages) is trainable  # the very list: one group, same order
    cfg = load_config("cartpole", [SIGNAL, "aux.tasks={reward_prediction: {lr: 0.003}}"])
    groups = param_groups(agent, trainable, plan_stages(cfg))
    head = list(agent.heads["reward_prediction"].parameters())
    assert [g.get(TASK_GROUP) for g in groups] == [None, "reward_prediction"]
    assert groups[0]["params"] == [p for p in trainable if all(p is not q for q in head)]  # order kept
    assert groups[1]["params"] == head and groups[1]["lr"] == 0.003


def test_a_task_lr_has_its_own_group_annealed_as_set_and_resumed(tmp_path, capsys):
    ppo_lr, total = 1e-3, 512  # configs/cartpole.yaml's lr, annealed
    plain = tmp_path / "plain"
    assert train(plain, *RUN) == 0
    groups = checkpoint.load(plain)["optimizer"]["param_groups"]
    assert len(groups) == 1 and TASK_GROUP not in groups[0]

    # lr set, anneal_lr as ppo.anneal_lr (true): the head's rate is 3x PPO's at every update.
    follows = tmp_path / "follows"
    assert train(follows, *RUN, "aux.tasks.reward_prediction.lr=3e-3") == 0
    groups = checkpoint.load(follows)["optimizer"]["param_groups"]
    assert [g.get(TASK_GROUP) for g in groups] == [None, "reward_prediction"]
    assert len(groups[1]["params"]) == 4  # the head's two linear layers
    ppo, head = (
        scalars(follows, "charts/learning_rate"),
        scalars(follows, "aux/reward_prediction/learning_rate"),
    )
    assert [s for s, _ in ppo] == [s for s, _ in head] == [128, 256, 384, 512]
    for (step, a), (_, b) in zip(ppo, head, strict=True):  # logged after the rollout it was set for
        assert a == pytest.approx(ppo_lr * (1 - (step - 128) / total)) and b == pytest.approx(3 * a)

    # anneal_lr=false: constant; resumed from the step-256 checkpoint with a new rate, it takes it.
    fixed = tmp_path / "fixed"
    own = ["aux.tasks.reward_prediction.lr=3e-3", "aux.tasks.reward_prediction.anneal_lr=false"]
    assert train(fixed, *RUN, *own, "ppo.total_steps=256") == 0
    assert [v for _, v in scalars(fixed, "aux/reward_prediction/learning_rate")] == pytest.approx([3e-3] * 2)
    assert train(fixed, "ppo.total_steps=512", "aux.tasks.reward_prediction.lr=5e-3", resume=True) == 0
    head = dict(scalars(fixed, "aux/reward_prediction/learning_rate"))
    assert (
        head[256] == pytest.approx(3e-3)
        and head[384] == pytest.approx(5e-3)
        and head[512] == pytest.approx(5e-3)
    )
    assert checkpoint.load(fixed)["optimizer"]["param_groups"][1]["lr"] == pytest.approx(5e-3)

    # Dropping the task's own group on resume would hand its Adam moments to other parameters.
    capsys.readouterr()
    unset = ["aux.tasks.reward_prediction.lr=null", "aux.tasks.reward_prediction.anneal_lr=null"]
    code = train(fixed, "ppo.total_steps=768", *unset, resume=True)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "parameter groups" in lines[0], err


def test_the_verdict_reads_final_over_chance():
    from auxrl.taskcheck import CheckResult

    def verdict(final: float, chance: float, measured: bool = False, control_start: float | None = None):
        fields = dict(task="t", task_type="m:T", config="c", env_id="e", collected=1, samples="s")
        sizes = dict(batches=1, batch_size=1, steps=1, lrs=(1e-3, 1e-3), start=2.0)
        result = CheckResult(**fields, **sizes, final=final, chance=chance, chance_measured=measured)
        result.control_start = control_start
        return result.verdict

    assert verdict(0.1, 1.0) == "learns"
    assert verdict(0.7, 1.0).startswith("learns a little")
    assert verdict(1.0, 1.0).startswith("stays at chance")
    assert verdict(1.5, 1.0).startswith("above chance")
    assert verdict(0.5, 0.0).startswith("nothing to learn")
    assert verdict(0.0, 0.001, measured=True, control_start=1.1).startswith("cannot tell")
    assert verdict(float("nan"), 1.0).startswith("diverges")
