import pytest
import torch
from torch import nn

from rlhf.text.model import GPT, GPTConfig, attention_bias, position_ids_from_mask


def tiny(**kw) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=11, block_size=16, n_layer=2, n_head=2, n_embd=16, **kw)).eval()


def test_default_size_and_layer_names():
    model = GPT(GPTConfig(vocab_size=181))
    assert 0.5e6 < model.num_params() < 3e6
    names = {name for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    assert {"transformer.h.0.attn.c_attn", "transformer.h.0.attn.c_proj", "transformer.h.0.mlp.c_fc",
            "transformer.h.0.mlp.c_proj", "lm_head"} <= names
    assert all(type(m) is nn.Linear for m in model.modules() if isinstance(m, nn.Linear))
    assert model.lm_head.weight is model.transformer.wte.weight


def test_output_shapes_and_zero_initialised_heads():
    model = tiny(value_head=True, reward_head=True)
    out = model(torch.randint(0, 11, (3, 5)))
    assert out.logits.shape == (3, 5, 11) and out.hidden_states.shape == (3, 5, 16)
    assert out.values.shape == out.rewards.shape == (3, 5)
    assert torch.all(out.values == 0) and torch.all(out.rewards == 0)
    assert out.past_kv is None
    plain = tiny()(torch.randint(0, 11, (3, 5)))
    assert plain.values is None and plain.rewards is None


def test_position_ids_and_mask_hand_computed():
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    assert position_ids_from_mask(mask).tolist() == [[0, 0, 0, 1], [0, 1, 2, 3]]
    bias = attention_bias(mask, query_length=4)
    assert bias.shape == (2, 1, 4, 4)
    assert bias[0, 0].int().tolist() == [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 1]]
    assert bias[1, 0].int().tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]]
    assert attention_bias(mask, query_length=1)[0, 0].int().tolist() == [[0, 0, 1, 1]]


def test_left_padded_batch_equals_each_row_alone():
    model = tiny(value_head=True)
    rows = [[3, 4, 5, 6, 7], [8, 9], [10, 3, 4]]
    width = max(map(len, rows))
    ids = torch.tensor([[0] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    batched = model(ids, attention_mask=mask)
    assert torch.isfinite(batched.logits).all()
    for i, row in enumerate(rows):
        alone = model(torch.tensor([row]))
        torch.testing.assert_close(batched.logits[i, width - len(row):], alone.logits[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(batched.values[i, width - len(row):], alone.values[0], atol=1e-5, rtol=1e-5)


def test_kv_cache_matches_full_forward():
    model = tiny()
    ids = torch.tensor([[0, 0, 3, 4, 5, 6, 7], [8, 9, 10, 3, 4, 5, 6]])
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1]])
    full = model(ids, attention_mask=mask).logits
    out = model(ids[:, :4], attention_mask=mask[:, :4], use_cache=True)
    steps = [out.logits]
    for t in range(4, 7):
        out = model(ids[:, t:t + 1], attention_mask=mask[:, :t + 1], past_kv=out.past_kv, use_cache=True)
        steps.append(out.logits)
    assert out.past_kv[0][0].shape == (2, 2, 7, 8)
    real = mask.bool()
    torch.testing.assert_close(torch.cat(steps, 1)[real], full[real], atol=1e-5, rtol=1e-5)


def test_errors_name_the_problem():
    model = tiny()
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match="attention_mask"):
        model(torch.zeros(1, 4, dtype=torch.long), attention_mask=torch.ones(1, 5))


def test_from_trunk_copies_weights_and_adds_fresh_heads():
    source = tiny()
    policy = GPT.from_trunk(source, value_head=True).eval()
    ids = torch.randint(0, 11, (2, 6))
    torch.testing.assert_close(policy(ids).logits, source(ids).logits)
    assert torch.all(policy(ids).values == 0)
    assert policy.lm_head.weight is policy.transformer.wte.weight
    assert policy.lm_head.weight.data_ptr() != source.lm_head.weight.data_ptr()


def test_dropout_is_configurable_and_off_in_eval():
    model = tiny(dropout=0.5)
    ids = torch.randint(0, 11, (2, 6))
    torch.testing.assert_close(model(ids).logits, model(ids).logits)
    model.train()
    assert not torch.allclose(model(ids).logits, model(ids).logits)
