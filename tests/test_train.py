"""End-to-end training: CartPole learns; Breakout runs every head and writes every tag."""

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from auxrl import checkpoint
from auxrl.cli import main
from auxrl.configfile import load_config
from auxrl.trainer import train

CLEANRL_TAGS = [
    "charts/episodic_return",
    "charts/episodic_length",
    "charts/SPS",
    "charts/learning_rate",
    "losses/policy_loss",
    "losses/value_loss",
    "losses/entropy",
    "losses/approx_kl",
    "losses/clipfrac",
    "losses/explained_variance",
    "losses/total",
]
AUX_TAGS = [
    f"aux/{name}/{key}"
    for name in ("reward_prediction", "pixel_control", "next_state")
    for key in ("loss", "weight", "grad_cosine", "grad_norm_ratio")
] + [
    "aux/reward_prediction/accuracy",
    "aux/pixel_control/pseudo_reward",
    "aux/next_state/cosine",
    "aux/next_state/target_similarity",
]


def scalars(run_dir, tag):
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return np.array([e.value for e in acc.Scalars(tag)]) if tag in acc.Tags()["scalars"] else None


@pytest.mark.slow
def test_cartpole_learns(tmp_path):
    # The shipped config, shortened: 30k steps (the full 100k run reaches a 500 return).
    cfg = load_config("cartpole", ["ppo.total_steps=30000"])
    result = train(cfg, tmp_path / "run", device="cpu", progress=False)
    returns = scalars(tmp_path / "run", "charts/episodic_return")
    early = returns[:20].mean()
    assert early < 60  # a random policy scores about 22
    assert result.best_recent_return is not None and result.best_recent_return >= 150, result
    assert returns[-20:].mean() > 2 * early


@pytest.mark.slow
def test_breakout_all_heads_end_to_end_via_cli(tmp_path, capsys):
    run = tmp_path / "breakout"
    code = main(
        [
            "train",
            "breakout",
            "ppo.total_steps=1024",
            "aux.enabled=true",  # the config holds the three heads, off
            "env.num_envs=4",
            "ppo.num_steps=128",
            "aux.batch_size=4",
            "aux.diagnostics_every=1",
            "aux.replay_size=1024",
            "--run-dir",
            str(run),
            "--device",
            "cpu",
            "--no-progress",
        ]
    )
    assert code == 0
    acc = EventAccumulator(str(run), size_guidance={"scalars": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    missing = [t for t in CLEANRL_TAGS + AUX_TAGS if t not in tags]
    assert not missing, missing
    assert checkpoint.find(run).name == "step_000000001024.pt"
    assert (run / "config.yaml").is_file()
    # Every logged aux loss is a finite number.
    for name in ("reward_prediction", "pixel_control", "next_state"):
        assert np.isfinite(scalars(run, f"aux/{name}/loss")).all()
    capsys.readouterr()
    assert main(["eval", str(run), "--episodes", "2", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "ALE/Breakout-v5: 2 episodes, score" in out


def test_cli_errors_name_the_problem(tmp_path, capsys):
    assert main(["train", "cartpole", "ppo.lerning_rate=1", "--run-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "ppo.lerning_rate" in err and "Valid keys" in err
    # A task that cannot work with the env fails at start-up and says why.
    code = main(
        [
            "train",
            "cartpole",
            "aux.enabled=true",
            "aux.tasks.pixel_control.weight=0.01",
            "--run-dir",
            str(tmp_path / "pc"),
            "--no-progress",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "pixel_control" in err and "image observations" in err
    # Unknown task parameters are caught too.
    code = main(["train", "breakout", "aux.tasks.pixel_control.gama=0.9", "--run-dir", str(tmp_path / "x")])
    assert code == 2
    assert "aux.tasks.pixel_control.gama" in capsys.readouterr().err


def test_tasks_command_lists_builtins(capsys):
    assert main(["tasks"]) == 0
    out = capsys.readouterr().out
    for name in ("reward_prediction", "pixel_control", "next_state"):
        assert name in out


@pytest.mark.slow
@pytest.mark.parametrize("torso", ["impala"])
def test_other_torso_trains_a_step(tmp_path, torso):
    cfg = load_config(
        "breakout",
        [
            f"model.torso={torso}",
            "ppo.total_steps=256",
            "env.num_envs=2",
            "ppo.num_minibatches=2",
            "ppo.update_epochs=1",
            "aux.enabled=false",
        ],
    )
    result = train(cfg, tmp_path / "run", device="cpu", progress=False)
    assert result.global_step == 256
