"""Episode-boundary handling on real vector envs (gymnasium and ale-py's AtariVectorEnv)."""

import numpy as np
import pytest
import torch

from auxrl.collect import collect_rollout
from auxrl.config import EnvConfig, PPOConfig
from auxrl.envs import make_envs
from auxrl.models.agent import build_agent
from auxrl.ppo.rollout import RolloutStorage


def test_gym_truncation_reset_step_and_final_obs():
    # CartPole with a 5-step time limit and a no-op-ish policy: every episode is truncated
    # at step 5 unless the pole falls first.
    cfg = EnvConfig(id="CartPole-v1", num_envs=2, kwargs={"max_episode_steps": 5})
    with make_envs(cfg) as envs:
        obs = envs.reset(seed=0)
        steps = [envs.step(np.array([0, 1]) if t % 2 else np.array([1, 0])) for t in range(13)]
    trunc = np.array([s.truncated for s in steps])
    reset = np.array([s.reset for s in steps])
    # Truncated at the 5th step of each episode; the step after only resets (NEXT_STEP).
    assert trunc[4].all() and trunc[10].all()
    assert reset[5].all() and reset[11].all()
    assert not reset[[0, 1, 2, 3, 4, 6, 7, 8, 9, 10]].any()
    # The reset step reports the finished episode: 5 steps, return 5 (CartPole pays 1 a step).
    assert np.allclose(steps[5].episode_returns, [5, 5]) and list(steps[5].episode_lengths) == [5, 5]
    # The observation returned with the truncation is the episode's final one, not a reset.
    assert not np.allclose(steps[4].obs, steps[5].obs)
    assert obs.shape == (2, 4)


def test_reset_steps_are_masked_and_truncation_bootstraps_in_a_real_rollout():
    cfg = EnvConfig(id="CartPole-v1", num_envs=3, kwargs={"max_episode_steps": 7})
    torch.manual_seed(0)
    with make_envs(cfg) as envs:
        agent = build_agent("mlp", [16], envs.single_observation_space, envs.single_action_space)
        storage = RolloutStorage(32, 3, (4,), torch.float32, (), torch.long, torch.device("cpu"))
        storage.next_obs.copy_(torch.as_tensor(envs.reset(seed=1)))
        collect_rollout(envs, agent, storage, lambda *args: None)
    with torch.no_grad():
        next_value = agent.value(agent.torso(storage.next_obs))
    storage.finish(next_value, PPOConfig().gamma, PPOConfig().gae_lambda)
    done = storage.terminated | storage.truncated
    # Every step right after a done is a reset step, and only those are invalid.
    after_done = torch.zeros_like(done)
    after_done[1:] = done[:-1]
    assert after_done.any()
    assert torch.equal(~storage.valid[1:], after_done[1:])
    # Nothing is learned from reset steps.
    assert torch.all(storage.advantages[~storage.valid] == 0)
    assert torch.all(storage.returns[~storage.valid] == 0)
    # A truncated step's advantage bootstraps from V(final obs) = the next stored value.
    t, e = [int(i) for i in torch.nonzero(storage.truncated[:-1] & ~storage.terminated[:-1])[0]]
    delta = storage.rewards[t, e] + PPOConfig().gamma * storage.values[t + 1, e] - storage.values[t, e]
    assert torch.isclose(storage.advantages[t, e], delta, atol=1e-5)
    # Slot t+1 holds that episode's final obs (a reset step, masked); t+2 holds the new episode.
    assert not storage.valid[t + 1, e]
    if t + 2 < storage.num_steps:
        assert not torch.allclose(storage.obs[t + 1, e], storage.obs[t + 2, e])


def _play_atari(episodic_life: bool, reward_clip: bool, steps: int = 1500, num_envs: int = 2):
    cfg = EnvConfig(
        id="ALE/Breakout-v5", num_envs=num_envs, episodic_life=episodic_life, reward_clip=reward_clip
    )
    rng = np.random.default_rng(0)
    out = []
    with make_envs(cfg) as envs:
        envs.reset(seed=3)
        for _ in range(steps):
            out.append(envs.step(rng.integers(0, 4, size=num_envs)))
    return out


def test_atari_episodic_life_terminates_on_life_loss_without_reset():
    steps = _play_atari(episodic_life=True, reward_clip=True)
    terminated = np.array([s.terminated for s in steps])
    masked = np.array([s.reset for s in steps])
    games = sum(len(s.episode_returns) for s in steps)
    # Five lives a game: many more life-loss terminations than finished games.
    assert terminated.sum() >= 4 * games > 0
    # Every termination is followed by at least one masked step (the game's reset, or the
    # FIRE / no-op steps after a lost life), and the game goes on after a lost life.
    assert masked[1:][terminated[:-1]].all()
    assert masked.sum() > 2 * terminated.sum()
    # Training rewards are clipped.
    assert set(np.unique(np.concatenate([s.reward for s in steps]))) <= {-1.0, 0.0, 1.0}


@pytest.mark.slow
def test_atari_episode_stats_are_unclipped_whole_games():
    # The same seed and actions with and without reward clipping: the reported game scores are
    # identical (whole games over all lives, raw score).
    a = _play_atari(episodic_life=True, reward_clip=True)
    b = _play_atari(episodic_life=True, reward_clip=False)
    returns_a = np.concatenate([s.episode_returns for s in a])
    returns_b = np.concatenate([s.episode_returns for s in b])
    assert len(returns_a) >= 1
    assert np.array_equal(returns_a, returns_b)
    # And the score is the sum of the raw rewards of the game's real transitions.
    one = _play_atari(episodic_life=True, reward_clip=False, num_envs=1)
    end = next(i for i, s in enumerate(one) if len(s.episode_returns))
    raw = sum(s.reward[0] for s in one[:end] if not s.reset[0])
    assert raw == one[end].episode_returns[0] > 0


def _ale(num_envs: int):
    """ale-py's AtariVectorEnv with the settings auxrl's Atari env gives it (EnvConfig defaults)."""
    from ale_py.vector_env import AtariVectorEnv

    return AtariVectorEnv(
        "breakout",
        num_envs,
        num_threads=1,
        episodic_life=False,
        life_loss_info=True,
        reward_clipping=False,
        autoreset_mode="NextStep",
    )


def test_atari_first_frame_fills_the_stack_like_envpool():
    # Random play through game overs; the same seed and actions on ale-py itself.
    rng = np.random.default_rng(1)
    ale = _ale(2)
    raw, _ = ale.reset(seed=7)
    with make_envs(EnvConfig(id="ALE/Breakout-v5", num_envs=2, episodic_life=False)) as envs:
        obs = envs.reset(seed=7)
        raw_steps, steps = [raw], [obs]
        for _ in range(1200):
            action = rng.integers(0, 4, size=2)
            raw_steps.append(ale.step(action)[0])
            steps.append(envs.step(action))
    ale.close()
    assert (raw[:, :3] == 0).all()  # ale-py: 3 of 4 frames of a first observation are black
    age = np.zeros(2, dtype=int)
    resets = 0
    for t, (raw, step) in enumerate(zip(raw_steps, steps, strict=True)):
        obs = step if t == 0 else step.obs
        if t > 0:
            age = np.where(step.reset, 0, age + 1)
            resets += int(step.reset.sum())
        for e in range(2):
            first = 3 - min(age[e], 3)  # the slot of the game's first frame
            # The real frames are ale-py's; the slots before the first frame repeat it.
            assert np.array_equal(obs[e, first:], raw[e, first:])
            assert all(np.array_equal(obs[e, k], raw[e, first]) for k in range(first))
            assert (raw[e, :first] == 0).all()  # where ale-py has black frames
    assert resets >= 2  # game overs were covered, not only the first reset


def test_atari_fire_and_noops_after_a_lost_life_like_envpool():
    # An agent that only ever sends NOOP: Breakout's ball is served by FIRE.
    noop = np.zeros(1, dtype=np.int64)
    with make_envs(EnvConfig(id="ALE/Breakout-v5", num_envs=1)) as envs:
        envs.reset(seed=4)
        steps = []
        while not any(len(s.episode_returns) for s in steps[-1:]) and len(steps) < 3000:
            steps.append(envs.step(noop))
    terminated = np.array([s.terminated[0] for s in steps])
    masked = np.array([s.reset[0] for s in steps])
    # The ball is served again after every lost life: the game ends (5 lives) within a few
    # hundred steps, although the agent never fires.
    assert len(steps[-1].episode_returns) == 1 and terminated.sum() == 5
    # Masked steps come in runs, each right after a termination: 4 lost lives, then the game over.
    starts = np.flatnonzero(masked & ~np.r_[False, masked[:-1]])
    assert np.array_equal(starts - 1, np.flatnonzero(terminated))
    # After a lost life: 1-8 forced steps (0..29 no-op frames in whole steps of 4, then FIRE),
    # of varying length (random no-ops).
    ends = np.flatnonzero(masked & ~np.r_[masked[1:], False])
    runs = list(ends[:4] - starts[:4] + 1)
    assert all(1 <= n <= 8 for n in runs) and len(set(runs)) > 1
    # Against ale-py directly: the same game with the forced actions spelled out (NOOP, and
    # FIRE on the last step of each forced run) gives the same frames, lives and rewards.
    actions = np.zeros(len(steps), dtype=np.int64)
    last_forced = masked & ~np.r_[masked[1:], False]
    actions[last_forced[:-1].nonzero()[0]] = 1
    ale = _ale(1)
    ale.reset(seed=4)
    for t, step in enumerate(steps[:-1]):
        obs, reward, terminated_raw, _, _ = ale.step(actions[t : t + 1])
        assert np.array_equal(obs[0, -1], step.obs[0, -1]), t
        assert terminated_raw[0] == step.terminated[0]
        assert step.reward[0] == (0 if masked[t] else np.sign(reward[0]))
    # Without the FIRE, ale-py never serves again: one lost life, then nothing for as long.
    ale.reset(seed=4)
    lives = [ale.step(noop)[4]["lives"][0] for _ in range(len(steps))]
    ale.close()
    assert min(lives) == 4


def test_unknown_atari_game_error_is_helpful():
    with pytest.raises(ValueError, match="ALE/Breakout-v5"):
        make_envs(EnvConfig(id="ALE/NotAGame-v5", num_envs=1))


@pytest.mark.slow
def test_grouped_atari_rollout_matches_env_semantics():
    # Two groups stepped in turn fill the same [steps, envs] layout as one synchronous env.
    cfg = EnvConfig(id="ALE/Breakout-v5", num_envs=4, groups=2)
    torch.manual_seed(0)
    with make_envs(cfg) as envs:
        assert [sl for sl, _ in envs.groups] == [slice(0, 2), slice(2, 4)]
        agent = build_agent("nature_cnn", [], envs.single_observation_space, envs.single_action_space)
        storage = RolloutStorage(64, 4, (4, 84, 84), torch.uint8, (), torch.long, torch.device("cpu"))
        storage.next_obs.copy_(torch.as_tensor(envs.reset(seed=1)))
        first = storage.next_obs.clone()
        collect_rollout(envs, agent, storage, lambda *args: None)
    assert torch.equal(storage.obs[0], first)
    # Consecutive stored observations of one env are consecutive frames: the newest frame of
    # obs[t] is the second newest of obs[t+1] (frame stacking), for every env and step that is
    # not a reset or a life-loss boundary.
    same = storage.obs[1:, :, -2] == storage.obs[:-1, :, -1]
    ok = same.flatten(2).all(-1) | ~storage.valid[:-1] | storage.terminated[:-1]
    assert ok.all()
    # And the observation after the last step continues the last stored one.
    assert torch.equal(storage.next_obs[:, -2], storage.obs[-1, :, -1]) or not storage.valid[-1].all()


def test_groups_need_atari_and_divide_num_envs():
    with pytest.raises(ValueError, match="needs an Atari id"):
        make_envs(EnvConfig(id="CartPole-v1", num_envs=4, groups=2))
