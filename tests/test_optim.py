"""FlatAdam (the opt-in flat-buffer Adam) against torch's Adam: same numbers, either step path."""
import copy

import gymnasium as gym
import numpy as np
import pytest
import torch
import torch.optim.optimizer as torch_optimizer

from rlhf.config import PolicyConfig
from rlhf.errors import ConfigError
from rlhf.optim import FlatAdam, make_optimizer
from rlhf.policies import ActorCritic

BOX = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)


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
        if max_grad_norm is not None:  # clipping the one flat tensor clips every parameter's gradient
            torch.nn.utils.clip_grad_norm_([opt.flat] if step % 2 else list(policy.parameters()), max_grad_norm)
        opt.step()
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
    opt.step()
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


def test_private_kernel_and_public_step_agree():
    """The direct fused-kernel call and the public ``Adam.step`` fallback (another torch) give the same bits."""
    p1 = make_policy()
    p2 = copy.deepcopy(p1)
    o1, o2 = make_optimizer(p1, 1e-3), make_optimizer(p2, 1e-3)
    o2.kernel_ok = False
    obs = torch.randn(64, 4)
    for policy, opt in ((p1, o1), (p2, o2)):
        for _ in range(3):
            opt.zero_grad()
            out, value = policy(obs)
            (out.sum() + value.sum()).backward()
            opt.step()
    for a, b in zip(p1.parameters(), p2.parameters()):
        assert torch.equal(a.detach(), b.detach())
    assert float(o1.state[o1.flat]["step"]) == float(o2.state[o2.flat]["step"]) == 3.0


def test_make_optimizer_kinds():
    assert type(make_optimizer(make_policy(), 1e-3, "adam")) is torch.optim.Adam
    assert type(make_optimizer(make_policy(), 1e-3, "auto")) is FlatAdam
    mixed = make_policy()
    mixed.vf_head.double()
    assert type(make_optimizer(mixed, 1e-3, "auto")) is torch.optim.Adam
    with pytest.raises(ConfigError, match="flat_adam"):
        make_optimizer(mixed, 1e-3, "flat_adam")
    with pytest.raises(ConfigError, match="allowed values"):
        make_optimizer(make_policy(), 1e-3, "sgd")


def test_flat_adam_runs_step_hooks_once():
    """FlatAdam skips torch's step wrapper only while no hook is registered; hooks then run once per step."""
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    opt = FlatAdam(list(net.parameters()), lr=1e-2)
    calls = []
    opt.register_step_pre_hook(lambda o, a, k: calls.append("pre"))
    opt.register_step_post_hook(lambda o, a, k: calls.append("post"))
    handle = torch_optimizer.register_optimizer_step_pre_hook(lambda o, a, k: calls.append("global"))
    try:
        before = net.weight.detach().clone()
        net(torch.randn(4, 3)).sum().backward()
        opt.step()
        assert calls == ["global", "pre", "post"]
        assert not torch.equal(before, net.weight)
        opt.kernel_ok = False  # the public Adam step, reached through the same single hook dispatch
        opt.step()
        assert calls == ["global", "pre", "post"] * 2
    finally:
        handle.remove()


def test_flat_adam_does_not_load_the_compiler_stack():
    """Building, stepping, saving and loading FlatAdam leaves ``torch._dynamo`` unimported (about 1 s of a
    short run's start-up); once it is imported, the same calls go through torch's wrapped methods."""
    import subprocess
    import sys

    script = """
import sys, torch
from rlhf.optim import FlatAdam
net = torch.nn.Linear(3, 2)
opt = FlatAdam(list(net.parameters()), lr=1e-2)
net(torch.randn(4, 3)).sum().backward()
opt.step()
state = opt.state_dict()
opt.load_state_dict(state)
print("dynamo loaded:", "torch._dynamo" in sys.modules)
import torch._dynamo
opt2 = FlatAdam(list(torch.nn.Linear(3, 2).parameters()), lr=1e-2)
opt2.load_state_dict(opt.state_dict())
assert torch.equal(opt2.state[opt2.flat]["exp_avg"], opt.state[opt.flat]["exp_avg"])
print("after import ok")
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.split("\n")[:2] == ["dynamo loaded: False", "after import ok"]
