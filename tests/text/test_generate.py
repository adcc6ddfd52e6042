import pytest
import torch

from rlhf.text.generate import filter_logits, generate, logprobs_from_logits, sample_completions
from rlhf.text.model import GPT, GPTConfig
from rlhf.text.task import Task
from rlhf.text.tokenizer import Tokenizer

PAD, EOS = 0, 1


def tiny(vocab_size: int = 12) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=vocab_size, block_size=64, n_layer=2, n_head=2, n_embd=16))


def prompts(vocab_size: int = 12):
    ids = torch.tensor([[0, 0, 3, 4], [5, 6, 7, 8], [0, 9, 10, 11]]) % vocab_size
    return ids, torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1], [0, 1, 1, 1]])


def run(model, use_cache, seed=0, **kw):
    ids, mask = prompts(model.config.vocab_size)
    return generate(model, ids, mask, kw.pop("max_new_tokens", 20), EOS, PAD, use_cache=use_cache,
                    generator=torch.Generator().manual_seed(seed), **kw)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_cached_and_uncached_generation_agree(temperature):
    model = tiny()
    cached, full = run(model, True, temperature=temperature), run(model, False, temperature=temperature)
    assert torch.equal(cached.sequences, full.sequences)
    assert torch.equal(cached.response_mask, full.response_mask)
    torch.testing.assert_close(cached.logprobs, full.logprobs, atol=1e-5, rtol=0)


def test_response_mask_and_padding_after_eos():
    out = run(tiny(vocab_size=4), True, max_new_tokens=40)     # 1 in 4 tokens is EOS: every row ends
    B, T = out.response.shape
    assert T < 40 and out.sequences.shape == (B, 4 + T)
    for row, mask, logp in zip(out.response.tolist(), out.response_mask.tolist(), out.logprobs):
        end = row.index(EOS)
        assert mask == [1] * (end + 1) + [0] * (T - end - 1)
        assert row[end + 1:] == [PAD] * (T - end - 1)
        assert torch.all(logp[end + 1:] == 0) and torch.all(logp[:end + 1] < 0)
    assert torch.equal(out.attention_mask, torch.cat([prompts(4)[1], out.response_mask], 1))


def test_logprobs_equal_a_full_forward_pass_over_the_sequences():
    model, temperature = tiny(), 0.8
    out = run(model, True, temperature=temperature)
    P = prompts()[0].shape[1]
    logits = model(out.sequences, attention_mask=out.attention_mask).logits[:, P - 1:-1]
    recomputed = logprobs_from_logits(logits, out.response, temperature)
    real = out.response_mask.bool()
    torch.testing.assert_close(recomputed[real], out.logprobs[real], atol=1e-5, rtol=0)


def test_generate_restores_training_mode_and_needs_positive_temperature():
    model = tiny().train()
    run(model, True, max_new_tokens=2)
    assert model.training
    with pytest.raises(ValueError, match="temperature"):
        run(model, True, temperature=0.0)


def test_filter_logits():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0]])
    assert torch.isinf(filter_logits(logits, top_k=2)).tolist() == [[True, False, False, True]]
    probs = logits.softmax(-1)[0]                                  # 0.09, 0.67, 0.24, 0.03
    assert probs[1] < 0.7 < probs[1] + probs[2]
    assert torch.isinf(filter_logits(logits, top_p=0.7)).tolist() == [[True, False, False, True]]
    assert torch.isinf(filter_logits(logits, top_p=0.5)).tolist() == [[True, False, True, True]]
    assert torch.equal(filter_logits(logits), logits)


def test_sample_completions_keeps_exact_ids():
    task = Task(seed=0)
    tokenizer = Tokenizer(task.vocabulary)
    model = tiny(vocab_size=tokenizer.vocab_size)
    completions = sample_completions(model, tokenizer, task.train_prompts[:5], max_new_tokens=6, batch_size=2,
                                     generator=torch.Generator().manual_seed(0))
    assert [c.prompt for c in completions] == task.train_prompts[:5]
    for c in completions:
        assert c.prompt_ids == tokenizer.encode(c.prompt)
        assert tokenizer.decode(c.response_ids) == c.response
        assert c.ended == (c.response_ids[-1:] == [tokenizer.eos_id]) and len(c.response_ids) <= 6
