"""Frozen torso, head-only training on top of an earlier run."""

import pytest
import torch

from auxrl import checkpoint
from auxrl.configfile import load_config
from auxrl.trainer import train

SHORT = ["ppo.total_steps=1024", "log.checkpoint_every=0"]


def _params(state, prefix):
    return {k: v for k, v in state.items() if k.startswith(prefix)}


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    run = tmp_path_factory.mktemp("pre") / "run"
    train(load_config("cartpole", SHORT), run, device="cpu", progress=False)
    return run


def test_frozen_torso_is_bitwise_unchanged_and_new_heads_train(pretrained, tmp_path):
    before = checkpoint.load(pretrained)["model"]
    cfg = load_config(
        "cartpole",
        SHORT
        + [
            f"model.init_from={pretrained}",
            "model.init_modules=[torso]",
            "model.freeze=[torso]",
            "seed=7",
            "aux.enabled=true",
            "aux.tasks.reward_prediction.weight=1.0",
        ],
    )
    # Capture the fresh heads as initialised in the new run (same seed, same build order).
    torch.manual_seed(7)
    train(cfg, tmp_path / "run", device="cpu", progress=False)
    after = checkpoint.load(tmp_path / "run")["model"]

    torso_before, torso_after = _params(before, "torso."), _params(after, "torso.")
    assert torso_before.keys() == torso_after.keys() and torso_before
    for key in torso_before:
        assert torch.equal(torso_before[key], torso_after[key]), key  # bitwise

    # The heads were not loaded (init_modules=[torso]) and trained: they differ from both the
    # pretrained heads and their own fresh initialisation.
    from auxrl.build import build_model
    from auxrl.curriculum import plan_stages
    from auxrl.envs import make_envs

    with make_envs(cfg.env) as envs:
        torch.manual_seed(7)
        fresh = build_model(cfg, plan_stages(cfg), envs.single_observation_space, envs.single_action_space)
    fresh_state = fresh.state_dict()
    for prefix in ("heads.policy.", "heads.value.", "heads.reward_prediction."):
        for key, value in _params(after, prefix).items():
            assert not torch.equal(value, fresh_state[key]), key
            if key in before:
                assert not torch.equal(value, before[key]), key
    # Frozen parameters are not in the optimizer: it holds exactly the trainable ones.
    saved_opt = checkpoint.load(tmp_path / "run")["optimizer"]
    trainable = [n for n, p in fresh.named_parameters() if p.requires_grad and not n.startswith("torso.")]
    assert len(saved_opt["param_groups"][0]["params"]) == len(trainable)


def test_init_from_loads_matching_heads_and_unknown_freeze_errors(pretrained, tmp_path):
    cfg = load_config(
        "cartpole", ["ppo.total_steps=256", f"model.init_from={pretrained}", "model.freeze=[torso, policy]"]
    )
    train(cfg, tmp_path / "run", device="cpu", progress=False)
    before, after = checkpoint.load(pretrained)["model"], checkpoint.load(tmp_path / "run")["model"]
    for key in before:
        if key.startswith(("torso.", "heads.policy.")):
            assert torch.equal(before[key], after[key]), key  # loaded and frozen
        else:
            assert not torch.equal(before[key], after[key]), key  # loaded, then trained
    everything = load_config("cartpole", ["ppo.total_steps=256", "model.freeze=[torso, policy, value]"])
    with pytest.raises(ValueError, match="nothing to train"):
        train(everything, tmp_path / "all", device="cpu", progress=False)
    bad = load_config("cartpole", ["ppo.total_steps=256", "model.freeze=[trunk]"])
    with pytest.raises(ValueError, match="no module 'trunk'.*torso"):
        train(bad, tmp_path / "bad", device="cpu", progress=False)
