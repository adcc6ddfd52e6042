"""The PPO update and the flat-buffer Adam it runs on: shortcuts must not change the result."""
import copy

import gymnasium as gym
import numpy as np
import pytest
import torch

from rlhf.config import PolicyConfig, PPOConfig
from rlhf.optim import FlatAdam, make_optimizer
from rlhf.policies import ActorCritic
from rlhf.ppo.update import ppo_update
from rlhf.precision import Precision
from rlhf.testing import synthetic_batch

BOX = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
STAT_KEYS = {"train/policy_gradient_loss", "train/value_loss", "train/entropy_loss", "train/approx_kl",
             "train/clip_fraction", "train/loss", "train/explained_variance", "train/grad_norm",
             "train/n_updates", "train/clip_range", "train/early_stop"}


def make_policy(seed=0, **cfg):
    torch.manual_seed(seed)
    return ActorCritic(BOX, gym.spaces.Discrete(3), PolicyConfig(**cfg))


def test_flat_adam_parameters_are_views_and_state_dict_is_unchanged():
    policy = make_policy()
    keys = list(policy.state_dict())
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    opt = make_optimizer(policy, 1e-3)
    assert isinstance(opt, FlatAdam)
    assert list(policy.state_dict()) == keys
    assert all(torch.equal(v, before[k]) for k, v in policy.state_dict().items())
    flat_ptr = opt.flat.data_ptr()
    for p in policy.parameters():
        assert p.untyped_storage().data_ptr() == flat_ptr
        assert p.grad.untyped_storage().data_ptr() == opt.flat.grad.data_ptr()


@pytest.mark.parametrize("max_grad_norm", [0.01, 100.0, None])
def test_flat_adam_steps_like_adam_with_clip_grad_norm(max_grad_norm):
    ref_policy = make_policy()
    policy = copy.deepcopy(ref_policy)
    ref_opt = torch.optim.Adam(ref_policy.parameters(), lr=1e-2, eps=1e-5)
    opt = make_optimizer(policy, 1e-2)
    obs = torch.randn(32, 4)
    for step in range(3):
        for p, o in ((ref_policy, ref_opt), (policy, opt)):
            o.zero_grad()
            out, v = p(obs)
            (out.pow(2).mean() + (v - 1).pow(2).mean()).backward()
        if max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(ref_policy.parameters(), max_grad_norm)
        ref_opt.step()
        if step % 2:  # the generic zero_grad / clip / step sequence works too
            if max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(policy.parameters(), max_grad_norm)
            opt.step()
        else:
            opt.clip_and_step(max_grad_norm)
        for (name, a), b in zip(ref_policy.named_parameters(), policy.parameters()):
            assert torch.allclose(a, b, atol=1e-6), (step, name)


def test_flat_adam_zero_grad_survives_module_zero_grad():
    policy = make_policy()
    opt = make_optimizer(policy, 1e-3)
    policy.zero_grad(set_to_none=True)  # cuts the views; the optimizer must re-link them
    opt.zero_grad()
    out, v = policy(torch.randn(8, 4))
    (out.sum() + v.sum()).backward()
    assert opt.flat.grad.abs().sum() > 0
    assert all(p.grad.untyped_storage().data_ptr() == opt.flat.grad.data_ptr() for p in policy.parameters())


def test_flat_adam_state_dict_round_trip_and_plain_adam_checkpoint():
    policy = make_policy()
    opt = make_optimizer(policy, 1e-3)
    out, v = policy(torch.randn(8, 4))
    (out.sum() + v.sum()).backward()
    opt.clip_and_step(0.5)
    state = copy.deepcopy(opt.state_dict())
    other = make_optimizer(make_policy(), 1e-3)
    other.load_state_dict(state)
    assert torch.equal(other.state[other.flat]["exp_avg"], opt.state[opt.flat]["exp_avg"])
    assert float(other.state[other.flat]["step"]) == 1.0

    plain_policy = make_policy()  # a checkpoint written by torch.optim.Adam over the same parameters
    plain = torch.optim.Adam(plain_policy.parameters(), lr=1e-3, eps=1e-5)
    out, v = plain_policy(torch.randn(8, 4))
    (out.sum() + v.sum()).backward()
    plain.step()
    flat = make_optimizer(make_policy(), 1e-3)
    flat.load_state_dict(plain.state_dict())
    expected = torch.cat([plain.state[p]["exp_avg"].reshape(-1) for p in plain_policy.parameters()])
    assert torch.equal(flat.state[flat.flat]["exp_avg"], expected)


@pytest.mark.parametrize("batch_size", [64, 48])  # one whole-batch minibatch; shuffled minibatches with a tail
def test_fast_path_matches_generic_path(batch_size):
    """FlatAdam's clip_and_step (fp32 fast path) vs plain Adam through Precision.step: same update."""
    policy = make_policy()
    batch = synthetic_batch(policy, n=64, seed=0)
    ref_policy = copy.deepcopy(policy)
    cfg = PPOConfig(batch_size=batch_size, epochs=3, max_grad_norm=0.5)
    torch.manual_seed(1)
    stats = ppo_update(policy, make_optimizer(policy, 1e-3), batch, cfg, Precision("fp32"), 0.2)
    torch.manual_seed(1)
    ref_opt = torch.optim.Adam(ref_policy.parameters(), lr=1e-3, eps=1e-5)
    ref = ppo_update(ref_policy, ref_opt, batch, cfg, Precision("fp32"), 0.2)
    assert set(stats) == set(ref) == STAT_KEYS
    for key in STAT_KEYS:
        assert stats[key] == pytest.approx(ref[key], rel=1e-4, abs=1e-6), key
    for (name, a), b in zip(policy.named_parameters(), ref_policy.parameters()):
        assert torch.allclose(a, b, atol=1e-5), name


def test_whole_batch_statistics_match_per_minibatch_ones():
    """approx_kl / clip_fraction averaged once after the loop equal the per-step average (target_kl path)."""
    policy = make_policy()
    batch = synthetic_batch(policy, n=64, seed=0)
    ref_policy = copy.deepcopy(policy)
    cfg = PPOConfig(batch_size=64, epochs=4)
    stats = ppo_update(policy, make_optimizer(policy, 3e-3), batch, cfg, Precision("fp32"), 0.1)
    ref = ppo_update(ref_policy, make_optimizer(ref_policy, 3e-3), batch, cfg.model_copy(update={"target_kl": 1e9}),
                     Precision("fp32"), 0.1)
    assert stats["train/clip_fraction"] > 0
    for key in ("train/approx_kl", "train/clip_fraction"):
        assert stats[key] == pytest.approx(ref[key], rel=1e-5), key


def test_entropy_coefficient_still_matters():
    policy = make_policy()
    batch = synthetic_batch(policy, n=64, seed=0)
    twin = copy.deepcopy(policy)
    ppo_update(policy, make_optimizer(policy, 1e-3), batch, PPOConfig(batch_size=64, epochs=2), Precision("fp32"), 0.2)
    ppo_update(twin, make_optimizer(twin, 1e-3), batch, PPOConfig(batch_size=64, epochs=2, entropy_coef=0.5),
               Precision("fp32"), 0.2)
    assert not torch.allclose(policy.pi_head.weight, twin.pi_head.weight)


def test_target_kl_stops_early():
    policy = make_policy()
    batch = synthetic_batch(policy, n=64, seed=0)
    stats = ppo_update(policy, make_optimizer(policy, 0.1), batch, PPOConfig(batch_size=64, epochs=20, target_kl=1e-4),
                       Precision("fp32"), 0.2)
    assert stats["train/early_stop"] == 1.0 and stats["train/n_updates"] < 20


def test_flat_adam_public_step_fallback_matches_kernel_path():
    """If the private fused kernel is unavailable (another torch), ``clip_and_step`` uses ``step()``: same result."""
    import copy

    import gymnasium as gym

    from rlhf.optim import make_optimizer
    from rlhf.policies import ActorCritic
    from rlhf.testing import synthetic_batch

    env = gym.make("CartPole-v1")
    torch.manual_seed(0)
    p1 = ActorCritic(env.observation_space, env.action_space)
    p2 = copy.deepcopy(p1)
    o1, o2 = make_optimizer(p1, 1e-3), make_optimizer(p2, 1e-3)
    o2._kernel_ok = False
    batch = synthetic_batch(p1, 64)
    for policy, opt in ((p1, o1), (p2, o2)):
        for _ in range(3):
            opt.zero_grad()
            out, value = policy(batch.obs)
            (out.sum() + value.sum()).backward()
            opt.clip_and_step(0.5)
    for a, b in zip(p1.parameters(), p2.parameters()):
        assert torch.equal(a.detach(), b.detach())
