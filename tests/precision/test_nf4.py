"""NF4 blockwise 4-bit quantization, packing and double quantization."""
import pytest
import torch

from rlhf.precision import (NF4_LEVELS, double_dequantize, double_quantize, nf4_dequantize, nf4_quantize,
                            pack_4bit, unpack_4bit)


def test_levels_are_qlora_constants():
    assert len(NF4_LEVELS) == 16 and NF4_LEVELS[0] == -1.0 and NF4_LEVELS[7] == 0.0 and NF4_LEVELS[15] == 1.0
    assert NF4_LEVELS[8] == pytest.approx(0.07958029955625534)
    assert NF4_LEVELS[1] == pytest.approx(-0.6961928009986877)
    assert list(NF4_LEVELS) == sorted(NF4_LEVELS)


def test_levels_are_normal_quantiles():
    # positive half: N(0,1) quantiles at 9 evenly spaced probabilities from 0.5 to 1 - delta, normalised to 1
    normal = torch.distributions.Normal(0.0, 1.0)
    delta = 0.5 * (1 / 32 + 1 / 30)
    pos = normal.icdf(torch.linspace(0.5, 1 - delta, 9, dtype=torch.float64).float())
    assert (pos / pos.max()).tolist()[1:] == pytest.approx(list(NF4_LEVELS[8:]), abs=1e-5)


def test_pack_unpack_hand_values():
    packed = pack_4bit(torch.tensor([1, 2, 15, 0, 7]))
    assert packed.dtype == torch.uint8 and packed.tolist() == [0x12, 0xF0, 0x70]
    assert unpack_4bit(packed, 5).tolist() == [1, 2, 15, 0, 7]


def test_nf4_hand_values():
    x = torch.tensor([2.0, -2.0, 0.0, 0.16, 1.0])      # one block, absmax 2
    packed, absmax = nf4_quantize(x)
    assert absmax.tolist() == [2.0]
    # 0.08 -> level 8 (0.0796); 0.5 -> level 12 (0.4407, nearer than 0.5626)
    assert unpack_4bit(packed, 5).tolist() == [15, 0, 7, 8, 12]
    deq = nf4_dequantize(packed, absmax, x.shape)
    assert deq.tolist() == pytest.approx([2.0, -2.0, 0.0, 2 * NF4_LEVELS[8], 2 * NF4_LEVELS[12]])


def test_nf4_relative_error_on_gaussian_weights():
    torch.manual_seed(0)
    w = torch.randn(256, 384)
    packed, absmax = nf4_quantize(w)
    assert packed.numel() == w.numel() // 2 and absmax.numel() == w.numel() // 64
    rel = ((nf4_dequantize(packed, absmax, w.shape) - w).norm() / w.norm()).item()
    assert 0.05 <= rel <= 0.15


def test_nf4_odd_sizes_pad_and_crop():
    torch.manual_seed(0)
    w = torch.randn(7, 13)                              # 91 elements: odd, not a multiple of 64
    packed, absmax = nf4_quantize(w)
    assert packed.numel() == 46 and absmax.numel() == 2
    assert nf4_dequantize(packed, absmax, w.shape).shape == w.shape


def test_double_quantization_of_block_constants():
    torch.manual_seed(0)
    absmax = torch.rand(600) + 2.0
    codes, scale, offset = double_quantize(absmax)
    assert codes.dtype == torch.int8 and codes.numel() == 600 and scale.numel() == 3 and offset.dim() == 0
    back = double_dequantize(codes, scale, offset)
    assert torch.all((back - absmax).abs() <= scale.repeat_interleave(256)[:600] / 2 + 1e-6)
    w = torch.randn(128, 256)
    packed, am = nf4_quantize(w)
    rel_single = (nf4_dequantize(packed, am, w.shape) - w).norm() / w.norm()
    rel_double = (nf4_dequantize(packed, double_dequantize(*double_quantize(am)), w.shape) - w).norm() / w.norm()
    assert rel_double < rel_single * 1.02
