"""Loss terms against hand-computed values and against Stable-Baselines3's formulas."""
import math

import pytest
import torch
from torch.nn import functional as F

from rlhf.ppo import approx_kl, clip_fraction, clipped_surrogate_loss, entropy_loss, kl_penalty_surrogate_loss, value_loss


def t(*xs):
    return torch.tensor(xs, dtype=torch.float32)


def test_clipped_surrogate_hand_computed():
    # ratios 1.5 (clipped to 1.2 for A>0), 0.5 (clipped to 0.8 for A<0 -> min picks the clipped), 1.0
    logp, old = torch.log(t(1.5, 0.5, 1.0)), t(0.0, 0.0, 0.0)
    adv = t(2.0, -1.0, 3.0)
    # elementwise min(r A, clip(r) A): 1.2*2=2.4 ; min(-0.5, -0.8) = -0.8 ; 3.0
    expected = -(2.4 - 0.8 + 3.0) / 3
    assert clipped_surrogate_loss(logp, old, adv, 0.2).item() == pytest.approx(expected, rel=1e-6)


def test_clipped_surrogate_matches_sb3_formula():
    g = torch.Generator().manual_seed(0)
    logp, old, adv = torch.randn(256, generator=g), torch.randn(256, generator=g), torch.randn(256, generator=g)
    # stable_baselines3/ppo/ppo.py, train(): policy_loss
    ratio = torch.exp(logp - old)
    sb3 = -torch.min(adv * ratio, adv * torch.clamp(ratio, 1 - 0.2, 1 + 0.2)).mean()
    assert torch.allclose(clipped_surrogate_loss(logp, old, adv, 0.2), sb3)
    sb3_clip_fraction = torch.mean((torch.abs(ratio - 1) > 0.2).float())
    assert torch.allclose(clip_fraction(logp, old, 0.2), sb3_clip_fraction)
    log_ratio = logp - old
    sb3_kl = torch.mean((torch.exp(log_ratio) - 1) - log_ratio)
    assert torch.allclose(approx_kl(logp, old), sb3_kl)


def test_value_loss_mse_matches_sb3_and_hand():
    values, returns = t(1.0, 2.0, 4.0), t(0.0, 2.0, 1.0)
    assert value_loss(values, returns).item() == pytest.approx((1 + 0 + 9) / 3)
    assert torch.allclose(value_loss(values, returns), F.mse_loss(returns, values))  # SB3's value loss


def test_value_loss_clipped_hand_computed():
    old, values, returns = t(0.0, 0.0), t(1.0, -0.05), t(2.0, 0.0)
    # clipped prediction: old + clamp(v - old, -0.1, 0.1) = 0.1, -0.05
    # element 0: max((1-2)^2, (0.1-2)^2) = 3.61 ; element 1: max(0.0025, 0.0025)
    expected = (3.61 + 0.0025) / 2
    assert value_loss(values, returns, old, clip_value=0.1).item() == pytest.approx(expected, rel=1e-5)


def test_value_loss_huber_hand_computed():
    values, returns = t(0.5, 3.0), t(0.0, 0.0)
    # delta 1: 0.5*0.5^2 = 0.125 ; 1*(3 - 0.5) = 2.5
    assert value_loss(values, returns, loss_type="huber").item() == pytest.approx((0.125 + 2.5) / 2)
    with pytest.raises(ValueError, match="loss_type"):
        value_loss(values, returns, loss_type="l1")


def test_entropy_and_kl_estimators():
    assert entropy_loss(t(1.0, 3.0)).item() == pytest.approx(-2.0)
    logp, old = torch.log(t(2.0)), t(0.0)
    assert approx_kl(logp, old, estimator="k1").item() == pytest.approx(-math.log(2.0))
    assert approx_kl(logp, old, estimator="k3").item() == pytest.approx(1.0 - math.log(2.0))


def test_kl_penalty_surrogate_hand_computed():
    logp, old, adv = torch.log(t(2.0)), t(0.0), t(1.0)
    kl = 1.0 - math.log(2.0)
    assert kl_penalty_surrogate_loss(logp, old, adv, 0.5).item() == pytest.approx(-(2.0 - 0.5 * kl))


def test_masks_ignore_padding():
    logp, old, adv = t(0.1, 5.0), t(0.0, 0.0), t(1.0, 100.0)
    mask = t(1.0, 0.0)
    assert clipped_surrogate_loss(logp, old, adv, 0.2, mask).item() == pytest.approx(-math.exp(0.1))
