"""ppo_update and ppo_loss: masks, the KL-penalty path, entropy, target-KL early stop, and the shape of the loop."""
import ast
import copy
import inspect

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch import nn

from rlhf.config import PolicyConfig
from rlhf.optim import make_optimizer
from rlhf.policies import ActorCritic
from rlhf.ppo.advantages import masked_whiten
from rlhf.ppo.losses import kl_estimate
from rlhf.ppo.update import Batch, PPOSettings, adapt_kl_coef, ppo_loss, ppo_update
from rlhf.testing import synthetic_batch

BOX = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
STAT_KEYS = {"train/policy_gradient_loss", "train/value_loss", "train/entropy_loss", "train/approx_kl",
             "train/clip_fraction", "train/loss", "train/explained_variance", "train/grad_norm",
             "train/n_updates", "train/clip_range", "train/early_stop"}


def make_policy(seed=0, **cfg):
    torch.manual_seed(seed)
    return ActorCritic(BOX, gym.spaces.Discrete(3), PolicyConfig(**cfg))


class TokenPolicy(nn.Module):
    """A minimal token-level policy: per-position logits and values from token embeddings."""

    def __init__(self, vocab=11, dim=8):
        super().__init__()
        torch.manual_seed(0)
        self.emb, self.head, self.value = nn.Embedding(vocab, dim), nn.Linear(dim, vocab), nn.Linear(dim, 1)

    def evaluate_actions(self, obs, actions):
        h = torch.tanh(self.emb(obs["input_ids"]))
        logp_all = torch.log_softmax(self.head(h).float(), -1)
        logp = logp_all.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
        return logp, -(logp_all.exp() * logp_all).sum(-1), self.value(h).squeeze(-1)


def token_batch(rows, length, seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 11, (rows, length), generator=g)
    mask = (torch.arange(length) < torch.randint(1, length + 1, (rows, 1), generator=g)).float()
    f = lambda: torch.randn(rows, length, generator=g)  # noqa: E731
    return Batch({"input_ids": ids}, torch.randint(0, 11, (rows, length), generator=g), f() - 2.4, f(), f(), f(), mask)


def pad(b: Batch, extra_rows: int, extra_cols: int = 0) -> Batch:
    """The same batch with garbage rows (and, for token batches, garbage tokens) under mask 0."""
    g = torch.Generator().manual_seed(99)

    def grow(x, fill_int=False):
        if extra_cols and x.dim() == 2:
            junk = torch.randint(0, 11, (x.shape[0], extra_cols), generator=g) if fill_int else \
                1e3 * torch.randn(x.shape[0], extra_cols, generator=g)
            x = torch.cat([x, junk.to(x.dtype)], 1)
        junk = torch.randint(0, 3 if x.dim() == 1 else 11, (extra_rows, *x.shape[1:]), generator=g) if fill_int \
            else 1e3 * torch.randn(extra_rows, *x.shape[1:], generator=g)
        return torch.cat([x, junk.to(x.dtype)])

    mask = b.mask if b.mask is not None else torch.ones(len(b))
    new_mask = torch.cat([torch.cat([mask, torch.zeros(mask.shape[0], extra_cols)], 1) if extra_cols else mask,
                          torch.zeros(extra_rows, *mask.shape[1:]) if not extra_cols
                          else torch.zeros(extra_rows, mask.shape[1] + extra_cols)])
    obs = {k: grow(v, True) for k, v in b.obs.items()} if isinstance(b.obs, dict) else grow(b.obs)
    ints = not b.actions.dtype.is_floating_point
    return Batch(obs, grow(b.actions, ints), grow(b.logp), grow(b.values), grow(b.advantages), grow(b.returns), new_mask)


def grads_and_stats(policy, b: Batch, s: PPOSettings):
    policy.zero_grad(set_to_none=True)
    logp, ent, values = policy.evaluate_actions(b.obs, b.actions)
    loss, stats = ppo_loss(logp, ent, values, b, b.advantages, s)  # raw advantages: whitening is the loop's job
    loss.backward()
    return {k: p.grad.clone() for k, p in policy.named_parameters() if p.grad is not None}, stats


@pytest.mark.parametrize("kind", ["gym", "tokens"])
def test_padding_under_mask_zero_changes_no_gradient_or_statistic(kind):
    s = PPOSettings(epochs=1, batch_size=10_000, clip_value=0.2, vf_coef=0.7, entropy_coef=0.01)
    if kind == "gym":
        policy = make_policy()
        batch = synthetic_batch(policy, n=48, seed=0)
        padded = pad(batch, extra_rows=16)
    else:
        policy = TokenPolicy()
        batch = token_batch(12, 6, seed=0)
        padded = pad(batch, extra_rows=5, extra_cols=3)
    g1, s1 = grads_and_stats(policy, batch, s)
    g2, s2 = grads_and_stats(policy, padded, s)
    assert g1.keys() == g2.keys()
    for k in g1:
        assert torch.allclose(g1[k], g2[k], atol=1e-6, rtol=1e-5), k
    for k in s1:
        assert float(s1[k]) == pytest.approx(float(s2[k]), rel=1e-5, abs=1e-7), k
    # the whole update: advantage whitening, explained variance and the step see only real elements
    twins = copy.deepcopy(policy), copy.deepcopy(policy)
    torch.manual_seed(0)
    r1 = ppo_update(twins[0], torch.optim.SGD(twins[0].parameters(), lr=0.1), batch, s)
    r2 = ppo_update(twins[1], torch.optim.SGD(twins[1].parameters(), lr=0.1), padded, s)
    for k in STAT_KEYS:
        assert r1[k] == pytest.approx(r2[k], rel=1e-4, abs=1e-6), k
    for a, b in zip(*(t.parameters() for t in twins)):
        assert torch.allclose(a, b, atol=1e-6)


def test_adapt_kl_coef_hand_computed():
    assert adapt_kl_coef(1.0, kl=0.001, kl_target=0.01) == 0.5   # below d/1.5: halve
    assert adapt_kl_coef(1.0, kl=0.02, kl_target=0.01) == 2.0    # above 1.5 d: double
    assert adapt_kl_coef(1.0, kl=0.01, kl_target=0.01) == 1.0    # in between: keep
    assert adapt_kl_coef(0.3, kl=0.0149, kl_target=0.01) == 0.3


def test_kl_penalty_loss_hand_computed_and_beta_matters():
    logp, old = torch.tensor([-1.0, -0.5, -2.0]), torch.tensor([-1.2, -0.5, -1.5])
    adv = torch.tensor([1.0, -2.0, 0.5])
    mb = Batch(torch.zeros(3, 1), torch.zeros(3), old, torch.zeros(3), adv, torch.zeros(3))
    ratio = (logp - old).exp()
    k3 = (ratio - 1) - torch.log(ratio)  # k3 of KL(old || new) from old-policy samples, r = new / old
    assert torch.allclose(k3, kl_estimate(old, logp, "k3"))
    for beta in (0.0, 2.0):
        s = PPOSettings(policy_loss="kl_penalty", kl_coef=beta, vf_coef=0.0)
        loss, _ = ppo_loss(logp, torch.zeros(3), None, mb, adv, s)
        expected = -(ratio * adv - beta * k3).mean()
        assert float(loss) == pytest.approx(float(expected), rel=1e-6)


def mean_entropy(policy, batch):
    with torch.no_grad():
        return float(policy.evaluate_actions(batch.obs, batch.actions)[1].mean())


def test_entropy_coefficient_raises_entropy():
    policy = make_policy()
    with torch.no_grad():
        policy.pi_head.bias.copy_(torch.tensor([2.0, 0.0, -1.0]))  # start peaked, well below ln 3
    batch = synthetic_batch(policy, n=128, seed=0, advantages=torch.zeros(128))
    before = mean_entropy(policy, batch)
    results = {}
    for coef in (0.0, 0.5):
        twin = copy.deepcopy(policy)
        ppo_update(twin, make_optimizer(twin, 3e-3), batch, PPOSettings(batch_size=128, epochs=10, entropy_coef=coef))
        results[coef] = mean_entropy(twin, batch)
    assert results[0.5] > before + 0.02            # the bonus pushed the distribution flatter
    assert results[0.5] > results[0.0] + 0.02


def test_target_kl_stops_at_the_first_minibatch_that_moved_too_far():
    policy = make_policy()
    batch = synthetic_batch(policy, n=64, seed=0)
    # minibatch 1 has ratio 1 (KL 0) and steps; with lr 0.1 the second one is far past 1.5 * 1e-4: stop there
    stats = ppo_update(policy, make_optimizer(policy, 0.1), batch, PPOSettings(batch_size=32, epochs=5, target_kl=1e-4))
    assert stats["train/early_stop"] == 1.0 and stats["train/n_updates"] == 1.0
    loose = ppo_update(make_policy(), make_optimizer(make_policy(), 1e-4), batch,
                       PPOSettings(batch_size=32, epochs=5, target_kl=1e6))
    assert loose["train/early_stop"] == 0.0 and loose["train/n_updates"] == 10.0


def test_one_sample_tail_minibatch_is_trained_on():
    """As Stable-Baselines3: 65 samples in minibatches of 64 give two steps per epoch, the second on one sample."""
    policy = make_policy()
    stats = ppo_update(policy, make_optimizer(policy, 1e-3), synthetic_batch(policy, n=65, seed=0),
                       PPOSettings(batch_size=64, epochs=3))
    assert stats["train/n_updates"] == 6.0 and np.isfinite(stats["train/policy_gradient_loss"])


@pytest.mark.parametrize("batch_size", [64, 48])
def test_flat_adam_and_fused_mlp_change_no_number(batch_size):
    """The opt-in fast paths (fused MLP, FlatAdam) against their plain twins through the same update."""
    policy = make_policy()
    plain = make_policy(fused="off")
    plain.load_state_dict(policy.state_dict())
    batch = synthetic_batch(policy, n=64, seed=0)
    s = PPOSettings(batch_size=batch_size, epochs=3, max_grad_norm=0.5)
    torch.manual_seed(1)
    stats = ppo_update(policy, make_optimizer(policy, 1e-3, "flat_adam"), batch, s)
    torch.manual_seed(1)
    ref = ppo_update(plain, make_optimizer(plain, 1e-3, "adam"), batch, s)
    assert set(stats) == set(ref) == STAT_KEYS
    for key in STAT_KEYS:
        assert stats[key] == pytest.approx(ref[key], rel=1e-4, abs=1e-6), key
    for (name, a), b in zip(policy.named_parameters(), plain.parameters()):
        assert torch.allclose(a, b, atol=1e-5), name


@pytest.mark.parametrize("batch_size, calls", [(64, 1), (32, 8)])
def test_whole_batch_advantages_are_normalised_once_per_update(batch_size, calls):
    """One minibatch per epoch: the same advantages every epoch, normalised once; split minibatches each time.
    The numbers are the same as normalising every epoch."""
    seen = []

    def counting(x, mask):
        seen.append(x)
        return masked_whiten(x, mask)

    policy = make_policy()
    batch = synthetic_batch(policy, n=64, seed=0)
    start = copy.deepcopy(policy.state_dict())
    torch.manual_seed(1)
    stats = ppo_update(policy, make_optimizer(policy, 1e-3), batch,
                       PPOSettings(batch_size=batch_size, epochs=4, whiten=counting))
    assert len(seen) == calls
    policy_ref = make_policy()
    policy_ref.load_state_dict(start)
    torch.manual_seed(1)
    ref = ppo_update(policy_ref, make_optimizer(policy_ref, 1e-3), batch, PPOSettings(batch_size=batch_size, epochs=4))
    assert stats["train/policy_gradient_loss"] == pytest.approx(ref["train/policy_gradient_loss"], rel=1e-6)
    for a, b in zip(policy.parameters(), policy_ref.parameters()):
        assert torch.equal(a, b)


def test_advantages_changed_in_place_are_normalised_again():
    from rlhf.ppo.update import _ReuseForSameInput

    calls = []
    whiten = _ReuseForSameInput(lambda x, m: calls.append(1) or x * 2)
    x = torch.ones(3)
    assert torch.equal(whiten(x, None), torch.full((3,), 2.0)) and whiten(x, None) is whiten(x, None)
    x.add_(1.0)
    assert torch.equal(whiten(x, None), torch.full((3,), 4.0)) and len(calls) == 2
    assert torch.equal(whiten(torch.ones(3), None), torch.full((3,), 2.0)) and len(calls) == 3


def test_update_statistics_hand_checked():
    """With lr 0 nothing moves: every statistic is the first minibatch's, computed here by hand."""
    policy = make_policy()
    batch = synthetic_batch(policy, n=32, seed=3)
    stats = ppo_update(policy, torch.optim.SGD(policy.parameters(), lr=0.0), batch,
                       PPOSettings(batch_size=32, epochs=2, vf_coef=0.5, entropy_coef=0.0, normalize_advantage=False))
    with torch.no_grad():
        _, entropy, values = policy.evaluate_actions(batch.obs, batch.actions)
    assert stats["train/policy_gradient_loss"] == pytest.approx(-float(batch.advantages.mean()), rel=1e-5)
    assert stats["train/value_loss"] == pytest.approx(float(((values - batch.returns) ** 2).mean()), rel=1e-5)
    assert stats["train/entropy_loss"] == pytest.approx(-float(entropy.mean()), rel=1e-5)
    assert stats["train/approx_kl"] == 0.0 and stats["train/clip_fraction"] == 0.0
    assert stats["train/n_updates"] == 2.0


def test_the_loop_fits_one_screen_and_never_asks_what_the_optimizer_is():
    source = inspect.getsource(ppo_update)
    assert len(source.splitlines()) <= 60
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") in ("isinstance", "getattr", "hasattr", "type"):
            assert "optimizer" not in ast.unparse(node), ast.unparse(node)


def test_parameter_digest_tells_bit_identical_weights_apart_in_any_dtype():
    import torch

    from rlhf.testing import parameter_digest

    torch.manual_seed(0)
    a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    b.load_state_dict(a.state_dict())
    assert parameter_digest(a) == parameter_digest(b)
    with torch.no_grad():
        b.weight[0, 0] = torch.nextafter(b.weight[0, 0], torch.tensor(1.0))  # one ulp
    assert parameter_digest(a) != parameter_digest(b)
    fp32 = parameter_digest(a)
    a.to(torch.bfloat16)  # in place; bf16 has no numpy dtype: hashed as raw bytes, the dtype in the digest
    assert len(parameter_digest(a)) == 64 and parameter_digest(a) != fp32
