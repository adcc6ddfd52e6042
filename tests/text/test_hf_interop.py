"""rlhf.text.hf: our GPT as a transformers GPT2LMHeadModel and back, and our tokenizer as a fast tokenizer."""
import pytest
import torch

from rlhf.text.lora import apply_lora
from rlhf.text.model import GPT, GPTConfig
from rlhf.text.task import Task
from rlhf.text.tokenizer import Tokenizer

transformers = pytest.importorskip("transformers")
from rlhf.text import hf  # noqa: E402  (after the skip: it is the module under test)

TOKENIZER = Tokenizer(Task.vocabulary)
CONFIG = GPTConfig(vocab_size=TOKENIZER.vocab_size, block_size=24, n_layer=2, n_head=4, n_embd=32)


def trained_like_gpt(seed: int = 0, **overrides) -> GPT:
    """Random weights well away from init (biases and LayerNorms included), so no term is trivially zero."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(**{**CONFIG.__dict__, **overrides}))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return model.eval()


def left_padded_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Task prompts of different lengths, each extended by a few words, left-padded."""
    task = Task(seed=0)
    texts = [p + " was really tasty and i loved it ." for p in task.prompts("train")[:3]] + task.prompts("heldout")[:3]
    return TOKENIZER.encode_batch(texts)


def max_gap(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    return float((a - b)[mask.bool()].abs().max())


def test_exported_model_gives_our_logits_on_left_padded_rows():
    model = trained_like_gpt()
    gpt2 = hf.to_transformers(model, TOKENIZER.eos_id, TOKENIZER.pad_id)
    assert isinstance(gpt2, transformers.GPT2LMHeadModel)
    ids, mask = left_padded_batch()
    assert (mask == 0).any(), "the batch must hold padded rows"
    with torch.no_grad():
        ours = model(ids, attention_mask=mask).logits
    assert max_gap(ours, hf.hf_logits(gpt2, ids, mask), mask) < 1e-4
    # tied embeddings survive the export: one tensor, not two copies
    assert gpt2.lm_head.weight.data_ptr() == gpt2.transformer.wte.weight.data_ptr()


def test_round_trip_and_import_of_a_transformers_model():
    gpt2 = transformers.GPT2LMHeadModel(hf.gpt2_config(CONFIG)).eval()  # built from a config, random weights
    back = hf.from_transformers(gpt2)
    ids, mask = left_padded_batch()
    with torch.no_grad():
        assert max_gap(back(ids, attention_mask=mask).logits, hf.hf_logits(gpt2, ids, mask), mask) < 1e-4
    model = trained_like_gpt(seed=3)
    again = hf.from_transformers(hf.to_transformers(model))
    for k, v in model.state_dict().items():
        assert torch.equal(again.state_dict()[k], v), k


def test_exported_generate_samples_what_ours_scores():
    """transformers' generate (position ids from the mask) with greedy decoding picks our argmax tokens."""
    model = trained_like_gpt(seed=1)
    gpt2 = hf.to_transformers(model, TOKENIZER.eos_id, TOKENIZER.pad_id)
    ids, mask = TOKENIZER.encode_batch(Task(seed=0).prompts("train")[:4])
    out = gpt2.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=5, min_new_tokens=5,
                        pad_token_id=TOKENIZER.pad_id, eos_token_id=TOKENIZER.eos_id)
    seq, m = ids, mask
    with torch.no_grad():
        for _ in range(5):
            nxt = model(seq, attention_mask=m).logits[:, -1].argmax(-1, keepdim=True)
            seq, m = torch.cat([seq, nxt], 1), torch.cat([m, torch.ones_like(nxt)], 1)
    assert torch.equal(out, seq)


def test_refused_conversions_name_the_reason():
    with pytest.raises(ValueError, match="MoE"):
        hf.gpt2_config(GPTConfig(**{**CONFIG.__dict__, "moe": {"experts": 2}}))
    lora = trained_like_gpt()
    apply_lora(lora, rank=2, alpha=4, target_modules=("c_attn",))
    with pytest.raises(ValueError, match="merge LoRA"):
        hf.to_transformers(lora)
    real_gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=50, n_positions=16, n_embd=32, n_layer=1, n_head=2))  # GPT-2's own tanh GELU
    with pytest.raises(ValueError, match="activation_function"):
        hf.from_transformers(real_gpt2)


def test_value_head_is_left_out_of_the_export():
    model = trained_like_gpt(value_head=True)
    gpt2 = hf.to_transformers(model)
    assert not any("value_head" in k for k in gpt2.state_dict())


def test_fast_tokenizer_has_our_ids_and_decoding():
    fast = hf.to_transformers_tokenizer(TOKENIZER)
    assert (fast.pad_token_id, fast.eos_token_id, fast.padding_side) == (TOKENIZER.pad_id, TOKENIZER.eos_id, "left")
    texts = Task(seed=0).prompts("train")[:5] + ["the soup was not very bland , zzz ."]  # "," and "zzz" are unknown
    for text in texts:
        assert fast(text)["input_ids"] == TOKENIZER.encode(text)
    ids = TOKENIZER.encode("the pasta was tasty .", add_eos=True) + [TOKENIZER.pad_id] * 2
    assert fast.decode(ids, skip_special_tokens=True) == TOKENIZER.decode(ids) == "the pasta was tasty ."
    batch = fast(texts[:3], padding=True, return_tensors="pt")
    ours_ids, ours_mask = TOKENIZER.encode_batch(texts[:3])
    assert torch.equal(batch["input_ids"], ours_ids) and torch.equal(batch["attention_mask"], ours_mask)
