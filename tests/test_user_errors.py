"""Everything a user can get wrong (input, file system, environment): one line naming the problem
and the fix, exit code 2, no traceback, and nothing of an existing run lost."""

import builtins
import errno
import os
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY_RUN as TINY

from auxrl import checkpoint
from auxrl.cli import main


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(list(argv))
    err = capsys.readouterr().err
    return code, err


def one_line_error(code: int, err: str, command: str = "train") -> str:
    """The message of a clean user error (asserting the form)."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith(f"auxrl {command}: error: "), err
    return lines[0]


def snapshot(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "done"
    assert main(["train", "cartpole", *TINY, "--run-dir", str(run), "--no-progress"]) == 0
    return run


def test_yaml_syntax_error(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("ppo:\n  lr: [1e-3,\n  gamma: 0.9\n")
    line = one_line_error(*run_cli(capsys, "train", str(bad), "--run-dir", str(tmp_path / "r")))
    assert "bad.yaml: not valid YAML (line" in line
    assert not (tmp_path / "r").exists()


def test_cuda_asked_for_where_there_is_none(tmp_path, capsys, monkeypatch):
    import auxrl

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    line = one_line_error(
        *run_cli(capsys, "train", "cartpole", "--device", "cuda", "--run-dir", str(tmp_path / "r"))
    )
    assert "device 'cuda': PyTorch sees no CUDA device here. Use cpu or auto." in line
    assert not (tmp_path / "r").exists()
    with pytest.raises(ValueError, match="device 'cuda:1': PyTorch sees no CUDA device"):  # the Python API
        auxrl.train("cartpole", run_dir=tmp_path / "api", device="cuda:1", verbose=False)
    assert not (tmp_path / "api").exists()


def test_plugin_that_raises_on_import(tmp_path, capsys, monkeypatch):
    (tmp_path / "broken_plugin.py").write_text("raise RuntimeError('plugin bug')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    run = tmp_path / "r"
    code, err = run_cli(
        capsys,
        "train",
        "cartpole",
        "aux.enabled=true",
        "aux.tasks.mine.type=broken_plugin:Task",
        "--run-dir",
        str(run),
    )
    line = one_line_error(code, err)
    assert "aux.tasks.mine" in line and "RuntimeError: plugin bug" in line and "out of the config" in line
    assert not run.exists()  # start-up errors leave no run directory behind
    sys.modules.pop("broken_plugin", None)


def test_unknown_env_kwargs_key(tmp_path, capsys):
    run = tmp_path / "r"
    line = one_line_error(*run_cli(capsys, "train", "cartpole", "env.kwargs.colour=1", "--run-dir", str(run)))
    assert "env.kwargs: CartPole-v1 takes no 'colour'" in line and "max_episode_steps" in line
    assert not run.exists()


def test_bad_env_id_leaves_no_directory(tmp_path, capsys):
    run = tmp_path / "deep" / "r"
    line = one_line_error(*run_cli(capsys, "train", "cartpole", "env.id=NoSuchEnv-v0", "--run-dir", str(run)))
    assert "NoSuchEnv-v0" in line
    assert not (tmp_path / "deep").exists()


def test_own_env_module_that_cannot_be_imported_or_does_not_register(tmp_path, monkeypatch, capsys):
    (tmp_path / "registers_nothing_for_auxrl.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    run = tmp_path / "r"
    line = one_line_error(
        *run_cli(capsys, "train", "cartpole", "env.id=no_such_module_x:Maze-v0", "--run-dir", str(run))
    )
    assert "cannot import 'no_such_module_x'" in line and "PYTHONPATH" in line
    line = one_line_error(
        *run_cli(
            capsys, "train", "cartpole", "env.id=registers_nothing_for_auxrl:Maze-v0", "--run-dir", str(run)
        )
    )
    assert (
        "importing 'registers_nothing_for_auxrl' did not register it" in line and "gymnasium.register" in line
    )
    assert not run.exists()


NAN_ENV = """
import gymnasium, numpy as np

class Env(gymnasium.Env):
    observation_space = gymnasium.spaces.Box(-1.0, 1.0, (3,), np.float32)
    action_space = gymnasium.spaces.Discrete(2)

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(3, np.float32), {}

    def step(self, action):
        self.t += 1
        bad = self.t == 10 and WHAT == "observation"
        obs = np.full(3, np.nan if bad else 0.0, np.float32)
        reward = float("inf") if self.t == 10 and WHAT == "reward" else 1.0
        return obs, reward, False, self.t >= 20, {}
"""


@pytest.mark.parametrize("what", ["observation", "reward"])
def test_an_env_that_returns_nan_or_inf_is_named(tmp_path, monkeypatch, capsys, what):
    module = f"nan_{what}_env_for_auxrl"
    (tmp_path / f"{module}.py").write_text(
        f"WHAT = {what!r}\n{NAN_ENV}\ngymnasium.register('Nan{what}-v0', entry_point='{module}:Env')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    run = tmp_path / "r"
    line = one_line_error(
        *run_cli(capsys, "train", "cartpole", f"env.id={module}:Nan{what}-v0", *TINY, "--run-dir", str(run))
    )
    assert f"returned a non-finite {what} (NaN or inf) in env 0 of 4" in line


def test_a_resumed_run_keeps_its_seed_and_cannot_add_heads(finished_run, capsys):
    before = snapshot(finished_run)
    for argv, says in (
        (["seed=7"], "seed=7: a resumed run keeps its seed (1)"),
        (["--seed", "7"], "--seed 7: a resumed run keeps its seed (1)"),
        (["aux.tasks.reward_prediction.weight=1"], "a resumed run cannot add them"),
    ):
        line = one_line_error(*run_cli(capsys, "train", "--resume", str(finished_run), *argv))
        assert says in line
    assert snapshot(finished_run) == before


def test_a_resumed_curriculum_run_may_reweight_heads_a_later_stage_trains(tmp_path, capsys):
    # The base config has no heads, a later stage turns them on: the checkpoint holds the head.
    config = tmp_path / "c.yaml"
    config.write_text(
        "name: c\nenv: {id: CartPole-v1, num_envs: 4}\nmodel: {torso: mlp}\n"
        "ppo: {total_steps: 512, num_steps: 64, num_minibatches: 2, update_epochs: 1}\n"
        "aux: {enabled: false, tasks: {reward_prediction: {weight: 1.0}}}\n"
        "curriculum: {stages: [{name: a, steps: 256}, {name: b, overrides: {aux.enabled: true}}]}\n"
    )
    run = tmp_path / "run"
    assert main(["train", str(config), "--run-dir", str(run), "--no-progress"]) == 0
    argv = ["train", "--resume", str(run), "aux.tasks.reward_prediction.weight=0.5", "ppo.total_steps=768"]
    code, err = run_cli(capsys, *argv, "--no-progress")
    assert code == 0, err


def test_paths_that_are_not_what_the_option_needs(tmp_path, finished_run, capsys):
    (tmp_path / "file.txt").write_text("x")
    line = one_line_error(*run_cli(capsys, "train", str(finished_run)))
    assert "is a folder (a run? continue it: auxrl train --resume" in line
    line = one_line_error(*run_cli(capsys, "train", "cartpole", *TINY, "--run-dir", ""))
    assert "--run-dir is empty" in line
    code, err = run_cli(capsys, "train", "cartpole", *TINY, "--run-dir", str(tmp_path / "file.txt" / "sub"))
    line = one_line_error(code, err)
    assert "Not a directory" in line and "Give a --run-dir whose existing part is a folder" in line
    line = one_line_error(
        *run_cli(capsys, "plot", str(finished_run), "--out", str(tmp_path / "file.txt" / "c.png")), "plot"
    )
    assert "--out" in line and "cannot write there" in line


def test_python_callers_are_told_the_keyword_for_an_option(finished_run):
    from auxrl import train

    with pytest.raises(
        ValueError, match=r"In Python: --resume is resume=True, --overwrite is overwrite=True"
    ):
        train("cartpole", TINY, run_dir=finished_run, verbose=False)


def test_aux_task_option_typo_lists_every_key(tmp_path, capsys):
    code, err = run_cli(
        capsys,
        "train",
        "cartpole",
        "aux.enabled=true",
        "aux.tasks.reward_prediction.wieght=1",
        "--run-dir",
        str(tmp_path / "r"),
    )
    line = one_line_error(code, err)
    assert "aux.tasks.reward_prediction.wieght" in line and "Did you mean 'weight'?" in line
    for key in ("weight", "enabled", "type", "batch_size", "rewarding_fraction"):
        assert key in line


@pytest.mark.parametrize(
    "override, message",
    [
        ("ppo.total_steps=100", "less than one rollout"),
        ("log.checkpoint_every=-5", "log.checkpoint_every must be >= 0"),
        ("ppo.lr=.inf", "ppo.lr: expected a finite number, got inf"),
        ("ppo.lr=1e9", "ppo.lr must be < 1.0, got 1000000000.0 (default 0.00025)"),
        ("ppo.vf_coef=.nan", "ppo.vf_coef: expected a finite number, got nan"),
        ("ppo.max_grad_norm=0", "ppo.max_grad_norm must be > 0.0, got 0 (default 0.5)"),
        (
            "aux.tasks.reward_prediction.weight=-1",
            "aux.tasks.reward_prediction.weight must be >= 0.0, got -1",
        ),
    ],
)
def test_values_out_of_range(tmp_path, capsys, override, message):
    line = one_line_error(*run_cli(capsys, "train", "cartpole", override, "--run-dir", str(tmp_path / "r")))
    assert message in line
    assert not (tmp_path / "r").exists()


def test_run_dir_with_resume(finished_run, tmp_path, capsys):
    code, err = run_cli(capsys, "train", "--resume", str(finished_run), "--run-dir", str(tmp_path / "x"))
    line = one_line_error(code, err)
    assert "--run-dir" in line and "drop --run-dir" in line
    # The same directory both ways is fine.
    code, _ = run_cli(capsys, "train", "--resume", str(finished_run), "--run-dir", str(finished_run))
    assert code == 0


def test_eval_zero_episodes(finished_run, capsys):
    line = one_line_error(*run_cli(capsys, "eval", str(finished_run), "--episodes", "0"), command="eval")
    assert "--episodes (0)" in line and ">= 1" in line


def test_eval_unwritable_video_path(finished_run, tmp_path, capsys):
    (tmp_path / "a_file").write_text("")
    target = tmp_path / "a_file" / "play.mp4"
    code, err = run_cli(capsys, "eval", str(finished_run), "--episodes", "1", "--video", str(target))
    line = one_line_error(code, err, command="eval")
    assert "--video" in line and "cannot write there" in line


def test_read_only_run_directory(finished_run, capsys, monkeypatch):
    before = snapshot(finished_run)
    real_open = builtins.open

    def read_only_open(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+") and str(finished_run) in str(file):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", read_only_open)
    code, err = run_cli(capsys, "train", "--resume", str(finished_run), "ppo.total_steps=1024")
    monkeypatch.undo()
    line = one_line_error(code, err)
    assert "Read-only file system" in line and f"--resume {finished_run}" in line
    assert snapshot(finished_run) == before


def test_full_disk_keeps_the_last_checkpoint(tmp_path, capsys, monkeypatch):
    run = tmp_path / "r"
    assert main(["train", "cartpole", *TINY, "--run-dir", str(run), "--no-progress"]) == 0

    def no_space(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", no_space)
    code, err = run_cli(capsys, "train", "--resume", str(run), "ppo.total_steps=1024", "--no-progress")
    monkeypatch.undo()
    line = one_line_error(code, err)
    assert "No space left on device: " in line and "step_000000000768.pt" in line
    assert f"continue with `auxrl train --resume {run}`" in line
    # The last good checkpoint is intact and still the latest; no temp file was left.
    assert checkpoint.find(run).name == "step_000000000512.pt"
    assert not list((run / "checkpoints").glob("*.tmp"))
    assert main(["train", "--resume", str(run), "ppo.total_steps=1024", "--no-progress"]) == 0
    assert checkpoint.load(run)["state"]["global_step"] == 1024


def test_diverged_training_keeps_the_last_good_checkpoint(tmp_path, capsys, monkeypatch):
    # The value head turns NaN (as a diverging run would): the update stops with an error and no
    # checkpoint is written on the way out; the last good checkpoint stays `latest`.
    from auxrl.models.heads import ValueHead

    run = tmp_path / "r"
    assert main(["train", "cartpole", *TINY, "--run-dir", str(run), "--no-progress"]) == 0
    before = snapshot(run / "checkpoints")
    real_forward = ValueHead.forward
    monkeypatch.setattr(ValueHead, "forward", lambda self, x: real_forward(self, x) * float("nan"))
    code, err = run_cli(capsys, "train", "--resume", str(run), "ppo.total_steps=1024", "--no-progress")
    monkeypatch.undo()
    line = one_line_error(code, err)
    assert "non-finite" in line and "latest" in line
    assert snapshot(run / "checkpoints") == before
    assert all(torch.isfinite(v).all() for v in checkpoint.load(run)["model"].values())


def test_checkpoint_save_refuses_non_finite_values(tmp_path):
    good = checkpoint.save(tmp_path, {"model": {"w": torch.ones(3)}, "state": {"step": 1}}, step=1)
    bad = {
        "model": {"w": torch.ones(3)},
        "optimizer": {"state": {0: {"exp_avg": torch.tensor([float("inf")])}}},
    }
    with pytest.raises(ValueError, match=r"optimizer\[.state.\]\[0\]\[.exp_avg.\] holds NaN or infinite"):
        checkpoint.save(tmp_path, bad, step=2)
    with pytest.raises(ValueError, match="step_000000000001.pt stays the latest"):
        checkpoint.save(tmp_path, {"model": {"w": torch.tensor([float("nan")])}}, step=3)
    assert checkpoint.find(tmp_path) == good
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == sorted(["latest", good.name])


@pytest.mark.parametrize("command", ["train", "config"])
@pytest.mark.parametrize(
    "override, message",
    [
        ("ppo.num_minibatches=0", "ppo.num_minibatches must be >= 1"),
        ("seed=-1", "seed must be >= 0, got -1 (default 1)"),
        ("seed=1e30", "seed must be <= 4294967295, got 1000000000000000019884624838656"),
        ("model.hidden_sizes=[-3]", "model.hidden_sizes[0] must be >= 1, got -3"),
        ("model.hidden_sizes=[64, 0]", "model.hidden_sizes[1] must be >= 1, got 0"),
        ("aux.tasks.policy.type=reward_prediction", "aux.tasks.policy: 'policy' is reserved"),
        ("aux.tasks.value.weight=1", "give the aux task another name, e.g. aux.tasks.my_value"),
        ("name=../../esc", "name: '../../esc' must be a plain folder name"),
        ("name=a/b", "use --run-dir to write the run elsewhere"),
        (
            "aux.tasks.reward_prediction.weight={start: 1, end: 2}",
            "aux.tasks.reward_prediction.weight.steps: missing; give every one of start, end, steps",
        ),
    ],
)
def test_bad_values_refused_at_config_time(tmp_path, capsys, monkeypatch, command, override, message):
    monkeypatch.chdir(tmp_path)  # the default run directory (runs/...) would be written here
    extra = ["--run-dir", str(tmp_path / "r")] if command == "train" else []
    line = one_line_error(*run_cli(capsys, command, "cartpole", override, *extra), command=command)
    assert message in line
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "text, message",
    [
        ("1: 2\n", "Unknown config key '1'. Valid keys: aux, curriculum"),
        ("ppo:\n  3: 2\n", "Unknown config key 'ppo.3'. Valid keys: adam_eps"),
    ],
)
def test_non_string_config_keys(tmp_path, capsys, text, message):
    bad = tmp_path / "keys.yaml"
    bad.write_text(text)
    line = one_line_error(*run_cli(capsys, "train", str(bad), "--run-dir", str(tmp_path / "r")))
    assert message in line
    assert not (tmp_path / "r").exists()


def test_binary_config_file(tmp_path, capsys):
    bad = tmp_path / "b.yaml"
    bad.write_bytes(bytes(range(128, 256)))
    line = one_line_error(*run_cli(capsys, "train", str(bad), "--run-dir", str(tmp_path / "r")))
    assert f"{bad}: not a UTF-8 YAML file" in line
    assert not (tmp_path / "r").exists()


def test_raw_atari_frames_on_a_cnn(tmp_path, capsys):
    pytest.importorskip("ale_py")
    run = tmp_path / "r"
    code, err = run_cli(
        capsys, "train", "pong", "env.id=PongNoFrameskip-v4", "env.num_envs=1", "--run-dir", str(run)
    )
    line = one_line_error(code, err)
    assert "channel-last, (210, 160, 3)" in line and "env.id=ALE/<Game>-v5" in line
    assert "ALE/Pong-v5" in line
    assert not run.exists()


def test_abstract_aux_task_class(tmp_path, capsys):
    run = tmp_path / "r"
    code, err = run_cli(
        capsys, "train", "cartpole", "aux.tasks.x.type=auxrl.tasks.base:AuxTask", "--run-dir", str(run)
    )
    line = one_line_error(code, err)
    assert "the AuxTask base class itself" in line and "implements loss(seq, encode)" in line
    assert not run.exists()


def test_file_that_is_not_an_auxrl_checkpoint(tmp_path, capsys):
    plain = tmp_path / "dict.pt"
    torch.save({"a": 1}, plain)
    line = one_line_error(*run_cli(capsys, "eval", str(plain)), command="eval")
    assert f"{plain} is not an auxrl checkpoint" in line
    run = tmp_path / "r"
    code, err = run_cli(capsys, "train", "cartpole", f"model.init_from={plain}", "--run-dir", str(run))
    line = one_line_error(code, err)
    assert f"{plain} is not an auxrl checkpoint (it lacks 'model')" in line
    assert not run.exists()


@pytest.mark.parametrize("seed", ["-5", str(2**32)])
def test_eval_seed_out_of_range(finished_run, capsys, seed):
    line = one_line_error(*run_cli(capsys, "eval", str(finished_run), "--seed", seed), command="eval")
    assert f"--seed {seed}: must be an integer in [0, 2**32 - 1]" in line


def test_plot_out_path(finished_run, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "P"
    code = main(["plot", str(finished_run), "--out", str(out)])
    assert code == 0 and f"Wrote {out}.png" in capsys.readouterr().out
    assert (tmp_path / "P.png").is_file() and not out.exists()
    line = one_line_error(*run_cli(capsys, "plot", str(finished_run), "--out", ""), command="plot")
    assert "--out is empty" in line


def test_config_command_checks_the_tasks_as_train_does(capsys):
    code, err = run_cli(capsys, "config", "cartpole", "aux.tasks.nosuch.weight=1")
    assert "Aux task 'nosuch' is neither a built-in" in one_line_error(code, err, "config")
