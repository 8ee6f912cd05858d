"""Inputs auxrl cannot vouch for (the user's env and plugin modules, config files, an env whose
reward gives a head nothing to learn, plot's --out, the event files a crash leaves behind): one
line saying what is wrong and how to go on, exit code 2, no traceback; warnings on one line."""

from __future__ import annotations

import importlib.metadata
import sys
from collections import Counter
from pathlib import Path

import gymnasium as gym
import pytest
import torch
from conftest import TINY_RUN as TINY

from auxrl import checkpoint
from auxrl.cli import main
from auxrl.config import AuxConfig, AuxTaskConfig
from auxrl.configfile import load_dict
from auxrl.logger import purge_events
from auxrl.ppo.rollout import RolloutStorage
from auxrl.tasks import registry
from auxrl.tasks.base import TaskContext
from auxrl.tasks.combine import AuxTasks
from auxrl.tasks.reward_prediction import RewardPrediction, RewardPredictionConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line_error(code: int, err: str, command: str = "train") -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith(f"auxrl {command}: error: "), err
    return lines[0]


# ------------------------------------------------------------------------------------------------
# 1. The user's env module, env constructor and aux-task plugin raise

USER_ENV = """
import os
import gymnasium
from gymnasium.envs.classic_control.cartpole import CartPoleEnv

if os.environ.get("TRUST_POLE_BREAK") == "import":
    raise RuntimeError("no licence file found")


class Env(CartPoleEnv):
    def __init__(self, **kwargs):
        if os.environ.get("TRUST_POLE_BREAK") == "init":
            raise ValueError("bad map size -1")
        super().__init__(**kwargs)


gymnasium.register("TrustPole-v0", entry_point=Env, max_episode_steps=50)
"""
ENV_ID = "trust_pole_env:TrustPole-v0"


@pytest.fixture
def user_env(tmp_path, monkeypatch):
    """A user's env module on the path; ``break_(how)`` makes it raise on import or in __init__."""
    (tmp_path / "trust_pole_env.py").write_text(USER_ENV)
    monkeypatch.syspath_prepend(str(tmp_path))

    def forget() -> None:  # as in a new process: the module is imported, the id registered anew
        sys.modules.pop("trust_pole_env", None)
        gym.registry.pop("TrustPole-v0", None)

    def break_(how: str | None) -> None:
        forget()
        if how is None:
            monkeypatch.delenv("TRUST_POLE_BREAK", raising=False)
        else:
            monkeypatch.setenv("TRUST_POLE_BREAK", how)

    yield break_
    forget()


def test_user_env_that_raises_on_import_or_when_made(tmp_path, capsys, user_env):
    run = tmp_path / "r"
    train = ("train", "cartpole", f"env.id={ENV_ID}", *TINY, "--run-dir", str(run), "--no-progress")
    user_env("import")
    line = one_line_error(*run_cli(capsys, *train)[::2])
    assert line == (
        f"auxrl train: error: env.id '{ENV_ID}': importing 'trust_pole_env' raised RuntimeError: no "
        f"licence file found. Fix that module (`python -c 'import trust_pole_env'` shows the traceback)."
    )
    user_env("init")
    line = one_line_error(*run_cli(capsys, *train)[::2])
    assert line == (
        f"auxrl train: error: env.id '{ENV_ID}': making the env raised ValueError: bad map size -1. Fix "
        f"the env (in Python, `import trust_pole_env; gymnasium.make('TrustPole-v0')` shows the "
        f"traceback)."
    )
    assert not run.exists()  # start-up errors leave no run directory

    user_env(None)
    assert run_cli(capsys, *train)[0] == 0
    # `auxrl eval` of that run, once the module (or the env) breaks.
    user_env("import")
    line = one_line_error(*run_cli(capsys, "eval", str(run), "--episodes", "2")[::2], command="eval")
    assert "importing 'trust_pole_env' raised RuntimeError: no licence file found" in line
    user_env("init")
    line = one_line_error(*run_cli(capsys, "eval", str(run), "--episodes", "2")[::2], command="eval")
    assert "making the env raised ValueError: bad map size -1" in line
    # Recording a video: the env's error, not a note that the screen cannot be rendered.
    video = tmp_path / "videos/"
    code, _, err = run_cli(capsys, "eval", str(run), "--episodes", "1", "--video", f"{video}/")
    assert "making the env raised ValueError: bad map size -1" in one_line_error(code, err, command="eval")


def test_gymnasiums_own_env_failing_is_not_passed_off_as_the_users(monkeypatch):
    """Only the user's env and module are wrapped: a failure inside a gymnasium env stays a bug."""
    from gymnasium.envs.classic_control.cartpole import CartPoleEnv

    from auxrl.config import EnvConfig
    from auxrl.envs.gym import GymVecEnv

    def broken(self, *args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(CartPoleEnv, "__init__", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        GymVecEnv(EnvConfig(id="CartPole-v1", num_envs=1))


def test_aux_task_plugin_that_raises_on_import(tmp_path, capsys, monkeypatch):
    (tmp_path / "trust_broken_plugin.py").write_text("raise RuntimeError('plugin bug')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    ep = importlib.metadata.EntryPoint(
        name="broken_ep", value="trust_broken_plugin:Task", group=registry.ENTRY_POINT_GROUP
    )
    monkeypatch.setattr(registry, "_entry_points", lambda: {"broken_ep": ep})
    run = tmp_path / "r"
    # Installed through the entry points group ...
    code, _, err = run_cli(
        capsys, "train", "cartpole", "aux.enabled=true", "aux.tasks.broken_ep.weight=1", "--run-dir", str(run)
    )
    line = one_line_error(code, err)
    assert line == (
        "auxrl train: error: aux.tasks.broken_ep: Aux task 'broken_ep': importing its entry point "
        "(auxrl.aux_tasks: trust_broken_plugin:Task) raised RuntimeError: plugin bug. Fix that module "
        "(importing it in Python shows the traceback), or take the task out of the config (a disabled "
        "task is still imported)."
    )
    # ... or named by its import path.
    code, _, err = run_cli(capsys, "config", "cartpole", "aux.tasks.mine.type=trust_broken_plugin:Task")
    line = one_line_error(code, err, command="config")
    assert (
        "aux.tasks.mine: Aux task 'trust_broken_plugin:Task': importing 'trust_broken_plugin' raised " in line
    )
    assert "RuntimeError: plugin bug" in line
    assert not run.exists()
    # `auxrl tasks` still lists the others, and says which one failed.
    code, out, _ = run_cli(capsys, "tasks")
    assert code == 0 and "broken_ep" in out and "RuntimeError: plugin bug" in out
    sys.modules.pop("trust_broken_plugin", None)


# ------------------------------------------------------------------------------------------------
# 2-4. Config files: duplicate keys, an empty file, an empty curriculum stage


def test_duplicate_key_in_a_config_file(tmp_path, capsys):
    config = tmp_path / "dup.yaml"
    config.write_text("name: dup\nppo:\n  lr: 1.0e-3\n  gamma: 0.9\n  lr: 3.0e-4\n")
    run = tmp_path / "r"
    line = one_line_error(*run_cli(capsys, "train", str(config), "--run-dir", str(run))[::2])
    assert line == (
        f"auxrl train: error: {config}, line 5: key 'lr' is given twice in one mapping (first at line 3); "
        f"YAML would silently keep the last one. Keep one of them."
    )
    assert not run.exists()
    # A merge key's values may be overridden: that is what merges are for.
    merged = tmp_path / "merge.yaml"
    merged.write_text(
        "env: &e {id: CartPole-v1, num_envs: 4}\nppo: {<<: {lr: 1.0e-3, gamma: 0.9}, lr: 3.0e-4}\n"
    )
    assert load_dict(merged)["ppo"] == {"lr": 3.0e-4, "gamma": 0.9}


def test_empty_config_file(tmp_path, capsys):
    for text in ("", "# nothing yet\n\n"):
        config = tmp_path / "empty.yaml"
        config.write_text(text)
        line = one_line_error(*run_cli(capsys, "train", str(config), "--run-dir", str(tmp_path / "r"))[::2])
        assert line.startswith(
            f"auxrl train: error: {config}: the file is empty; a config is a YAML mapping of sections, "
            f"e.g. `env: {{id: CartPole-v1}}` and `model: {{torso: mlp}}` (start from a shipped one: "
        )
        assert "cartpole" in line and "torso" in line and not (tmp_path / "r").exists()


def test_empty_curriculum_stage(tmp_path, capsys):
    expected = (
        "curriculum.stages[{i}] is empty: a stage needs `overrides` (the env.* / aux.* keys it changes, "
        "e.g. overrides: {{env.id: ALE/Pong-v5}}) and, unless it is the last, `steps` or `return_threshold` "
        "to end it."
    )
    run = tmp_path / "r"
    line = one_line_error(
        *run_cli(capsys, "train", "cartpole", "curriculum.stages=[{}]", "--run-dir", str(run))[::2]
    )
    assert line == "auxrl train: error: " + expected.format(i=0)
    stages = "curriculum.stages=[{steps: 256, overrides: {env.num_envs: 4}}, {}]"
    line = one_line_error(*run_cli(capsys, "config", "cartpole", stages)[::2], command="config")
    assert line == "auxrl config: error: " + expected.format(i=1)
    assert not run.exists()
    # A named stage without overrides (back to the base config) is still a stage.
    stages = "curriculum.stages=[{steps: 256, overrides: {env.num_envs: 4}}, {name: base}]"
    assert run_cli(capsys, "config", "cartpole", stages)[0] == 0


# ------------------------------------------------------------------------------------------------
# 5. reward_prediction on an env whose reward never varies


def test_reward_prediction_on_a_constant_reward_warns_once(tmp_path, capsys):
    run = tmp_path / "r"
    argv = ["train", "cartpole", "aux.tasks.reward_prediction.enabled=true", *TINY, "--run-dir", str(run)]
    code, _, err = run_cli(capsys, *argv, "--no-progress")
    assert code == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("auxrl: warning:")]
    assert len(warnings) == 1, err  # once, not every rollout
    assert warnings[0].startswith(
        "auxrl: warning: aux task 'reward_prediction' has nothing to learn on CartPole-v1: "
    ) and warnings[0].endswith(
        ", episode ends included, was 1, so the class it predicts never changes. Drop the task "
        "(aux.tasks.reward_prediction.enabled=false): it only costs time here."
    )
    assert "Traceback" not in err


def test_reward_prediction_check_names_the_env_and_keeps_quiet_on_varying_rewards(capsys):
    steps, envs = 8, 2
    storage = RolloutStorage(steps, envs, (4,), torch.float32, (), torch.long, torch.device("cpu"))
    space = gym.spaces.Box(-1, 1, (4,))
    task = RewardPrediction(RewardPredictionConfig(), TaskContext(space, gym.spaces.Discrete(2), 8, None))
    aux = AuxConfig(tasks={"reward_prediction": AuxTaskConfig()})

    def rollouts(*rewards: list[float], terminated_at: int | None = 3) -> str:
        tasks = AuxTasks({"reward_prediction": task}, aux, storage, seed=0, env_id="CartPole-v1")
        capsys.readouterr()
        for values in rewards:
            storage.rewards.copy_(torch.tensor(values).reshape(steps, 1).expand(steps, envs))
            storage.valid.fill_(True)
            storage.terminated.fill_(False)
            if terminated_at is not None:
                storage.terminated[terminated_at] = True
            tasks.add_rollout(storage)
        return capsys.readouterr().err

    ones = [1.0] * steps
    err = rollouts(ones, ones)  # said once, after the first
    assert err == (
        "auxrl: warning: aux task 'reward_prediction' has nothing to learn on CartPole-v1: every reward of "
        "its first 16 steps, episode ends included, was 1, so the class it predicts never changes. Drop "
        "the task (aux.tasks.reward_prediction.enabled=false): it only costs time here.\n"
    )
    assert rollouts([0, 0, 1, 0, 0, 0, 0, 0], ones) == ""  # rewards that vary
    assert rollouts([0.0] * steps) == ""  # sparse rewards not seen yet: zero is not a constant reward
    assert rollouts(ones, terminated_at=None) == ""  # no episode has ended: what ends one is unknown


# ------------------------------------------------------------------------------------------------
# 6. plot --out DIR


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "tiny"
    assert main(["train", "cartpole", *TINY, "--run-dir", str(run), "--no-progress"]) == 0
    return run


def test_plot_out_a_folder_writes_curves_png_in_it(tmp_path, capsys, tiny_run):
    folder = tmp_path / "plots"
    folder.mkdir()
    code, out, err = run_cli(capsys, "plot", str(tiny_run), "--out", str(folder))
    assert code == 0, err
    assert out.strip() == f"Wrote {folder / 'curves.png'}" and (folder / "curves.png").is_file()
    assert not (tmp_path / "plots.png").exists()  # not a sibling named after the folder
    new = tmp_path / "new"  # a folder that does not exist yet, said so by the trailing /
    code, out, err = run_cli(capsys, "plot", str(tiny_run), "--out", f"{new}/")
    assert code == 0, err
    assert out.strip() == f"Wrote {new / 'curves.png'}" and (new / "curves.png").is_file()


# ------------------------------------------------------------------------------------------------
# 7. The raw event files of a resumed run hold each (tag, step) once


def summaries(run: Path) -> list[tuple[str, int]]:
    """Every (tag, step) in the run's raw event files, as a reader other than TensorBoard sees them."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    pairs = []
    for path in sorted(run.glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            pairs += [(value.tag, event.step) for value in event.summary.value]
    return pairs


def test_resumed_run_leaves_no_duplicate_steps_in_the_raw_event_files(tmp_path, capsys):
    run = tmp_path / "r"
    assert main(["train", "cartpole", *TINY, "--run-dir", str(run), "--no-progress"]) == 0
    before = summaries(run)
    assert max(step for _, step in before) == 512
    # A crash after the checkpoint at step 256: events up to 512 are on disk, the checkpoint is 256.
    ckpts = sorted((run / "checkpoints").glob("step_*.pt"))
    assert [p.name for p in ckpts] == ["step_000000000256.pt", "step_000000000512.pt"]
    ckpts[-1].unlink()
    (run / "checkpoints" / checkpoint.LATEST).write_text(ckpts[0].name)
    code, _, err = run_cli(capsys, "train", "--resume", str(run), "--no-progress")
    assert code == 0, err
    after = summaries(run)
    twice = [pair for pair, n in Counter(after).items() if n > 1]
    assert not twice, twice[:5]
    assert len(list(run.glob("events.out.tfevents.*"))) == 2  # the first run's file and the resumed one's
    # Each update's scalars are there once (the one after the checkpoint from the resumed run), and
    # what was logged up to the checkpoint is untouched.
    assert sorted(step for tag, step in after if tag == "losses/value_loss") == [256, 512]
    assert [p for p in after if p[1] <= 256] == [p for p in before if p[1] <= 256]
    assert not list(run.glob(".auxrl-purge-*"))


def test_purge_keeps_meta_events_and_a_truncated_tail(tmp_path):
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tmp_path))
    for step in range(10):
        writer.add_scalar("x", step, step)
    writer.close()
    (path,) = tmp_path.glob("events.out.tfevents.*")
    with open(path, "ab") as f:
        f.write(b"\x05\x00\x00")  # a record cut short by a kill
    assert purge_events(tmp_path, 6) == 4
    events = list(EventFileLoader(str(path)).Load())
    assert events[0].file_version  # the file's first event stays
    assert [e.step for e in events if e.summary.value] == [0, 1, 2, 3, 4, 5]
    assert path.read_bytes().endswith(b"\x05\x00\x00")
    assert purge_events(tmp_path, 6) == 0  # nothing left to drop: the file is not rewritten
