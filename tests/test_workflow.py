"""The everyday workflow: CPU threads, overrides that mean what they say, the CLI's help, config
listing and version, the Python API's quiet mode and its trained agent."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import auxrl
from auxrl import perf
from auxrl.cli import main, make_parser
from auxrl.config import ConfigError, to_dict
from auxrl.configfile import load_config
from auxrl.trainer import train

TINY = ["ppo.total_steps=512", "ppo.update_epochs=1", "log.checkpoint_every=0"]


def tags(run_dir) -> list[str]:
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return acc.Tags()["scalars"]


# ------------------------------------------------------------------------------------------------
# perf.threads


def test_thread_defaults(monkeypatch):
    for name in perf.THREAD_ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(perf, "available_cores", lambda: 4)
    assert perf.torch_threads(load_config("cartpole")) == 1  # a small MLP never fights for cores
    # A CNN: every core (the emulators sleep during the update, which dominates).
    assert perf.torch_threads(load_config("breakout")) == 4
    assert perf.torch_threads(load_config("cartpole", ["perf.threads=3"])) == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert perf.torch_threads(load_config("cartpole")) is None  # the user's own setting stands
    assert perf.torch_threads(load_config("cartpole", ["perf.threads=3"])) == 3
    with pytest.raises(ConfigError, match="perf.threads must be >= 0"):
        load_config("cartpole", ["perf.threads=-1"])


def test_training_uses_the_thread_setting_and_restores_the_callers(tmp_path, monkeypatch, capsys):
    import auxrl.trainer

    seen = []
    original = auxrl.trainer.collect_rollout

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return original(*args, **kwargs)

    monkeypatch.setattr(auxrl.trainer, "collect_rollout", spy)
    before = torch.get_num_threads()
    train(load_config("cartpole", [*TINY, "perf.threads=2"]), tmp_path / "run", device="cpu", progress=False)
    assert set(seen) == {2}
    assert torch.get_num_threads() == before
    assert "Torch CPU threads: 2 (perf.threads)" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------
# Overrides mean what they say


def test_configuring_an_aux_task_turns_the_heads_on():
    cfg = load_config("cartpole", ["aux.tasks.reward_prediction.weight=0.1"])  # cartpole.yaml: enabled false
    assert cfg.aux.enabled and "reward_prediction" in cfg.aux.tasks
    assert not load_config(
        "cartpole", ["aux.tasks.reward_prediction.weight=0.1", "aux.enabled=false"]
    ).aux.enabled
    assert not load_config("cartpole", ["aux.tasks.reward_prediction.enabled=false"]).aux.enabled
    # Overrides of a resumed run or of a curriculum stage are applied literally.
    from auxrl.configfile import from_dict, load_dict

    assert not from_dict(load_dict("cartpole"), ["aux.tasks.reward_prediction.weight=0.1"]).aux.enabled


@pytest.mark.parametrize(
    "override, message",
    [
        ("aux.tasks.terminal_prediction.weight=0.1", "aux.tasks.terminal_prediction: Aux task 'termin"),
        ("aux.tasks.bogus.type=nope:Foo", "aux.tasks.bogus: Aux task 'nope:Foo': cannot import 'nope'"),
    ],
)
def test_an_aux_task_is_trained_or_refused(tmp_path, capsys, override, message):
    for extra in ([], ["aux.enabled=false"]):  # a bad task fails even with the heads turned off
        run = tmp_path / f"run{len(extra)}"
        assert main(["train", "cartpole", override, *extra, *TINY, "--run-dir", str(run)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("auxrl train: error:") and message in err and "\n" not in err
        assert not run.exists()


def test_the_start_line_says_which_heads_train(tmp_path, capsys):
    cfg = load_config("cartpole", [*TINY, "aux.tasks.rp.type=reward_prediction"])
    train(cfg, tmp_path / "a", device="cpu", progress=False)
    assert "Auxiliary heads: rp." in capsys.readouterr().out
    cfg = load_config("cartpole", [*TINY, "aux.tasks.rp.type=reward_prediction", "aux.enabled=false"])
    train(cfg, tmp_path / "b", device="cpu", progress=False)
    assert "Auxiliary heads: none (aux.enabled=false turns off rp)" in capsys.readouterr().out


def test_another_env_id_names_the_run_after_it(tmp_path, monkeypatch, capsys):
    assert load_config("cartpole", ["env.id=Acrobot-v1"]).name == "Acrobot-v1"
    assert load_config("breakout", ["env.id=ALE/SpaceInvaders-v5"]).name == "SpaceInvaders-v5"
    assert load_config("cartpole", ["env.id=Acrobot-v1", "name=mine"]).name == "mine"
    assert load_config("cartpole", ["env.id=CartPole-v1"]).name == "cartpole"
    monkeypatch.chdir(tmp_path)
    assert main(["train", "cartpole", "env.id=Acrobot-v1", *TINY, "--no-progress"]) == 0
    (run,) = (tmp_path / "runs").iterdir()
    assert run.name.startswith("Acrobot-v1__1__")


def test_a_users_own_env_trains_and_evaluates_from_the_command_line(tmp_path, monkeypatch, capsys):
    # gymnasium's module:Env-v0 form: importing the module registers the env (as gymnasium.make does).
    (tmp_path / "my_envs_for_auxrl.py").write_text(
        "import gymnasium\n"
        "gymnasium.register('ShortPole-v0', entry_point='gymnasium.envs.classic_control:CartPoleEnv',"
        " max_episode_steps=40)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    assert main(["train", "cartpole", "env.id=my_envs_for_auxrl:ShortPole-v0", *TINY, "--no-progress"]) == 0
    (run,) = (tmp_path / "runs").iterdir()
    assert run.name.startswith("ShortPole-v0__1__")  # named after the env, not the module
    capsys.readouterr()
    assert main(["eval", str(run), "--episodes", "2"]) == 0
    out = capsys.readouterr().out
    assert "my_envs_for_auxrl:ShortPole-v0: 2 episodes" in out
    assert float(out.split("score ")[1].split()[0]) <= 40  # the registered 40-step limit holds


def test_stochastic_eval_repeats_with_its_seed_and_leaves_the_callers_rng_alone(tmp_path):
    from auxrl import load_agent
    from auxrl.evaluate import evaluate

    train(load_config("cartpole", TINY), tmp_path / "run", device="cpu", progress=False)
    agent = load_agent(tmp_path / "run", device="cpu")
    torch.manual_seed(0)
    expected_next = torch.rand(1)
    torch.manual_seed(0)
    first = evaluate(agent, 6, num_envs=2, seed=3)
    assert torch.equal(torch.rand(1), expected_next)  # the caller's generator was not advanced
    assert evaluate(agent, 6, num_envs=2, seed=3).returns == first.returns
    assert evaluate(agent, 6, num_envs=2, seed=4).returns != first.returns
    with pytest.raises(ValueError, match="NaN or inf"):
        agent.predict(np.full(4, np.nan, dtype=np.float32))


def test_the_command_line_loads_torch_only_when_a_command_runs():
    # A Ctrl-C while torch loads then ends the command quietly (exit 130), and --help is quick.
    import subprocess
    import sys

    code = "import sys, auxrl.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
    code = "import auxrl; print(auxrl.envs.make_envs.__name__)"  # submodules still load on use
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "make_envs"
    assert sorted(auxrl.__all__) == sorted(n for n in dir(auxrl) if not n.startswith("_"))
    assert all(getattr(auxrl, name) is not None for name in auxrl.__all__)


def test_env_keys_only_where_they_apply(tmp_path, capsys):
    cfg = load_config("cartpole", TINY)
    train(cfg, tmp_path / "run", device="cpu", progress=False)
    env = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["env"]
    assert "frameskip" not in env and "sticky_actions" not in env and "normalize_obs" in env
    assert load_config(str(tmp_path / "run" / "config.yaml")) == cfg  # the same config when loaded
    breakout_env = to_dict(load_config("breakout"))["env"]
    assert "frameskip" in breakout_env and "normalize_obs" not in breakout_env
    assert main(["train", "cartpole", "env.frameskip=2", "--run-dir", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "env.frameskip=2 applies to Atari ids (ALE/<Game>-v5) only; CartPole-v1 would ignore it" in err
    assert main(["train", "breakout", "env.normalize_obs=true", "--run-dir", str(tmp_path / "x")]) == 2
    assert "env.normalize_obs=True applies to gymnasium ids" in capsys.readouterr().err


def test_step_count_and_curriculum_tag(tmp_path, capsys):
    # 8 envs x 32 steps = 256 per rollout: 600 steps end at 768, and the start line says so.
    cfg = load_config("cartpole", ["ppo.total_steps=600", "ppo.update_epochs=1"])
    result = train(cfg, tmp_path / "run", device="cpu", progress=False)
    assert result.global_step == 768
    assert "is not a multiple of a rollout" in capsys.readouterr().out
    assert not any(tag.startswith("curriculum/") for tag in tags(tmp_path / "run"))


# ------------------------------------------------------------------------------------------------
# The CLI


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"auxrl {auxrl.__version__} (torch ") and "gymnasium" in out


def test_every_option_has_help():
    parser = make_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    missing = [
        f"{name} {action.option_strings or action.dest}"
        for name, command in sub.choices.items()
        for action in command._actions
        if not action.help
    ]
    assert missing == []
    assert "perf: compile, bf16, threads" in sub.choices["train"].format_help()


def test_config_command_prints_the_resolved_config_and_every_key(capsys):
    assert main(["config", "cartpole", "ppo.lr=3e-4"]) == 0
    out = capsys.readouterr().out
    resolved, keys = out.split("# Every key")
    data = yaml.safe_load(resolved)
    assert data["ppo"]["lr"] == 3e-4 and data["name"] == "cartpole" and "frameskip" not in data["env"]
    rows = {line.split()[0]: line for line in keys.splitlines()[1:] if line.strip()}
    assert rows["ppo.lr"].split()[1:3] == ["float", "0.00025"]
    assert "torch's CPU threads" in rows["perf.threads"]
    assert "[Atari ids only]" in rows["env.frameskip"]
    assert "aux.tasks.reward_prediction.rewarding_fraction" in rows
    assert main(["config", "cartpole", "ppo.lrr=1"]) == 2
    assert "Unknown config key 'ppo.lrr'" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------
# The Python API


def test_api_trains_quietly_and_returns_an_agent(tmp_path, capsys):
    run = tmp_path / "run"
    result = auxrl.train("cartpole", ["ppo.total_steps=512"], run_dir=run, device="cpu", verbose=False)
    assert capsys.readouterr().out == ""
    assert result.global_step == 512 and result.run_dir == run
    agent = result.agent
    obs = np.zeros(4, np.float32)
    action = agent.predict(obs, deterministic=True)
    assert np.ndim(action) == 0 and action in (0, 1)
    batch = agent.predict(np.zeros((3, 4), np.float32), deterministic=True)
    assert batch.shape == (3,) and (batch == action).all()
    with pytest.raises(ValueError, match=r"takes \(4,\)"):
        agent.predict(np.zeros(5))
    # Overrides as a dict; a rerun in the same directory with overwrite=True.
    again = auxrl.train("cartpole", {"ppo.total_steps": 256}, run_dir=run, overwrite=True, verbose=False)
    assert again.global_step == 256
    assert auxrl.load_agent(run, device="cpu").config.ppo.total_steps == 256
