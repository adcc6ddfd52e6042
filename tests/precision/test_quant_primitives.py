"""Pure 8-bit quantizers against hand-computed values."""
import pytest
import torch

from rlhf.precision import (absmax_quantize, dequantize, fake_quantize, int8_matmul, llm_int8_matmul,
                            outlier_columns, zeropoint_quantize)


def test_absmax_per_tensor_hand_values():
    q, scale = absmax_quantize(torch.tensor([1.0, -2.0, 0.5, 4.0]))
    assert scale.shape == () and scale.item() == pytest.approx(4.0 / 127)
    # 1*127/4 = 31.75 -> 32; -63.5 -> -64 (half to even); 15.875 -> 16; 127
    assert q.dtype == torch.int8 and q.tolist() == [32, -64, 16, 127]


def test_absmax_per_channel_and_group_hand_values():
    x = torch.tensor([[1.0, -2.0, 0.5, 4.0], [0.0, 0.0, 0.0, 0.0]])
    q, scale = absmax_quantize(x, "channel")
    assert scale.shape == (2, 1)
    assert scale[0, 0].item() == pytest.approx(4.0 / 127) and scale[1, 0].item() == 1.0  # all-zero row
    assert q.tolist() == [[32, -64, 16, 127], [0, 0, 0, 0]]
    q, scale = absmax_quantize(x, "group", group_size=2)
    assert scale.shape == (2, 2)
    assert scale[0].tolist() == pytest.approx([2.0 / 127, 4.0 / 127])
    assert q[0].tolist() == [64, -127, 16, 127]       # 63.5 -> 64 (half to even), 15.875 -> 16
    assert torch.equal(dequantize(q, scale)[1], torch.zeros(4))


@pytest.mark.parametrize("granularity", ["tensor", "channel", "group"])
def test_absmax_round_trip_error_at_most_half_a_step(granularity):
    torch.manual_seed(0)
    x = torch.randn(16, 128) * torch.linspace(0.1, 5, 16).unsqueeze(1)
    q, scale = absmax_quantize(x, granularity, group_size=32)
    err = (dequantize(q, scale) - x).abs()
    step = scale if scale.dim() == 0 or scale.shape[-1] == 1 else scale.repeat_interleave(32, dim=-1)
    assert torch.all(err <= step / 2 + 1e-7)


def test_zeropoint_hand_values_and_exact_zero():
    x = torch.tensor([1.0, -2.0, 0.5, 4.0, 0.0])
    q, scale, zp = zeropoint_quantize(x)
    assert scale.item() == pytest.approx(6.0 / 255)   # range [-2, 4]
    assert zp.dtype == torch.uint8 and zp.item() == 85  # round(2 / (6/255)) = 85
    assert q.dtype == torch.uint8 and q.tolist() == [127, 0, 106, 255, 85]
    assert dequantize(q, scale, zp)[4].item() == 0.0


def test_zeropoint_one_sided_data_uses_full_range_and_keeps_zero():
    x = torch.tensor([[0.0, 1.0, 3.0, 2.0], [-4.0, 0.0, -1.0, -2.0]])
    q, scale, zp = zeropoint_quantize(x, "channel")
    assert zp.tolist() == [[0], [255]]
    assert q.tolist()[0] == [0, 85, 255, 170]
    deq = dequantize(q, scale, zp)
    assert deq[0, 0].item() == 0.0 and deq[1, 1].item() == 0.0
    assert torch.all((deq - x).abs() <= scale / 2 + 1e-7)


def test_zeropoint_group_wise_round_trip():
    torch.manual_seed(1)
    x = torch.relu(torch.randn(4, 64))
    q, scale, zp = zeropoint_quantize(x, "group", group_size=16)
    assert scale.shape == zp.shape == (4, 4)
    assert torch.all((dequantize(q, scale, zp) - x).abs() <= scale.repeat_interleave(16, -1) / 2 + 1e-7)


def test_bad_granularity_and_group_size():
    with pytest.raises(ValueError, match="granularity"):
        absmax_quantize(torch.ones(4), "row")
    with pytest.raises(ValueError, match="group_size"):
        absmax_quantize(torch.ones(2, 6), "group", group_size=4)


def test_fake_quantize_forward_rounds_backward_passes_through():
    x = torch.tensor([[0.3, -1.0, 0.77]], requires_grad=True)
    y = fake_quantize(x, "channel")
    q, scale = absmax_quantize(x.detach(), "channel")
    assert torch.equal(y.detach(), dequantize(q, scale))
    (y * torch.tensor([[1.0, 2.0, 3.0]])).sum().backward()
    assert x.grad.tolist() == [[1.0, 2.0, 3.0]]


def test_int8_matmul_hand_values():
    # weight rows absmax 127 and 2*127 -> scales 1 and 2: codes are exact
    w = torch.tensor([[127.0, 0.0], [-254.0, 2.0]])
    x = torch.tensor([[1.0, 127.0]])                   # row absmax 127 -> scale 1, exact codes
    w_q, w_scale = absmax_quantize(w, "channel")
    assert w_q.tolist() == [[127, 0], [-127, 1]]
    out = int8_matmul(x, w_q, w_scale)
    assert out.tolist() == [[127.0, 0.0]]              # 1*127 + 0; -254 + 254


def test_outlier_columns_and_decomposition():
    x = torch.tensor([[0.5, 7.0, -1.0], [0.1, 0.2, -6.0]])
    assert outlier_columns(x, 6.0).tolist() == [False, True, True]
    torch.manual_seed(0)
    w = torch.randn(8, 64)
    x = torch.randn(32, 64)
    x[:, 5] = 60.0
    exact = x @ w.t()
    plain = (llm_int8_matmul(x, w, threshold=None) - exact).norm() / exact.norm()
    mixed = (llm_int8_matmul(x, w, threshold=6.0) - exact).norm() / exact.norm()
    assert mixed < plain / 2
    # no outlier present: decomposition is a no-op
    x = torch.randn(4, 64)
    assert torch.equal(llm_int8_matmul(x, w, 6.0), llm_int8_matmul(x, w, None))
