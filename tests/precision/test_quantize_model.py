"""quantize_model: real low-bit buffers, accuracy, save/load, architectures, errors."""
import io

import pytest
import torch
from torch import nn

from rlhf.precision import (QUANT_SCHEMES, Int8Linear, NF4Linear, model_memory, quantize_model, serialized_bytes,
                            state_dict_bytes)


def mlp(seed=0, width=256):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                         nn.Linear(width, 16))


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


class CNNPolicy(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("obs_mean", torch.zeros(3, 16, 16))
        self.conv = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2), nn.ReLU(),
                                  nn.Flatten())
        self.head = nn.Sequential(nn.Linear(8 * 3 * 3, 64), nn.Tanh(), nn.Linear(64, 4))

    def forward(self, x):
        return self.head(self.conv(x - self.obs_mean))


class Block(nn.Module):
    """nanoGPT-style block with explicit Linear projections."""

    def __init__(self, d=32, heads=4):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
        q, k, v = (z.view(b, t, self.heads, -1).transpose(1, 2) for z in (q, k, v))
        y = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.ln2(x))


class TinyGPT(nn.Module):
    def __init__(self, vocab=50, d=32):
        super().__init__()
        torch.manual_seed(0)
        self.wte, self.wpe = nn.Embedding(vocab, d), nn.Embedding(16, d)
        self.blocks = nn.Sequential(Block(d), Block(d))
        self.ln_f, self.lm_head = nn.LayerNorm(d), nn.Linear(d, vocab, bias=False)
        self.value_head = nn.Linear(d, 1)

    def forward(self, idx):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        h = self.ln_f(self.blocks(x))
        return self.lm_head(h), self.value_head(h).squeeze(-1)


@pytest.mark.parametrize("scheme", QUANT_SCHEMES)
def test_layers_are_replaced_input_untouched(scheme):
    model = mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    q = quantize_model(model, scheme)
    kinds = [type(m) for m in q if not isinstance(m, nn.ReLU)]
    assert kinds == [NF4Linear if scheme == "nf4" else Int8Linear] * 3
    assert all(isinstance(m, nn.Linear) for m in model if not isinstance(m, nn.ReLU))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert list(q.parameters()) == []
    dtypes = set(model_memory(q))
    assert ("int8" in dtypes) if scheme != "nf4" else ("uint8" in dtypes)


def test_state_dict_bytes_shrink():
    # measured as the sum of tensor nbytes in state_dict() (and, looser, as torch.save size)
    model = mlp()
    fp32 = state_dict_bytes(model)
    assert state_dict_bytes(quantize_model(model, "int8")) <= 0.3 * fp32
    assert state_dict_bytes(quantize_model(model, "nf4")) <= 0.2 * fp32
    assert state_dict_bytes(quantize_model(model, "nf4", double_quant=False)) <= 0.2 * fp32
    assert serialized_bytes(quantize_model(model, "int8")) <= 0.3 * serialized_bytes(model)
    assert serialized_bytes(quantize_model(model, "nf4")) <= 0.2 * serialized_bytes(model)


def test_int8_accurate_on_normal_inputs_and_outlier_path_helps():
    model = mlp()
    torch.manual_seed(1)
    x = torch.randn(64, 256)
    ref = model(x)
    assert rel_err(quantize_model(model, "int8")(x), ref) < 0.10
    assert rel_err(quantize_model(model, "nf4")(x), ref) < 0.25
    x_out = x.clone()
    x_out[:, 7] = 40.0                                    # one systematic outlier feature
    ref = model(x_out)
    e_plain = rel_err(quantize_model(model, "int8")(x_out), ref)
    e_mixed = rel_err(quantize_model(model, "int8-outlier")(x_out), ref)
    assert e_mixed < e_plain


@pytest.mark.parametrize("scheme", QUANT_SCHEMES)
def test_dtype_follows_input(scheme):
    q = quantize_model(mlp(width=64), scheme)
    x = torch.randn(3, 64)
    assert q(x).dtype == torch.float32
    assert q(x.to(torch.bfloat16)).dtype == torch.bfloat16
    assert q(x.double()).dtype == torch.float64


@pytest.mark.parametrize("scheme", QUANT_SCHEMES)
def test_save_load_weights_only(scheme):
    model = mlp(width=64)
    q = quantize_model(model, scheme)
    buf = io.BytesIO()
    torch.save(q.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    fresh = quantize_model(mlp(seed=123, width=64), scheme)
    x = torch.randn(5, 64)
    assert not torch.equal(fresh(x), q(x))
    fresh.load_state_dict(state)
    assert torch.equal(fresh(x), q(x))


@pytest.mark.parametrize("scheme", QUANT_SCHEMES)
def test_cnn_policy_convs_stay_float(scheme):
    torch.manual_seed(0)
    model = CNNPolicy()
    model.obs_mean.fill_(0.25)
    q = quantize_model(model, scheme)
    assert isinstance(q.conv[0], nn.Conv2d) and q.conv[0].weight.dtype == torch.float32
    assert torch.equal(q.obs_mean, model.obs_mean)
    x = torch.rand(4, 3, 16, 16)
    assert rel_err(q(x), model(x)) < (0.05 if scheme != "nf4" else 0.2)


@pytest.mark.parametrize("scheme", QUANT_SCHEMES)
def test_small_transformer(scheme):
    model = TinyGPT()
    q = quantize_model(model, scheme)
    idx = torch.randint(0, 50, (2, 12))
    logits, values = q(idx)
    ref_logits, ref_values = model(idx)
    assert logits.shape == ref_logits.shape and values.shape == ref_values.shape
    assert rel_err(logits, ref_logits) < (0.05 if scheme != "nf4" else 0.2)


def test_torch_transformer_layer_keeps_attention_projection_float():
    torch.manual_seed(0)
    model = nn.Sequential(nn.TransformerEncoderLayer(32, 4, 64, batch_first=True, dropout=0.0), nn.Linear(32, 2))
    q = quantize_model(model, "int8").eval()
    assert isinstance(q[0].self_attn.out_proj, nn.Linear) and isinstance(q[0].linear1, Int8Linear)
    x = torch.randn(2, 5, 32)
    with torch.no_grad():
        assert rel_err(q(x), model.eval()(x)) < 0.05


def test_unknown_scheme_and_no_linear():
    with pytest.raises(ValueError, match="int8, int8-outlier, nf4"):
        quantize_model(mlp(width=8), "int4")
    with pytest.raises(ValueError, match="nf4.*no nn.Linear"):
        quantize_model(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), "nf4")


def test_weight_view_is_dequantized():
    model = mlp(width=64)
    q = quantize_model(model, "int8")
    assert q[0].weight.shape == model[0].weight.shape
    assert (q[0].weight - model[0].weight).abs().max() <= q[0].weight_scale.max() / 2 + 1e-7


@pytest.mark.parametrize("scheme", QUANT_SCHEMES)
def test_bare_linear_is_replaced(scheme):
    lin = nn.Linear(64, 8)
    q = quantize_model(lin, scheme)
    assert isinstance(q, NF4Linear if scheme == "nf4" else Int8Linear) and isinstance(lin, nn.Linear)
    x = torch.randn(2, 64)
    assert rel_err(q(x), lin(x)) < (0.02 if scheme != "nf4" else 0.2)


def test_int8_layer_ignores_outer_autocast():
    from rlhf.precision import Precision

    q = quantize_model(mlp(width=64), "int8")
    x = torch.randn(8, 64)
    with Precision("bf16-mixed").autocast():
        inside = q(x)
    assert inside.dtype == torch.float32 and torch.equal(inside, q(x))
