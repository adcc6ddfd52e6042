"""make_actor / refresh_actor: low-precision rollout copies that follow the learner."""
import pytest
import torch
from torch import nn

from rlhf.precision import ROLLOUT_MODES, BF16Linear, Int8Linear, NF4Linear, make_actor, refresh_actor


class Policy(nn.Module):
    """MLP actor-critic with an observation normaliser buffer, like the trainer's policies."""

    def __init__(self, obs_dim=8, n_actions=4):
        super().__init__()
        self.register_buffer("obs_mean", torch.zeros(obs_dim))
        self.register_buffer("obs_var", torch.ones(obs_dim))
        self.body = nn.Sequential(nn.Linear(obs_dim, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh())
        self.pi, self.v = nn.Linear(64, n_actions), nn.Linear(64, 1)

    def forward(self, obs):
        h = self.body((obs - self.obs_mean) / self.obs_var.sqrt())
        return torch.log_softmax(self.pi(h).float(), -1), self.v(h).squeeze(-1)

    def log_prob(self, obs, actions):
        return self(obs)[0].gather(-1, actions.unsqueeze(-1)).squeeze(-1)


TOL = {"bf16": 0.03, "int8": 0.03, "int8-outlier": 0.03, "nf4": 0.15}


def test_fp32_is_the_policy_itself():
    policy = Policy()
    assert make_actor(policy, "fp32") is policy
    assert refresh_actor(policy, policy) is policy


@pytest.mark.parametrize("mode", [m for m in ROLLOUT_MODES if m != "fp32"])
def test_actor_close_to_policy_and_fp32_at_boundary(mode):
    torch.manual_seed(0)
    policy = Policy()
    policy.obs_mean.fill_(0.5)
    actor = make_actor(policy, mode)
    assert actor is not policy and type(actor) is Policy
    layer = {"bf16": BF16Linear, "nf4": NF4Linear}.get(mode, Int8Linear)
    assert isinstance(actor.pi, layer) and isinstance(policy.pi, nn.Linear)
    assert torch.equal(actor.obs_mean, policy.obs_mean)
    assert not any(p.requires_grad for p in actor.parameters())
    obs = torch.randn(32, 8)
    logp, value = actor(obs)
    ref_logp, ref_value = policy(obs)
    assert logp.dtype == value.dtype == torch.float32
    assert (logp.exp() - ref_logp.exp()).abs().max() < TOL[mode]
    assert (value - ref_value).abs().max() < TOL[mode] * 3


@pytest.mark.parametrize("mode", [m for m in ROLLOUT_MODES if m != "fp32"])
def test_refresh_follows_learner_in_place(mode):
    torch.manual_seed(0)
    policy = Policy()
    actor = make_actor(policy, mode)
    pi_module, buffer_ids = actor.pi, [id(b) for b in actor.buffers()]
    opt = torch.optim.SGD(policy.parameters(), lr=0.5)
    obs = torch.randn(32, 8)
    for _ in range(3):                                    # move the learner well away
        opt.zero_grad()
        (-policy(obs)[0][:, 0].mean()).backward()
        opt.step()
    policy.obs_mean.fill_(0.3)
    policy.obs_var.fill_(2.0)
    stale = (actor(obs)[0].exp() - policy(obs)[0].exp()).abs().max()
    assert refresh_actor(actor, policy) is actor
    assert actor.pi is pi_module and [id(b) for b in actor.buffers()] == buffer_ids
    assert torch.equal(actor.obs_mean, policy.obs_mean) and torch.equal(actor.obs_var, policy.obs_var)
    fresh = (actor(obs)[0].exp() - policy(obs)[0].exp()).abs().max()
    assert fresh < TOL[mode] and fresh < stale
    # refreshing equals building a new actor
    rebuilt = make_actor(policy, mode)
    assert torch.equal(actor(obs)[0], rebuilt(obs)[0])


def test_refresh_copies_conv_weights_and_unknown_mode():
    torch.manual_seed(0)
    policy = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 4 * 4, 2))
    actor = make_actor(policy, "int8")
    with torch.no_grad():
        policy[0].weight.add_(1.0)
    refresh_actor(actor, policy)
    assert torch.equal(actor[0].weight, policy[0].weight)
    with pytest.raises(ValueError, match="fp32, bf16, int8, int8-outlier, nf4"):
        make_actor(policy, "fp8")
