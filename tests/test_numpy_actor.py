"""rlhf.numpy_actor: the numpy twin of a tanh-MLP policy that steps the envs."""
from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from rlhf.config import PolicyConfig
from rlhf.numpy_actor import NumpyActor
from rlhf.optim import make_optimizer
from rlhf.policies import ActorCritic

OBS = gym.spaces.Box(-2.0, 2.0, (3, 2), np.float32)  # not flat: the actor flattens as the policy does
DISCRETE, BOX = gym.spaces.Discrete(4), gym.spaces.Box(-0.5, 0.5, (2,), np.float32)


def policy(action_space=DISCRETE, **cfg) -> ActorCritic:
    torch.manual_seed(0)
    return ActorCritic(OBS, action_space, PolicyConfig(**{"ortho_init": False, **cfg}))


def observations(n=64, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-2, 2, (n, 3, 2)).astype(np.float32)


def test_deterministic_actions_are_the_policy_s():
    pi, obs = policy(), observations()
    actor = NumpyActor(pi, seed=0)
    np.testing.assert_array_equal(actor.sample_actions(obs, deterministic=True),
                                  pi.sample_actions(torch.from_numpy(obs), deterministic=True).numpy())
    box = policy(BOX, log_std_init=-1.0)
    mean = NumpyActor(box, seed=0).sample_actions(obs, deterministic=True)
    np.testing.assert_allclose(mean, box.sample_actions(torch.from_numpy(obs), deterministic=True).numpy(), atol=1e-6)


def test_samples_follow_the_policy_s_distribution():
    pi = policy(hidden_sizes=[8])
    obs = np.repeat(observations(1), 40_000, axis=0)
    with torch.no_grad():
        probs = torch.softmax(pi(torch.from_numpy(obs[:1]))[0], -1)[0].numpy()
    counts = np.bincount(NumpyActor(pi, seed=1).sample_actions(obs), minlength=4) / len(obs)
    np.testing.assert_allclose(counts, probs, atol=0.01)
    box = policy(BOX, log_std_init=-1.0)
    with torch.no_grad():
        mean = box(torch.from_numpy(obs[:1]))[0][0].numpy()
    samples = NumpyActor(box, seed=1).sample_actions(obs)
    np.testing.assert_allclose(samples.mean(0), mean, atol=0.01)
    np.testing.assert_allclose(samples.std(0), np.exp(-1.0), rtol=0.02)
    assert np.abs(NumpyActor(box, seed=1).env_actions(samples)).max() <= 0.5  # clipped for the env only


def test_the_actor_acts_with_the_weights_the_optimizer_just_wrote():
    pi, obs = policy(), observations()
    actor = NumpyActor(pi, seed=0)
    optimizer = make_optimizer(pi, lr=0.5)  # FlatAdam moves the parameters into one buffer: views must follow
    actor = actor.refresh(pi)
    logits, value = pi(torch.from_numpy(obs))
    (logits.logsumexp(-1).mean() - logits[:, 0].mean() + value.mean()).backward()
    optimizer.step()
    np.testing.assert_array_equal(actor.sample_actions(obs, deterministic=True),
                                  pi.sample_actions(torch.from_numpy(obs), deterministic=True).numpy())


def test_a_restored_generator_draws_the_same_samples():
    pi, obs = policy(), observations()
    actor = NumpyActor(pi, seed=3)
    state = actor.state_dict()
    first = actor.sample_actions(obs)
    other = NumpyActor(pi, seed=4)
    other.load_state_dict(state)
    np.testing.assert_array_equal(other.sample_actions(obs), first)


@pytest.mark.parametrize("cfg, reason", [
    ({"shared": True}, "shared trunk"),
    ({"normalize_obs": True}, "observation normalisation"),
    ({"fused": "off"}, "policy.fused is off"),
    ({"activation": "relu"}, "policy.fused is off"),
])
def test_policies_it_does_not_fit_act_themselves(cfg, reason):
    pi = policy(**cfg)
    assert reason in NumpyActor.why_not(pi)
    assert NumpyActor(policy(), seed=0).refresh(pi) is pi
    assert NumpyActor.why_not(policy().to(torch.float64)) is not None


def test_a_trainer_acting_in_numpy_gives_numpy_s_blas_the_run_s_torch_threads(tmp_path):
    from threadpoolctl import threadpool_info, threadpool_limits

    from rlhf.config import load_config
    from rlhf.trainer import Trainer

    with threadpool_limits(limits=2, user_api="blas"):
        trainer = Trainer(load_config(data={"env": {"id": "CartPole-v1", "num_envs": 2}, "torch_threads": 1,
                                            "logging": {"progress_bar": False, "tensorboard": False}}), tmp_path)
        assert isinstance(trainer.actor, NumpyActor)
        assert all(pool["num_threads"] == 1 for pool in threadpool_info() if pool["user_api"] == "blas")
        trainer.close()
