"""Actor-critic networks, distributions and the rlhf.testing helpers on them."""
import gymnasium as gym
import numpy as np
import pytest
import torch

from rlhf.config import PolicyConfig, PPOConfig
from rlhf.errors import ConfigError
from rlhf.normalize import RunningMeanStd
from rlhf.policies import ActorCritic, categorical_logp_entropy, gaussian_logp_entropy
from rlhf.testing import (
    assert_finite_update,
    assert_moves_toward_positive_advantage,
    assert_ratio_starts_at_one,
    assert_update_changes_parameters,
    synthetic_batch,
)

BOX = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
IMAGE = gym.spaces.Box(0, 255, (1, 48, 64), np.uint8)
SPACES = {
    "discrete": (BOX, gym.spaces.Discrete(3), PolicyConfig()),
    "continuous": (BOX, gym.spaces.Box(-2.0, 2.0, (2,), np.float32), PolicyConfig(shared=True, normalize_obs=True)),
    "cnn": (IMAGE, gym.spaces.Discrete(5), PolicyConfig(cnn_features=64)),
}


@pytest.fixture(params=list(SPACES))
def policy(request):
    torch.manual_seed(0)
    obs, act, cfg = SPACES[request.param]
    return ActorCritic(obs, act, cfg)


def test_update_contract(policy):
    batch = synthetic_batch(policy, n=64, seed=0)
    assert_ratio_starts_at_one(policy, batch)
    assert_finite_update(policy, synthetic_batch(policy, n=64, seed=1))
    assert_update_changes_parameters(policy, synthetic_batch(policy, n=64, seed=2))


def test_moves_toward_positive_advantage(policy):
    assert_moves_toward_positive_advantage(policy, n=128, seed=0)


def test_distributions_match_torch():
    logits = torch.randn(5, 3)
    actions = torch.tensor([0, 1, 2, 1, 0])
    ref = torch.distributions.Categorical(logits=logits)
    logp, ent = categorical_logp_entropy(logits, actions)
    assert torch.allclose(logp, ref.log_prob(actions)) and torch.allclose(ent, ref.entropy())
    mean, log_std, a = torch.randn(5, 2), torch.tensor([0.1, -0.3]), torch.randn(5, 2)
    ref = torch.distributions.Normal(mean, log_std.exp())
    logp, ent = gaussian_logp_entropy(mean, log_std, a)
    assert torch.allclose(logp, ref.log_prob(a).sum(-1), atol=1e-6)
    assert torch.allclose(ent, ref.entropy().sum(-1), atol=1e-6)


def test_box_actions_clipped_for_env_only():
    torch.manual_seed(0)
    p = ActorCritic(BOX, gym.spaces.Box(-0.1, 0.1, (2,), np.float32), PolicyConfig(log_std_init=1.0))
    actions = p.sample_actions(torch.zeros(100, 4))
    assert actions.abs().max() > 0.1  # stored sample is unclipped
    assert np.abs(p.env_actions(actions)).max() <= 0.1 + 1e-7


def test_running_mean_std_matches_numpy():
    rms = RunningMeanStd((3,))
    data = np.random.default_rng(0).normal(2.0, 3.0, size=(1000, 3))
    for chunk in np.split(data, 10):
        rms.update(torch.as_tensor(chunk))
    assert np.allclose(rms.mean.numpy(), data.mean(0), atol=1e-3)
    assert np.allclose(rms.var.numpy(), data.var(0), rtol=1e-3)


def test_kl_penalty_policy_loss_trains():
    torch.manual_seed(0)
    p = ActorCritic(BOX, gym.spaces.Discrete(3))
    stats = assert_finite_update(p, synthetic_batch(p, n=64), PPOConfig(policy_loss="kl_penalty", epochs=2))
    assert stats["train/n_updates"] == 2 and stats["train/approx_kl"] > 0


@pytest.mark.parametrize("mode", ["fp32", "bf16-mixed", "fp16-mixed"])
def test_ratio_is_one_in_every_training_mode(mode):
    from rlhf.precision import Precision

    torch.manual_seed(0)
    precision = Precision(mode, "cpu")
    for obs, act, cfg in (SPACES["discrete"], SPACES["continuous"]):
        p = ActorCritic(obs, act, cfg)
        batch = synthetic_batch(p, n=64, seed=3, precision=precision)
        assert_ratio_starts_at_one(p, batch, precision)
        assert_finite_update(p, synthetic_batch(p, n=64, seed=4, precision=precision), precision=precision)


# ----------------------------------------------------------------------------- fused tanh MLP path

FUSED_CASES = {
    "separate": (BOX, gym.spaces.Discrete(3), PolicyConfig()),
    "shared": (BOX, gym.spaces.Box(-2.0, 2.0, (2,), np.float32), PolicyConfig(shared=True)),
    "no_hidden": (BOX, gym.spaces.Discrete(2), PolicyConfig(hidden_sizes=[])),
    "deep": (gym.spaces.Box(-1.0, 1.0, (2, 3), np.float32), gym.spaces.Discrete(2),
             PolicyConfig(hidden_sizes=[16, 8, 4])),
}


@pytest.mark.parametrize("case", list(FUSED_CASES))
@pytest.mark.parametrize("batch", [8, 256])  # below and above the size where tanh switches formula
def test_fused_forward_and_gradients_match_layer_by_layer(case, batch):
    obs_space, act_space, cfg = FUSED_CASES[case]
    torch.manual_seed(0)
    policy = ActorCritic(obs_space, act_space, cfg)
    obs = torch.randn(batch, *obs_space.shape)
    results = []
    for fused in (True, False):
        policy.fused = fused
        assert (policy.fused_path(obs) is None) == fused
        policy.zero_grad(set_to_none=True)
        out, value = policy(obs)
        (out.pow(2).sum() + (value * torch.linspace(-1, 1, batch)).sum()).backward()
        grads = {k: p.grad.clone() for k, p in policy.named_parameters() if p.grad is not None}
        results.append((out.detach(), value.detach(), grads))
    (out_f, v_f, g_f), (out_m, v_m, g_m) = results
    assert torch.allclose(out_f, out_m, atol=1e-6) and torch.allclose(v_f, v_m, atol=1e-6)
    assert g_f.keys() == g_m.keys()
    for name in g_m:
        assert torch.allclose(g_f[name], g_m[name], atol=1e-5, rtol=1e-4), name


def test_fused_mlp_gradcheck_float64():
    from rlhf.fused_mlp import _TanhMLP

    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 3, dtype=torch.float64, generator=g).requires_grad_()  # 300 x 5 > tanh switch size
    shapes = [(5, 3), (5,), (2, 5), (2,), (5, 3), (5,), (4, 5), (4,), (1, 4), (1,)]  # two nets, depths 2 and 3
    params = [torch.randn(s, dtype=torch.float64, generator=g).requires_grad_() for s in shapes]
    for tanh_last in (False, True):
        assert torch.autograd.gradcheck(lambda x, *p: _TanhMLP.apply(x, tanh_last, (2, 3), *p), (x, *params))


def test_fused_path_is_skipped_where_it_does_not_apply():
    """Quantized / QAT / bf16 copies and autocast run layer by layer, and still match the fp32 policy."""
    from rlhf.precision import make_actor, prepare_qat, refresh_actor

    torch.manual_seed(0)
    policy = ActorCritic(BOX, gym.spaces.Discrete(3), PolicyConfig())
    obs = torch.randn(64, 4)
    ref_out, ref_v = policy(obs)
    for actor in (make_actor(policy, "bf16"), make_actor(policy, "int8"), prepare_qat(policy, "int8")):
        assert "layer" in actor.fused_path(obs)  # e.g. "Int8Linear layer": named, not silent
        out, v = actor(obs)
        assert torch.allclose(out, ref_out, atol=0.05) and torch.allclose(v, ref_v, atol=0.05)
        actions = actor.sample_actions(obs)
        logp, _, _ = actor.evaluate_actions(obs, actions)
        assert actions.shape == (64,) and torch.isfinite(logp).all()
    actor = make_actor(policy, "int8")
    with torch.no_grad():
        policy.pi_head.bias += 1.0
    refresh_actor(actor, policy)
    assert torch.allclose(actor(obs)[0], policy(obs)[0], atol=0.05)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert policy.fused_path(obs) == "autocast is on"
        out, _ = policy(obs)
    assert out.dtype == torch.float32
    hook = policy.pi_head.register_forward_hook(lambda *a: None)
    assert policy.fused_path(obs) == "forward hook on a layer"
    hook.remove()
    assert policy.fused_path(obs) is None


def test_fused_switch():
    assert ActorCritic(BOX, gym.spaces.Discrete(3), PolicyConfig(fused="off")).fused is False
    assert ActorCritic(BOX, gym.spaces.Discrete(3), PolicyConfig(activation="relu")).fused is False  # auto
    with pytest.raises(ConfigError, match="tanh MLPs only"):
        ActorCritic(BOX, gym.spaces.Discrete(3), PolicyConfig(activation="relu", fused="on"))
    with pytest.raises(ConfigError, match="CNN"):
        ActorCritic(IMAGE, gym.spaces.Discrete(3), PolicyConfig(fused="on", cnn_features=8))


def test_qat_policy_trains_through_make_optimizer():
    from rlhf.precision import prepare_qat

    torch.manual_seed(0)
    policy = prepare_qat(ActorCritic(BOX, gym.spaces.Discrete(3), PolicyConfig()), "int8")
    assert_update_changes_parameters(policy, synthetic_batch(policy, n=64, seed=0))


def test_fused_plan_follows_swapped_layers_and_parameters():
    """The cached fused plan is rebuilt when a layer or a parameter is reassigned: the fast path never runs
    stale weights, and a layer it cannot run is named."""
    torch.manual_seed(0)
    policy = ActorCritic(BOX, gym.spaces.Discrete(3), PolicyConfig())
    obs = torch.randn(16, 4)
    policy(obs)  # builds the plan

    def layer_by_layer():
        return policy.pi_head(policy.pi_trunk(obs)), policy.vf_head(policy.vf_trunk(obs)).squeeze(-1)

    policy.pi_trunk[1][0] = torch.nn.Linear(4, 64)  # same type, new weights
    assert policy.fused_path(obs) is None
    for got, want in zip(policy(obs), layer_by_layer()):
        torch.testing.assert_close(got, want)
    policy.vf_head.weight = torch.nn.Parameter(torch.randn(1, 64))  # a new parameter object
    torch.testing.assert_close(policy(obs)[1], layer_by_layer()[1])
    policy.pi_trunk[1][2] = torch.nn.Sequential(torch.nn.Linear(64, 64))
    assert policy.fused_path(obs) == "Sequential layer"
    for got, want in zip(policy(obs), layer_by_layer()):
        torch.testing.assert_close(got, want)
