"""Rollout storage and the collector: numpy and tensor writes land in the same tensors."""
import gymnasium as gym
import numpy as np
import torch

from rlhf.config import PolicyConfig
from rlhf.policies import ActorCritic
from rlhf.rollout import Collector, Rollout, make_rollout, score_rollout


def small_rollout(capacity=2, num_envs=3):
    return Rollout(num_envs, (4,), torch.float32, (), torch.int64, capacity)


def step(i, num_envs=3):
    return dict(obs=np.full((num_envs, 4), i, dtype=np.float64), actions=torch.full((num_envs,), i),
                logp=torch.full((num_envs,), -0.5 * i), values=torch.full((num_envs,), float(i)),
                rewards=np.full(num_envs, i + 0.25), terminations=np.array([i % 2 == 0] * num_envs),
                dones=np.array([True, False, i % 2 == 0]), valid=np.array([True, i > 0, True]))


def test_add_accepts_numpy_and_tensors_and_grows():
    r = small_rollout(capacity=2)
    for i in range(5):  # past capacity twice: storage doubles and the numpy views follow it
        r.add(**step(i))
    assert r.t == 5 and r.capacity == 8
    assert r.obs.dtype == torch.float32 and r.actions.dtype == torch.int64 and r.valid.dtype == torch.bool
    for i in range(5):
        assert torch.equal(r.obs[i], torch.full((3, 4), float(i)))
        assert torch.equal(r.actions[i], torch.full((3,), i))
        assert torch.equal(r.rewards[i], torch.full((3,), i + 0.25))
        assert torch.equal(r.valid[i], torch.tensor([True, i > 0, True]))
    r.data["logp"][:2] = 7.0  # tensor edits (scoring after collection) are seen by later reads
    assert torch.equal(r.logp[:2], torch.full((2, 3), 7.0))


def test_add_under_inference_mode_and_growth_gives_normal_tensors():
    r = small_rollout(capacity=1)
    with torch.inference_mode():
        for i in range(3):
            r.add(**step(i))
    assert not any(v.is_inference() for v in r.data.values())
    r.data["values"][: r.t] = 1.0
    assert torch.equal(r.values, torch.ones(3, 3))


def test_collect_stores_what_the_env_saw_and_scoring_matches_evaluate_actions():
    envs = gym.make_vec("CartPole-v1", num_envs=4, vectorization_mode="vector_entry_point")
    torch.manual_seed(0)
    policy = ActorCritic(envs.single_observation_space, envs.single_action_space, PolicyConfig())
    collector = Collector(envs, torch.device("cpu"))
    collector.reset(seed=0)
    first_obs = collector.obs.copy()
    rollout = make_rollout(envs, 16)  # grows past its capacity while collecting
    last_obs = collector.collect(policy, rollout, n_steps=64)
    assert rollout.t == 64 and last_obs.shape == (4, 4)
    assert torch.equal(rollout.obs[0], torch.as_tensor(first_obs))
    assert set(rollout.actions.unique().tolist()) <= {0, 1}
    # the step after a done is the autoreset step: not valid, reward 0
    after_done = torch.cat([torch.zeros(1, 4, dtype=torch.bool), rollout.dones[:-1]])
    assert torch.equal(rollout.valid, ~after_done)
    assert (rollout.rewards[~rollout.valid] == 0).all() and (rollout.rewards[rollout.valid] == 1).all()
    with torch.no_grad():
        last_value = score_rollout(policy, rollout, last_obs, torch.device("cpu"))
        logp, _, values = policy.evaluate_actions(rollout.obs.reshape(-1, 4), rollout.actions.reshape(-1))
        assert torch.allclose(last_value, policy(last_obs)[1], atol=1e-6)  # a different batch: rounding only
    assert torch.equal(logp, rollout.logp.reshape(-1)) and torch.equal(values, rollout.values.reshape(-1))
    batch = rollout.batch(last_value, 0.99, 0.95)
    assert len(batch) == int(rollout.valid.sum())
    envs.close()


def test_scoring_in_chunks_equals_one_pass(monkeypatch):
    import rlhf.rollout

    envs = gym.make_vec("CartPole-v1", num_envs=4, vectorization_mode="vector_entry_point")
    torch.manual_seed(0)
    policy = ActorCritic(envs.single_observation_space, envs.single_action_space, PolicyConfig())
    collector = Collector(envs, torch.device("cpu"))
    collector.reset(seed=0)
    rollout = make_rollout(envs, 40)
    last_obs = collector.collect(policy, rollout, n_steps=40)
    with torch.no_grad():
        one = score_rollout(policy, rollout, last_obs, torch.device("cpu")), rollout.logp.clone(), rollout.values.clone()
        monkeypatch.setattr(rlhf.rollout, "SCORE_CHUNK", 7)
        chunked = score_rollout(policy, rollout, last_obs, torch.device("cpu")), rollout.logp, rollout.values
    for a, b in zip(one, chunked):
        assert torch.allclose(a, b, atol=1e-6)
    envs.close()


def test_collect_counts_whole_episodes():
    envs = gym.make_vec("CartPole-v1", num_envs=1, vectorization_mode="vector_entry_point")
    torch.manual_seed(0)
    policy = ActorCritic(envs.single_observation_space, envs.single_action_space, PolicyConfig())
    collector = Collector(envs, torch.device("cpu"), stats_window=3)
    collector.reset(seed=0)
    rollout = make_rollout(envs, 8)
    for _ in range(5):
        collector.collect(policy, rollout, episodes=1)
        assert rollout.dones[-1].item()  # each call ends on the step that finished its episode
    assert collector.stats.total == 5 and len(collector.stats.returns) == 3
    assert list(collector.stats.returns) == [float(n) for n in collector.stats.lengths]  # CartPole: +1 per step
    envs.close()


def test_episode_mode_growth_is_bounded(monkeypatch):
    import pytest

    import rlhf.rollout
    from rlhf.errors import ConfigError

    monkeypatch.setattr(rlhf.rollout, "MAX_ROWS", 12)
    r = small_rollout(capacity=2, num_envs=3)
    for i in range(4):  # capacity 2 -> 4 (12 rows) is allowed
        r.add(**step(i))
    assert r.capacity == 4
    with pytest.raises(ConfigError, match=r"grow past 12 rows \(4 steps x 3 envs\) waiting for "
                                          r"ppo.episodes_between_updates"):
        r.add(**step(4))


def test_float64_and_float16_observations_train_and_evaluate(tmp_path):
    import bad_envs  # noqa: F401  (registers BadEnv-v0)
    from rlhf.config import load_config
    from rlhf.evaluate import run_episodes
    from rlhf.trainer import Trainer

    for dtype in ("float64", "float16"):
        cfg = load_config(data={
            "env": {"id": "bad_envs:BadEnv-v0", "num_envs": 2, "kwargs": {"dtype": dtype}},
            "ppo": {"n_steps": 16, "batch_size": 16, "epochs": 1}, "total_timesteps": 64,
            "logging": {"progress_bar": False, "tensorboard": False}})
        trainer = Trainer(cfg, tmp_path / dtype)
        trainer.train()
        trainer.close()
        assert trainer.global_step == 64
        assert run_episodes(trainer.policy, cfg, 1)["mean_length"] == 10
