"""Config parsing, dotted overrides, and errors that name the key and the valid choices."""

import pytest

from auxrl.config import Config, ConfigError, WeightSchedule
from auxrl.configfile import from_dict, load_config, parse_override, save_config, shipped_config_names


def test_shipped_configs_load_and_have_expected_values():
    names = shipped_config_names()
    assert {"cartpole", "breakout", "pong"} <= set(names)
    for name in names:
        assert isinstance(load_config(name), Config)
    cfg = load_config("breakout")
    assert cfg.env.id == "ALE/Breakout-v5"
    assert cfg.ppo.lr == 2.5e-4 and cfg.ppo.clip_coef == 0.1 and cfg.ppo.num_steps == 128
    assert set(cfg.aux.tasks) == {"reward_prediction", "pixel_control", "next_state"}
    assert cfg.aux.tasks["pixel_control"].params["n_steps"] == 10


def test_overrides_types_and_nesting():
    cfg = load_config(
        "breakout",
        [
            "ppo.lr=1e-4",
            "env.num_envs=16",
            "aux.enabled=false",
            "model.freeze=[torso]",
            "aux.tasks.next_state.horizon=3",
            "ppo.total_steps=1e6",
        ],
    )
    assert cfg.ppo.lr == 1e-4 and isinstance(cfg.ppo.lr, float)
    assert cfg.env.num_envs == 16 and cfg.aux.enabled is False
    assert cfg.model.freeze == ["torso"]
    assert cfg.aux.tasks["next_state"].params["horizon"] == 3
    assert cfg.ppo.total_steps == 1_000_000 and isinstance(cfg.ppo.total_steps, int)
    assert parse_override("env.mode=null") == ("env.mode", None)


def test_a_section_mapping_changes_only_the_keys_it_names():
    base = load_config("cartpole")
    cfg = load_config("cartpole", ["ppo={total_steps: 5000, lr: 1e-3}"])
    assert cfg.ppo.total_steps == 5000 and cfg.ppo.lr == 1e-3
    assert cfg.ppo.num_steps == base.ppo.num_steps != 128  # cartpole.yaml's, not the built-in default
    # Python callers may give a dict, nested or dotted.
    nested = load_config("cartpole", {"ppo": {"total_steps": 5000}})
    assert nested == load_config("cartpole", {"ppo.total_steps": 5000})
    # ... and as the dotted form does: another env.id renames the run, a task turns the heads on.
    assert load_config("cartpole", ["env={id: Acrobot-v1}"]).name == "Acrobot-v1"
    assert load_config("cartpole", ["aux={tasks: {reward_prediction: {weight: 1}}}"]).aux.enabled
    # A mapping *value* (not a section) is replaced: {} clears env.kwargs, a task is set anew.
    cleared = load_config(
        "curriculum_cartpole", ["curriculum.stages=[]", "env.kwargs={max_episode_steps: 50}"]
    )
    assert (
        load_config(
            "curriculum_cartpole",
            ["curriculum.stages=[]", "env.kwargs={max_episode_steps: 50}", "env.kwargs={}"],
        ).env.kwargs
        == {}
        != cleared.env.kwargs
    )
    swapped = load_config("breakout", ["aux.tasks.reward_prediction={type: next_state, weight: 0.1}"])
    assert swapped.aux.tasks["reward_prediction"].params == {}
    assert sorted(load_config("breakout", ["aux.tasks={next_state: {weight: 0.1}}"]).aux.tasks) == [
        "next_state"
    ]


def test_weight_schedule_and_new_task_via_override():
    cfg = load_config(
        "cartpole",
        [
            "aux.enabled=true",
            "aux.tasks.rp.type=reward_prediction",
            "aux.tasks.rp.weight={start: 1.0, end: 0.0, steps: 1000}",
        ],
    )
    assert cfg.aux.tasks["rp"].weight == WeightSchedule(start=1.0, end=0.0, steps=1000)


def test_unknown_key_lists_valid_keys_and_suggests():
    with pytest.raises(ConfigError) as err:
        load_config("cartpole", ["ppo.learning_rate=1e-3"])
    msg = str(err.value)
    assert "ppo.learning_rate" in msg and "lr" in msg and "clip_coef" in msg
    with pytest.raises(ConfigError, match="Did you mean 'num_envs'"):
        load_config("cartpole", ["env.num_env=4"])
    with pytest.raises(ConfigError, match="Unknown config key 'bogus'"):
        from_dict({"bogus": 1})


def test_wrong_types_and_choices_fail_before_training():
    with pytest.raises(ConfigError, match="env.num_envs: expected an integer"):
        load_config("cartpole", ["env.num_envs=four"])
    with pytest.raises(ConfigError, match="ppo.norm_adv: expected true or false"):
        load_config("cartpole", ["ppo.norm_adv=3"])
    with pytest.raises(ConfigError, match="'resnet' is not a valid choice.*'nature_cnn'"):
        load_config("cartpole", ["model.torso=resnet"])
    with pytest.raises(ConfigError, match="divisible"):
        load_config("cartpole", ["ppo.num_minibatches=7"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config("cartpole", ["ppo.lr"])


def test_unknown_config_name_lists_shipped_ones():
    with pytest.raises(ConfigError, match="cartpole"):
        load_config("no_such_config")


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config("breakout", ["ppo.lr=3e-4", "aux.tasks.pixel_control.gamma=0.8"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(str(tmp_path / "config.yaml"))
    assert again == cfg


def test_every_key_has_help_from_its_model_and_auxrl_config_key_prints_it(capsys):
    from auxrl.cli import main
    from auxrl.confighelp import config_keys, task_keys

    undocumented = [k.key for k in config_keys() + task_keys() if not k.help]
    assert undocumented == []  # every key of the config models and the built-in tasks
    assert main(["config", "ppo.gae_lambda", "aux.tasks.next_state.horizon"]) == 0
    out = capsys.readouterr().out
    assert "ppo.gae_lambda: float (default 0.95)\n  GAE's lambda." in out
    assert "aux.tasks.next_state.horizon: int | null (default null)" in out and "steps predicted" in out
    assert main(["config", "cartpole", "ppo.lr", "ppo.lr=3e-4"]) == 0  # a key with its value here
    assert "value here: 0.0003" in capsys.readouterr().out
    assert main(["config", "aux.balance"]) == 0  # a section: each of its keys
    assert capsys.readouterr().out.count("aux.balance.") == 6
    assert main(["config", "ppo.lrr"]) == 2
    assert "No config key 'ppo.lrr'. Did you mean 'ppo.lr'?" in capsys.readouterr().err


def test_ranges_live_in_the_fields_of_configs_and_task_configs():
    from auxrl.config import build
    from auxrl.tasks.next_state import NextStateConfig

    with pytest.raises(ConfigError, match=r"^ppo.gamma must be <= 1.0, got 1.5 \(default 0.99\)$"):
        from_dict({}, ["ppo.gamma=1.5"])
    with pytest.raises(ConfigError, match=r"^ppo.total_steps: expected an integer, got 'many'$"):
        from_dict({"ppo": {"total_steps": "many"}})
    with pytest.raises(ConfigError, match=r"^ppo.lr: expected a number, got True$"):
        from_dict({}, ["ppo.lr=true"])
    assert from_dict({}, ["ppo.total_steps=2e5"]).ppo.total_steps == 200_000  # a whole float is an int
    with pytest.raises(ConfigError, match=r"^aux.tasks.next_state.horizon must be >= 1, got 0$"):
        build(NextStateConfig, {"horizon": 0}, "aux.tasks.next_state")
    with pytest.raises(ConfigError, match=r"^Unknown config key 'aux.tasks.next_state.horizn'.*'horizon'"):
        build(NextStateConfig, {"horizn": 3}, "aux.tasks.next_state")
