"""QAT: training through fake quantization makes int8 deployment lossless."""
import pytest
import torch
from torch import nn

from rlhf.precision import QATLinear, prepare_qat, quantize_model


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))


def train(model, steps=150):
    torch.manual_seed(1)
    x = torch.randn(256, 16)
    y = torch.sin(x[:, :4].sum(-1, keepdim=True)) + 0.1 * x[:, 4:5] ** 2
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
    return model, loss.item()


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


def test_prepare_qat_copies_and_keeps_linear_interface():
    model = net()
    qat = prepare_qat(model)
    assert isinstance(qat[0], QATLinear) and isinstance(qat[0], nn.Linear) and type(model[0]) is nn.Linear
    assert torch.equal(qat[0].weight, model[0].weight)
    x = torch.randn(4, 16, requires_grad=True)
    qat(x).sum().backward()
    assert qat[0].weight.grad is not None and x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize("scheme", ["int8", "int8-outlier", "nf4"])
def test_qat_deployment_matches_trained_network(scheme):
    fp32_model, fp32_loss = train(net())
    qat_model, qat_loss = train(prepare_qat(net(), scheme))
    assert qat_loss < 1.5 * fp32_loss + 0.01                # fake quantization does not stop learning
    x = torch.randn(128, 16)
    with torch.no_grad():
        qat_gap = rel_err(quantize_model(qat_model, scheme)(x), qat_model(x))
        ptq_gap = rel_err(quantize_model(fp32_model, scheme)(x), fp32_model(x))
    assert qat_gap < 1e-5                                   # same rounding, only float summation order differs
    assert qat_gap < ptq_gap / 100
