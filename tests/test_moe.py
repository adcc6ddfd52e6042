"""The Mixture-of-Experts layer: routing math checked by hand, sparse dispatch against the dense reference."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from rlhf.moe import (
    MoE,
    MoESettings,
    active_parameters,
    capacity_keep,
    load_balancing_loss,
    moe_statistics,
    router_z_loss,
    top_k_gates,
)


def make_moe(experts=4, top_k=2, noisy=True, capacity_factor=None, dim=6, out=5, seed=0) -> MoE:
    torch.manual_seed(seed)
    settings = MoESettings(experts=experts, top_k=top_k, noisy=noisy, capacity_factor=capacity_factor)
    moe = MoE([nn.Linear(dim, out) for _ in range(experts)], dim, settings)
    with torch.no_grad():  # logits large enough that routing differs between samples
        moe.router.weight.normal_(0, 1.0)
    return moe


def test_top_k_picks_the_largest_logits_and_softmaxes_them():
    logits = torch.tensor([[0.1, 3.0, -1.0, 2.0], [5.0, 4.0, 6.0, -2.0]])
    gates, idx = top_k_gates(logits, 2)
    assert idx.tolist() == [[1, 3], [2, 0]]
    e = torch.exp(torch.tensor(1.0))
    torch.testing.assert_close(gates, torch.tensor([[e / (e + 1), 1 / (e + 1)]] * 2))


def test_load_balancing_loss_is_one_balanced_and_e_collapsed():
    E, n = 4, 8
    balanced_probs = torch.full((n, E), 1.0 / E)
    balanced_idx = torch.arange(n).remainder(E).unsqueeze(-1)  # top-1, each expert twice
    assert load_balancing_loss(balanced_probs, balanced_idx).item() == pytest.approx(1.0)
    collapsed_probs = torch.zeros(n, E)
    collapsed_probs[:, 0] = 1.0
    collapsed_idx = torch.zeros(n, 1, dtype=torch.long)
    assert load_balancing_loss(collapsed_probs, collapsed_idx).item() == pytest.approx(float(E))
    # half the samples to expert 0 with P = (.5, .5, 0, 0): 4 * (.5*.5 + .5*.5) = 2
    probs = torch.tensor([[0.5, 0.5, 0.0, 0.0]]).repeat(4, 1)
    idx = torch.tensor([[0], [1], [0], [1]])
    assert load_balancing_loss(probs, idx).item() == pytest.approx(2.0)


def test_router_z_loss_by_hand():
    logits = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    lse = torch.tensor([torch.log(torch.tensor(2.0)), 1 + torch.log(torch.tensor(2.0))])
    assert router_z_loss(logits).item() == pytest.approx(float((lse ** 2).mean()))


def test_capacity_keeps_first_slots_first_then_token_order():
    idx = torch.tensor([[0, 1], [0, 2], [0, 1], [3, 0]])
    keep = capacity_keep(idx, num_experts=4, capacity=2)
    # expert 0: slot-0 assignments of tokens 0, 1, 2 come first -> tokens 0, 1 kept, 2 dropped,
    # and token 3's slot-1 assignment is after them -> dropped; expert 1: tokens 0, 2 kept
    assert keep.tolist() == [[True, True], [True, True], [False, True], [True, False]]


@pytest.mark.parametrize("capacity_factor", [None, 0.75])
@pytest.mark.parametrize("top_k", [1, 2])
def test_sparse_dispatch_equals_dense_reference(top_k, capacity_factor):
    moe = make_moe(top_k=top_k, capacity_factor=capacity_factor).eval()
    x = torch.randn(3, 7, 6)
    sparse = moe(x)
    dropped = moe.stats["dropped_fraction"].item()
    dense = moe.dense_forward(x)
    assert sparse.shape == (3, 7, 5)
    torch.testing.assert_close(sparse, dense)
    if capacity_factor is not None:  # 21 tokens * k over 4 experts at 0.75: some assignments must drop
        assert dropped > 0.0
    else:
        assert dropped == 0.0


def test_only_chosen_experts_run():
    moe = make_moe(top_k=1).eval()
    calls = [0] * 4
    for e, expert in enumerate(moe.experts):
        expert.register_forward_hook(lambda m, i, o, e=e: calls.__setitem__(e, calls[e] + i[0].shape[0]))
    moe(torch.randn(10, 6))
    assert sum(calls) == 10  # each sample ran through exactly one expert


def test_noise_only_in_training():
    moe = make_moe()
    with torch.no_grad():
        moe.router.noise_weight.fill_(1.0)
    x = torch.randn(16, 6)
    moe.eval()
    clean = moe.router(x)
    torch.testing.assert_close(moe.router(x), clean)
    torch.testing.assert_close(clean, x @ moe.router.weight.t())
    moe.train()
    assert not torch.allclose(moe.router(x), clean)


def test_gradients_reach_router_and_noise_scale():
    moe = make_moe().train()
    out = moe(torch.randn(32, 6))
    (out.pow(2).mean() + moe.aux_loss).backward()
    assert moe.router.weight.grad.abs().sum() > 0
    assert moe.router.noise_weight.grad.abs().sum() > 0
    assert all(e.weight.grad is not None for e in moe.experts)


def test_statistics_and_active_parameters():
    moe = make_moe(experts=4, top_k=1).eval()
    moe(torch.randn(40, 6))
    stats = moe_statistics([moe])
    loads = [stats[f"moe/expert_load/layer0/expert{i}"] for i in range(4)]
    assert sum(loads) == pytest.approx(1.0)
    assert stats["moe/expert_load_min"] == min(loads) and stats["moe/expert_load_max"] == max(loads)
    assert 0.0 < stats["moe/router_entropy"] <= torch.log(torch.tensor(4.0)).item() + 1e-6
    assert stats["moe/aux_loss"] == pytest.approx(0.01 * stats["moe/load_balancing_loss"])
    total, active = active_parameters(moe)
    per_expert = 6 * 5 + 5
    assert total == 4 * per_expert + 2 * 4 * 6
    assert active == total - 3 * per_expert


def test_router_stays_fp32_under_autocast():
    moe = make_moe().eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = moe.router(torch.randn(4, 6))
        out = moe(torch.randn(4, 6))
    assert logits.dtype == torch.float32 and out.dtype == torch.bfloat16


def _moe_policy():
    import gymnasium as gym

    from rlhf.config import MoEConfig, PolicyConfig
    from rlhf.policies import ActorCritic

    torch.manual_seed(0)
    cfg = PolicyConfig(hidden_sizes=[32, 32], moe=MoEConfig(experts=4, top_k=2))
    return ActorCritic(gym.spaces.Box(-1, 1, (5,)), gym.spaces.Discrete(3), cfg)


@pytest.mark.parametrize("mode", ["int8", "nf4"])
def test_experts_quantize_and_the_router_stays_fp32(mode):
    from rlhf.precision import make_actor

    policy = _moe_policy().eval()
    actor = make_actor(policy, mode)
    layer = actor.moe_layers[0]
    assert all(type(e) is not nn.Linear for e in layer.experts)  # quantized expert layers
    assert layer.router.weight.dtype == torch.float32
    torch.testing.assert_close(layer.router.weight, policy.moe_layers[0].router.weight)
    obs = torch.randn(64, 5)
    ref, _ = policy(obs)
    out, _ = actor(obs)
    assert (out - ref).abs().max() < 0.05


def test_ppo_update_trains_the_router_through_the_aux_loss():
    from rlhf.ppo.update import Batch, PPOSettings, ppo_update

    policy = _moe_policy()
    assert policy.fused is False  # an MoE trunk runs layer by layer
    n = 128
    obs, actions = torch.randn(n, 5), torch.randint(0, 3, (n,))
    with torch.no_grad():
        logp, _, values = policy.evaluate_actions(obs, actions)
    batch = Batch(obs, actions, logp, values, torch.randn(n), torch.randn(n))
    router = policy.moe_layers[0].router.weight
    before = router.detach().clone()
    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-2)
    stats = ppo_update(policy, optimizer, batch, PPOSettings(epochs=2, batch_size=64))
    # 4 MoE layers (2 per trunk), each 0.01 * a balance loss of at least 1
    assert stats["train/aux_loss"] >= 4 * 0.01 * 0.99
    assert not torch.equal(before, router)


def _moe_gpt(**changes):
    from rlhf.text.model import GPT, GPTConfig

    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=20, block_size=16, n_layer=2, n_head=2, n_embd=16,
                         moe=MoESettings(experts=4, top_k=1), **changes))


def test_gpt_moe_ffn_round_trips_and_its_kv_cache_matches_a_full_forward():
    from dataclasses import asdict

    from rlhf.text.model import GPT, GPTConfig

    gpt = _moe_gpt(value_head=True).eval()
    assert len(gpt.moe_layers) == 2 and all(len(m.experts) == 4 for m in gpt.moe_layers)
    idx = torch.randint(0, 20, (3, 10))
    full = gpt(idx).logits
    assert gpt.auxiliary_loss() is not None
    first = gpt(idx[:, :6], use_cache=True)
    step = gpt(idx[:, 6:], past_kv=first.past_kv, use_cache=True)
    torch.testing.assert_close(step.logits, full[:, 6:])
    again = GPT(GPTConfig(**asdict(gpt.config)))  # as a checkpoint's config is read back
    again.load_state_dict(gpt.state_dict())
    torch.testing.assert_close(again.eval()(idx).logits, full)
    child = GPT.from_trunk(gpt, reward_head=True)
    assert child.config.moe == gpt.config.moe and len(child.moe_layers) == 2


def test_model_size_shows_total_and_active_parameters(capsys):
    from rlhf.cli import main

    assert main(["model-size", "configs/deepracer_moe.yaml"]) == 0
    out = capsys.readouterr().out
    assert "Mixture of Experts: 4 layers, top 2 of 4 experts" in out and "active per observation" in out
    assert main(["model-size", "configs/text_rlhf_moe.yaml"]) == 0
    assert "top 1 of 4 experts" in capsys.readouterr().out


def test_moe_without_mlp_hidden_layers_is_refused():
    import gymnasium as gym

    from rlhf.config import MoEConfig, PolicyConfig
    from rlhf.errors import ConfigError
    from rlhf.policies import ActorCritic

    with pytest.raises(ConfigError, match="policy.hidden_sizes is empty"):
        ActorCritic(gym.spaces.Box(-1, 1, (5,)), gym.spaces.Discrete(3), PolicyConfig(hidden_sizes=[], moe=MoEConfig()))
    with pytest.raises(ConfigError, match="a CNN trunk"):
        ActorCritic(gym.spaces.Box(0, 255, (3, 36, 36), dtype="uint8"), gym.spaces.Discrete(3),
                    PolicyConfig(cnn_features=8, moe=MoEConfig()))
