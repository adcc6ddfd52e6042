"""Training modes: autocast, GradScaler on CPU, mode checks, the fp32 numerics contract."""
import math

import pytest
import torch
from torch import nn

from rlhf.precision import TRAIN_MODES, Precision, check_train_mode, float32_region


def policy():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 4))


@pytest.mark.parametrize("mode", TRAIN_MODES)
def test_ratio_is_exactly_one_at_identical_weights(mode):
    model, prec = policy(), Precision(mode)
    obs, actions = torch.randn(64, 8), torch.randint(0, 4, (64,))

    def logp():
        with prec.autocast():
            logits = model(obs)
            with float32_region():
                return torch.log_softmax(logits.float(), -1).gather(-1, actions[:, None]).squeeze(-1)

    old, new = logp().detach(), logp()
    assert new.dtype == torch.float32
    ratio = torch.exp(new - old)
    assert torch.equal(ratio, torch.ones_like(ratio))


def test_cpu_autocast_does_not_upcast_log_softmax_so_callers_must():
    x = torch.randn(4, 8)
    lin = nn.Linear(8, 4)
    with Precision("bf16-mixed").autocast():
        logits = lin(x)
        assert logits.dtype == torch.bfloat16
        assert torch.log_softmax(logits, -1).dtype == torch.bfloat16        # the pitfall
        with float32_region():
            assert torch.log_softmax(logits.float(), -1).dtype == torch.float32
            assert (x @ lin.weight.t()).dtype == torch.float32               # autocast really off


@pytest.mark.parametrize("mode", TRAIN_MODES)
def test_step_keeps_fp32_params_and_learns(mode):
    model, prec = policy(), Precision(mode)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = torch.randn(32, 8), torch.randn(32, 4)
    losses = []
    for _ in range(20):
        with prec.autocast():
            out = model(x)
        loss = nn.functional.mse_loss(out.float(), y)
        stats = prec.step(loss, opt, model.parameters(), max_grad_norm=1.0)
        losses.append(loss.item())
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert losses[-1] < losses[0] and math.isfinite(stats["grad_norm"])


def test_fp16_scaler_on_cpu_counts_skipped_steps():
    model, prec = policy(), Precision("fp16-mixed")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(16, 8)
    with prec.autocast():
        out = model(x)
    assert out.dtype == torch.float16
    stats = prec.step(out.float().pow(2).mean(), opt, model.parameters(), max_grad_norm=None)
    assert stats["skipped"] == 0.0
    scale = prec.stats()["precision/loss_scale"]
    before = [p.detach().clone() for p in model.parameters()]
    with prec.autocast():
        out = model(x)
    stats = prec.step(out.float().mean() * float("inf"), opt, model.parameters(), max_grad_norm=1.0)
    assert stats["skipped"] == 1.0
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))    # no update applied
    assert prec.stats() == {"precision/loss_scale": scale / 2, "precision/skipped_steps": 1.0}
    restored = Precision("fp16-mixed")
    restored.load_state_dict(prec.state_dict())
    assert restored.stats() == prec.stats()


def test_check_train_mode():
    convnet = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(2))
    with pytest.raises(ValueError, match="fp16-mixed.*CPU.*convolution.*bf16-mixed"):
        check_train_mode("fp16-mixed", convnet, "cpu")
    check_train_mode("fp16-mixed", policy(), "cpu")
    check_train_mode("bf16-mixed", convnet, "cpu")
    check_train_mode("fp16-mixed", convnet, "cuda")          # GPU fp16 convs are fine
    for bad in ("fp8", "bf16"):
        with pytest.raises(ValueError, match="fp32, bf16-mixed, fp16-mixed"):
            check_train_mode(bad, policy())
    with pytest.raises(ValueError, match="allowed values"):
        Precision("half")
    with pytest.raises(ValueError, match="convolution"):
        Precision("fp16-mixed", "cpu", model=convnet)
