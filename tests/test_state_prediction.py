"""``env.labels`` and the ``state_prediction`` task: labels flow env -> rollout storage -> replay ->
Sequences aligned with the observations they describe; the loss on constructed cases; the errors;
a torso trained with the task holds what a linear probe reads; the Atari RAM path end to end."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch

from auxrl import checkpoint
from auxrl.cli import main
from auxrl.collect import collect_rollout
from auxrl.config import ConfigError, EnvConfig, build
from auxrl.envs import atari_ram, make_envs
from auxrl.envs.labels import label_spec
from auxrl.models.agent import build_agent
from auxrl.ppo.rollout import RolloutStorage
from auxrl.tasks.base import Sequences, TaskContext, TaskMismatch
from auxrl.tasks.replay import Replay
from auxrl.tasks.state_prediction import StatePrediction

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


# ------------------------------------------------------------------------------------------------
# Labels: env -> storage -> replay -> Sequences
# ------------------------------------------------------------------------------------------------


class CounterEnv(gym.Env):
    """obs = (step in the episode, a random tag drawn at reset); info holds both (``count``,
    ``tag``), so a label is right exactly when it equals its observation. Episodes end after 4
    steps (terminated) or, with ``truncate``, are cut at 3. ``reset_info=False``: the reset's
    info lacks both keys (as many envs' do)."""

    observation_space = gym.spaces.Box(-1e6, 1e6, (2,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, reset_info: bool = True, truncate: bool = False) -> None:
        self.reset_info, self.truncate = reset_info, truncate

    def _obs(self) -> np.ndarray:
        return np.array([self.t, self.tag], dtype=np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t, self.tag = 0, float(self.np_random.integers(1000))
        return self._obs(), ({"count": self.t, "tag": self.tag} if self.reset_info else {})

    def step(self, action):
        self.t += 1
        terminated = self.t >= 4
        truncated = self.truncate and self.t >= 3 and not terminated
        return self._obs(), 0.0, terminated, truncated, {"count": self.t, "tag": self.tag}


gym.register("auxrl_test/Counter-v0", entry_point=CounterEnv)


def labelled_rollouts(kwargs: dict, rollouts: int = 3, steps: int = 7, num_envs: int = 3):
    """Collect ``rollouts`` rollouts of the counter env into a storage and a replay holding them all."""
    cfg = EnvConfig(
        id="auxrl_test/Counter-v0", num_envs=num_envs, kwargs=kwargs, labels=["info:count", "info:tag"]
    )
    torch.manual_seed(0)
    with make_envs(cfg) as envs:
        assert envs.label_names == ("count", "tag")
        agent = build_agent("mlp", [8], envs.single_observation_space, envs.single_action_space)
        storage = RolloutStorage(steps, num_envs, (2,), torch.float32, (), torch.long, torch.device("cpu"), 2)
        replay = Replay(steps * rollouts, storage)
        storage.next_obs.copy_(torch.as_tensor(envs.reset(seed=3)))
        storage.next_labels.copy_(torch.as_tensor(envs.reset_labels))
        for _ in range(rollouts):
            collect_rollout(envs, agent, storage, lambda *args: None)
            replay.add(storage)
    return storage, replay


def every_window(replay: Replay, length: int) -> Sequences:
    starts = torch.arange(replay.size - length + 1).repeat_interleave(replay.num_envs)
    envs = torch.arange(replay.num_envs).repeat(replay.size - length + 1)
    return replay.gather(starts, envs, length)


@pytest.mark.parametrize("truncate", [False, True])
def test_labels_flow_from_env_to_sequences_aligned_with_obs(truncate):
    storage, replay = labelled_rollouts({"truncate": truncate})
    assert storage.labels.shape == (7, 3, 2) and storage.labels.dtype == torch.float32
    # Storage: every stored obs (acted on, and the one after the rollout) has its own labels,
    # the NEXT_STEP reset steps included (the new episode's first obs: count 0, its new tag).
    assert torch.equal(storage.labels, storage.obs) and torch.equal(storage.next_labels, storage.next_obs)
    assert (~storage.valid).any() and (storage.obs[..., 0] == 0).any()
    # Replay -> Sequences: [B, L+1, K], each label that of the obs at the same index, across
    # rollout boundaries (the spare row holds the last rollout's next_obs and its labels).
    seq = every_window(replay, 3)
    assert seq.labels.shape == (len(seq.obs), 4, 2)
    assert torch.equal(seq.labels, seq.obs)
    assert replay.size == 21 and len(seq.obs) == 19 * 3


def test_a_reset_info_without_the_key_gives_nan_labels_there():
    storage, replay = labelled_rollouts({"reset_info": False})
    seq = every_window(replay, 1)
    missing = torch.isnan(seq.labels).any(-1)
    # Exactly the observations a reset returned (count 0) have no labels; the others match.
    assert torch.equal(missing, seq.obs[..., 0] == 0) and missing.any()
    assert torch.equal(seq.labels[~missing], seq.obs[~missing])


def test_no_labels_cost_nothing():
    storage = RolloutStorage(4, 2, (2,), torch.float32, (), torch.long, torch.device("cpu"))
    assert storage.labels is None and storage.next_labels is None
    assert Replay(8, storage).labels is None
    with make_envs(EnvConfig(id="CartPole-v1", num_envs=2)) as envs:
        envs.reset(seed=0)
        assert envs.label_names == () and envs.reset_labels is None
        assert envs.step(np.array([0, 1])).labels is None


def test_atari_ram_labels_are_the_ram_of_each_observation():
    # Gymnasium's ALE env (the RAM path), truncated after 60 frames (15 steps): a reset step
    # comes at step 16, whose label must be the RAM after the reset (the new game's first obs).
    cfg = EnvConfig(id="ALE/Pong-v5", num_envs=2, labels=["ram", "info:lives"], max_episode_frames=60)
    spec = label_spec(cfg)
    ram = [v.index for v in atari_ram.variables("pong")]
    assert spec.names[:-1] == tuple(v.name for v in atari_ram.variables("pong")) and spec.names[-1] == "lives"
    assert spec.kinds == ("byte",) * len(ram) + ("real",)

    def current_ram(envs) -> np.ndarray:
        return np.stack([e.unwrapped.ale.getRAM()[ram] for e in envs.env.envs]).astype(np.float32)

    with make_envs(cfg) as envs:
        assert type(envs).__name__ == "AtariModesVecEnv"
        envs.reset(seed=0)
        assert np.array_equal(envs.reset_labels[:, :-1], current_ram(envs))
        resets = 0
        for t in range(20):
            step = envs.step(np.array([t % 6, (t + 3) % 6]))
            assert step.labels.shape == (2, len(ram) + 1)
            assert np.array_equal(step.labels[:, :-1], current_ram(envs))
            assert np.array_equal(step.labels[:, -1], [0, 0])  # Pong has no lives
            resets += int(step.reset.sum())
        assert resets >= 2
    # Evaluation envs read no labels and keep the native vector env.
    with make_envs(cfg, training=False) as envs:
        assert type(envs).__name__ == "AtariVecEnv" and envs.label_names == ()


# ------------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------------


def one_line_error(argv: list[str], capsys) -> str:
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_label_errors_are_one_line_with_the_fix(tmp_path, capsys):
    run = ["--run-dir", str(tmp_path / "r"), "--no-progress", "--device", "cpu"]
    # The task without labels: the fix is named.
    line = one_line_error(["train", "cartpole", "aux.tasks={state_prediction: {}}", *run], capsys)
    assert "state_prediction" in line and "env.labels=[ram]" in line and "env.labels=[info:KEY]" in line
    assert not (tmp_path / "r").exists()
    with pytest.raises(TaskMismatch, match="env.labels is empty"):
        StatePrediction.check(context(()))
    # Config: what a label is, ram on a non-Atari env, a label twice.
    line = one_line_error(["train", "cartpole", "env.labels=[x]", *run], capsys)
    assert "'x' is not a label" in line and "info:KEY" in line
    assert "not an Atari id" in one_line_error(["train", "cartpole", "env.labels=[ram]", *run], capsys)
    assert "twice" in one_line_error(["train", "cartpole", "env.labels=[info:a, info:a]", *run], capsys)
    # An Atari game AtariARI does not annotate.
    line = one_line_error(["train", "breakout", "env.id=ALE/Tetris-v5", "env.labels=[ram]", *run], capsys)
    assert "no RAM annotations" in line and "breakout" in line
    # An info key that a real step lacks: named, with the entries the info has.
    cfg = EnvConfig(id="auxrl_test/Counter-v0", num_envs=2, labels=["info:depth"])
    with make_envs(cfg) as envs:
        envs.reset(seed=0)  # a reset's info may lack it: NaN
        assert np.isnan(envs.reset_labels).all()
        with pytest.raises(ValueError, match=r"no entry 'depth' .*count, tag"):
            envs.step(np.array([0, 0]))
    # The task's own keys.
    with pytest.raises(ConfigError, match="'nope' is not one of env.labels"):
        make(("a", "b"), ("real", "real"), labels=["nope"])


def test_the_task_and_the_key_are_listed(capsys):
    assert main(["tasks"]) == 0
    assert "state_prediction" in capsys.readouterr().out
    assert main(["config", "cartpole"]) == 0
    out = capsys.readouterr().out
    assert "env.labels" in out and "AtariARI RAM" in out and "aux.tasks.state_prediction.source" in out


# ------------------------------------------------------------------------------------------------
# The loss on constructed cases
# ------------------------------------------------------------------------------------------------


def context(names: tuple[str, ...], kinds: tuple[str, ...] = (), feature_dim: int = 8) -> TaskContext:
    space = gym.spaces.Box(-1.0, 1.0, (feature_dim,), np.float32)
    return TaskContext(
        space, gym.spaces.Discrete(2), feature_dim, torch.nn.Identity(), label_names=names, label_kinds=kinds
    )


def make(names, kinds, feature_dim: int = 8, **params) -> StatePrediction:
    ctx = context(tuple(names), tuple(kinds), feature_dim)
    StatePrediction.check(ctx)
    return StatePrediction(build(StatePrediction.Config, params, "aux.tasks.state_prediction"), ctx)


def batch(obs: torch.Tensor, labels: torch.Tensor) -> Sequences:
    """Windows of one transition: obs [B, 2, D] and labels [B, 2, K] (index 0 is predicted)."""
    false = torch.zeros(len(obs), 1, dtype=torch.bool)
    return Sequences(
        obs,
        torch.zeros(len(obs), 1, dtype=torch.long),
        torch.zeros(len(obs), 1),
        false,
        false,
        ~false,
        labels=labels,
    )


def test_classification_loss_perfect_and_uniform_logits():
    torch.manual_seed(0)
    values = torch.randint(0, 256, (64, 2)).float()  # two RAM bytes
    features = torch.cat([torch.nn.functional.one_hot(values[:, i].long(), 256) for i in (0, 1)], 1).float()
    task = make(("a", "b"), ("byte", "byte"), feature_dim=512)
    seq = batch(features[:, None].expand(-1, 2, -1), values[:, None].expand(-1, 2, -1))
    with torch.no_grad():  # logits 50 x one-hot(value): each byte's own block of the features
        task.classify.weight.copy_(50 * torch.block_diag(torch.eye(256), torch.eye(256)))
        task.classify.bias.zero_()
    out = task.loss(seq, lambda x: x)
    assert out.loss.item() < 1e-6 and out.metrics["accuracy"].item() == 1.0
    with torch.no_grad():  # uniform logits: ln 256 per byte
        task.classify.weight.zero_()
    out = task.loss(seq, lambda x: x)
    assert math.isclose(out.loss.item(), math.log(256), rel_tol=1e-6)
    assert math.isclose(out.metrics["cross_entropy"].item(), math.log(256), rel_tol=1e-6)
    # A NaN label is left out: the loss of the other entries only.
    labels = seq.labels.clone()
    labels[:32, :, 0] = float("nan")
    with torch.no_grad():
        task.classify.weight.copy_(50 * torch.block_diag(torch.eye(256), torch.eye(256)))
    out = task.loss(batch(seq.obs, labels), lambda x: x)
    assert out.loss.item() < 1e-6 and out.metrics["accuracy"].item() == 1.0


def test_regression_running_statistics_match_numpy_and_normalise_the_targets():
    rng = np.random.default_rng(0)
    task = make(("x", "y"), ("real", "real"), feature_dim=4)
    chunks = []
    for i in range(5):  # batches of different sizes, scales and offsets, some labels missing
        values = rng.normal([1000.0 * i, -3.0], [50.0 + i, 0.01], size=(16 + 8 * i, 2))
        values[rng.random(values.shape) < 0.2] = np.nan
        chunks.append(values)
        seq = batch(
            torch.zeros(len(values), 2, 4),
            torch.as_tensor(values, dtype=torch.float32)[:, None].expand(-1, 2, -1),
        )
        task.loss(seq, lambda x: x)
    seen = np.concatenate(chunks).astype(np.float32).astype(np.float64)  # labels travel as float32
    assert task.mean.dtype == torch.float64
    assert np.array_equal(task.count.numpy(), (~np.isnan(seen)).sum(0))
    np.testing.assert_allclose(task.mean.numpy(), np.nanmean(seen, 0), rtol=1e-10)
    np.testing.assert_allclose(task.var.numpy(), np.nanvar(seen, 0), rtol=1e-8)
    # The loss: MSE of the normalised targets (zero weights predict 0, so it is E[z^2]).
    with torch.no_grad():
        task.regress.weight.zero_()
        task.regress.bias.zero_()
    task.eval()  # statistics frozen: the target is computable by hand
    values = chunks[-1]
    seq = batch(
        torch.zeros(len(values), 2, 4),
        torch.as_tensor(values, dtype=torch.float32)[:, None].expand(-1, 2, -1),
    )
    z = (values.astype(np.float32).astype(np.float64) - np.nanmean(seen, 0)) / np.sqrt(
        np.nanvar(seen, 0) + 1e-8
    )
    out = task.loss(seq, lambda x: x)
    assert math.isclose(out.loss.item(), float(np.nanmean(z**2)), rel_tol=1e-5)
    assert math.isclose(out.metrics["r2"].item(), 1 - float(np.nanmean(z**2)), rel_tol=1e-5, abs_tol=1e-6)
    # Saved with the model: a fresh task loading the state dict normalises alike.
    fresh = make(("x", "y"), ("real", "real"), feature_dim=4)
    fresh.load_state_dict(task.state_dict())
    assert torch.equal(fresh.mean, task.mean) and torch.equal(fresh.var, task.var)


def test_mixed_labels_average_every_label_alike_and_a_subset_can_be_chosen():
    task = make(("b", "r", "skip"), ("byte", "real", "real"), feature_dim=4, labels=["b", "r"])
    assert task.byte_names == ["b"] and task.real_names == ["r"]
    with torch.no_grad():
        for p in task.parameters():
            p.zero_()
    labels = torch.tensor([[7.0, 1.0, 5.0], [9.0, 3.0, 6.0]])[:, None].expand(-1, 2, -1)
    out = task.loss(batch(torch.zeros(2, 2, 4), labels), lambda x: x)
    ce, mse = math.log(256), 1 / (1 + 1e-8)  # targets -1 and +1 after normalising
    assert math.isclose(out.loss.item(), (ce + mse) / 2, rel_tol=1e-5)
    assert set(out.metrics) == {"accuracy", "cross_entropy", "nmse", "r2"}


# ------------------------------------------------------------------------------------------------
# Training: what the torso learns, and the Atari RAM path
# ------------------------------------------------------------------------------------------------

SIZE, SIDE = 36, 4  # image size, square side


class SquareEnv(gym.Env):
    """A bright square at column x (and a random row), a dimmer distractor square anywhere, on a
    noisy dark image; info["x"] = x, info["x_cm"] = x + 0.5 (a float: the probe regresses it).
    Reward 1 for telling whether the square is in the right half, so PPO alone learns some of x."""

    observation_space = gym.spaces.Box(0, 255, (1, SIZE, SIZE), np.uint8)
    action_space = gym.spaces.Discrete(2)

    def _observe(self):
        self.x = int(self.np_random.integers(SIZE - SIDE + 1))
        image = self.np_random.integers(0, 60, (1, SIZE, SIZE), dtype=np.uint8)
        dx, dy = self.np_random.integers(SIZE - SIDE + 1, size=2)
        image[0, dy : dy + SIDE, dx : dx + SIDE] = 130
        y = int(self.np_random.integers(SIZE - SIDE + 1))
        image[0, y : y + SIDE, self.x : self.x + SIDE] = 255
        return image, {"x": self.x, "x_cm": self.x + 0.5}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._observe()

    def step(self, action):
        reward = float(int(action) == int(self.x >= (SIZE - SIDE) // 2))
        self.t += 1
        obs, info = self._observe()
        return obs, reward, False, self.t >= 50, info


gym.register("auxrl_test/Square-v0", entry_point=SquareEnv)

SQUARE_RUN = [
    "env.id=auxrl_test/Square-v0",
    "model.torso=nature_cnn",
    "perf.threads=1",
    "env.num_envs=4",
    "ppo.num_steps=64",
    "ppo.num_minibatches=4",
    "ppo.update_epochs=4",
    "ppo.lr=1e-3",
    "ppo.total_steps=4096",
    "aux.batch_size=64",
]


@pytest.mark.slow
def test_a_torso_trained_with_state_prediction_holds_what_a_probe_reads(tmp_path):
    import auxrl
    from auxrl.probe import probe

    trained, ppo_only = tmp_path / "state_prediction", tmp_path / "ppo"
    # Config only: the label, and the task (default settings, balance included).
    auxrl.train(
        "cartpole",
        [*SQUARE_RUN, "env.labels=[info:x]", "aux.tasks={state_prediction: {}}"],
        trained,
        device="cpu",
        verbose=False,
    )
    auxrl.train("cartpole", SQUARE_RUN, ppo_only, device="cpu", verbose=False)
    r2 = {}
    for name, run in (("trained", trained), ("ppo", ppo_only)):
        variable = probe(run, frames=1500, labels=["info:x_cm"], num_envs=4, device="cpu").variables["x_cm"]
        assert variable["task"] == "regression"
        r2[name], r2["random"] = variable["r2"], variable["random_r2"]  # same seed: same random torso
    # Held-out R^2 of a linear probe of x on the frozen features (seed 1, this machine: trained
    # 0.96, PPO alone 0.80, random torso of the same architecture 0.34).
    assert r2["trained"] > 0.9 and r2["trained"] > r2["random"] + 0.4, r2
    assert r2["trained"] > r2["ppo"] + 0.05, r2


@pytest.mark.slow
def test_breakout_ram_labels_train_checkpoint_and_resume(tmp_path, capsys):
    run = tmp_path / "breakout"
    common = ["--run-dir", str(run), "--device", "cpu", "--no-progress"]
    overrides = [
        "env.labels=[ram, info:lives]",
        "aux.tasks={state_prediction: {}}",
        "env.num_envs=2",
        "ppo.num_steps=64",
        "ppo.num_minibatches=2",
        "ppo.update_epochs=1",
        "aux.batch_size=16",
        "ppo.total_steps=256",
        "log.checkpoint_every=128",
        "perf.compile=false",
    ]
    assert main(["train", "breakout", *overrides, *common]) == 0
    saved = checkpoint.load(run)
    head = {
        k.removeprefix("heads.state_prediction."): v
        for k, v in saved["model"].items()
        if "state_prediction" in k
    }
    # 35 AtariARI variables of Breakout (256 classes each) and the lives (regressed).
    assert head["classify.weight"].shape == (35 * 256, 512) and head["regress.weight"].shape == (1, 512)
    assert head["count"].item() == 2 * 2 * 16 and 1 <= head["mean"].item() <= 5  # lives
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run), size_guidance={"scalars": 0})
    acc.Reload()
    accuracy = [e.value for e in acc.Scalars("aux/state_prediction/accuracy")]
    assert len(accuracy) == 2 and all(0 <= a <= 1 for a in accuracy)
    assert all(np.isfinite(e.value) for e in acc.Scalars("aux/state_prediction/loss"))
    # Resumed: the running statistics continue from the checkpoint's.
    capsys.readouterr()
    assert (
        main(["train", "--resume", str(run), "ppo.total_steps=384", "--device", "cpu", "--no-progress"]) == 0
    )
    resumed = checkpoint.load(run)["model"]
    assert resumed["heads.state_prediction.count"].item() == 3 * 2 * 16
