"""A two-stage curriculum: the stage advances on its rule, and --resume restores it."""

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from auxrl import checkpoint
from auxrl.config import ConfigError
from auxrl.configfile import load_config
from auxrl.curriculum import plan_stages
from auxrl.trainer import train

FAST = ["ppo.update_epochs=4", "log.checkpoint_every=1024", "log.keep_checkpoints=10"]


def _stage_curve(run):
    acc = EventAccumulator(str(run), size_guidance={"scalars": 0})
    acc.Reload()
    return [(e.step, int(e.value)) for e in acc.Scalars("curriculum/stage")], acc.Tags()["scalars"]


def test_stage_advances_on_budget_and_resume_restores_it(tmp_path):
    run = tmp_path / "run"
    # Unreachable threshold: stage 0 ends on its 2048-step budget.
    cfg = load_config("curriculum_cartpole", FAST + ["ppo.total_steps=4096"])
    cfg.curriculum.stages[0].steps = 2048
    cfg.curriculum.stages[0].return_threshold = 1e9
    result = train(cfg, run, device="cpu", progress=False)
    assert result.stage == 1 and result.global_step == 4096
    curve, tags = _stage_curve(run)
    assert curve[0] == (0, 0) and (2048, 1) in curve
    assert "curriculum/short/episodic_return" in tags and "curriculum/full/episodic_return" in tags
    # The checkpoint taken in stage 0 restores stage 0 and its start step; the run then
    # promotes at the same step it did the first time.
    ckpts = run / "checkpoints"
    assert checkpoint.load(ckpts / "step_000000001024.pt")["state"]["stage"] == 0
    assert checkpoint.load(run)["state"]["stage"] == 1
    (ckpts / "latest").write_text("step_000000001024.pt")
    for late in ("step_000000002048.pt", "step_000000003072.pt", "step_000000004096.pt"):
        (ckpts / late).unlink()
    result = train(cfg, run, device="cpu", progress=False, resume=True)
    assert result.stage == 1 and result.global_step == 4096
    curve, _ = _stage_curve(run)
    assert [s for s, v in curve if v == 1] == [2048]
    # A checkpoint taken in stage 1 resumes in stage 1.
    state = checkpoint.load(run)["state"]
    assert state["stage"] == 1 and state["stage_start_step"] == 2048


def test_a_finished_curriculum_resumes_with_nothing_left_to_train(tmp_path):
    run = tmp_path / "run"
    cfg = load_config("curriculum_cartpole", FAST + ["ppo.total_steps=100000"])
    for stage in cfg.curriculum.stages:  # both stages end on their budget, long before total_steps
        stage.steps, stage.return_threshold = 1024, 1e9
    result = train(cfg, run, device="cpu", progress=False)
    assert result.stage == 2 and result.global_step == 2048
    assert result.recent_return is not None  # the last stage's games, not an emptied list
    again = train(cfg, run, device="cpu", progress=False, resume=True)
    assert (again.stage, again.global_step, again.recent_return) == (2, 2048, result.recent_return)


def test_stage_advances_early_on_return_threshold(tmp_path):
    cfg = load_config("curriculum_cartpole", FAST + ["ppo.total_steps=8192"])
    stage0 = cfg.curriculum.stages[0]
    stage0.steps, stage0.return_threshold, stage0.window = 100_000, 5.0, 5  # any 5 episodes pass
    result = train(cfg, tmp_path / "run", device="cpu", progress=False)
    curve, _ = _stage_curve(tmp_path / "run")
    promoted = [s for s, v in curve if v == 1]
    assert result.stage == 1
    assert promoted and promoted[0] <= 512  # the first update already has 5 episodes >= 5


def test_stage_rules():
    stage = plan_stages(load_config("curriculum_cartpole"))[0]
    assert stage.finished(100, []) is None
    assert stage.finished(20_000, []) == "budget"
    assert stage.finished(100, [95.0] * 9) is None  # window of 10 not yet full
    assert stage.finished(100, [50.0] + [95.0] * 10) == "threshold"
    assert stage.finished(100, [85.0] * 10) is None


def test_stage_changing_action_space_is_a_clear_error(tmp_path):
    cfg = load_config("curriculum_cartpole", ["ppo.total_steps=512"])
    cfg.curriculum.stages[0].steps = 256
    cfg.curriculum.stages[1].overrides = {"env.id": "Acrobot-v1"}  # 3 actions instead of 2
    with pytest.raises(ValueError, match="action space"):
        train(cfg, tmp_path / "run", device="cpu", progress=False)
    # Caught before training starts (not at the stage change): no run directory was even made.
    assert not (tmp_path / "run").exists()


def test_stage_overrides_are_validated():
    cfg = load_config("curriculum_cartpole")
    cfg.curriculum.stages[1].overrides = {"env.num_env": 4}
    with pytest.raises(ConfigError, match=r"stages\[1\].*num_envs"):
        plan_stages(cfg)
    for key, value in [("ppo.lr", 1.0), ("log.checkpoint_every", 10), ("name", "x"), ("perf.compile", True)]:
        cfg.curriculum.stages[1].overrides = {key: value}  # the run's, not a stage's: refused, not ignored
        with pytest.raises(ConfigError, match="cannot change between stages"):
            plan_stages(cfg)
