"""Our text policy and tokenizer as Hugging Face ``transformers`` objects, and back.

Why: a policy trained here can then be sampled, evaluated or trained further with the Hugging Face stack
(``generate``, TRL's trainers, ``save_pretrained``), and a GPT-2-shaped ``transformers`` model can come back
to be evaluated by our code. ``transformers`` (and ``tokenizers``) are optional: they are imported only
when one of these functions is called.

Our ``GPT`` is GPT-2's architecture with one detail named: the MLP uses the exact (erf) GELU, so the
``GPT2Config`` says ``activation_function="gelu"`` (GPT-2 checkpoints use the tanh approximation,
``"gelu_new"``). GPT-2 stores its projections as ``Conv1D`` (weight shaped in x out); ours are
``nn.Linear`` (out x in), so each is transposed on the way. The value and reward heads are not part of
the language model and are not exported; MoE blocks, LoRA adapters and quantized layers have no GPT-2
counterpart and are refused (merge LoRA first with ``rlhf.text.lora.merge_lora``).

Position ids: our model counts positions over real tokens (a left-padded row starts at 0). A
``GPT2LMHeadModel`` called without ``position_ids`` counts from the first column, padding included;
``generate`` derives them from the attention mask as we do. Pass ``position_ids_from_mask(mask)`` to a
plain forward over left-padded rows to get our numbers.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from rlhf.text.model import GPT, GPTConfig, position_ids_from_mask
from rlhf.text.tokenizer import EOS, PAD, UNK, Tokenizer

if TYPE_CHECKING:  # optional dependency
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

# nn.Linear weights of each block, transposed into GPT-2's Conv1D layout
_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
_HEADS = ("value_head.", "reward_head.")


def _require_transformers():
    try:
        import transformers
    except ImportError:
        raise ImportError("rlhf.text.hf needs the optional package transformers: pip install transformers") from None
    return transformers


def gpt2_config(config: GPTConfig, eos_id: int = 1, pad_id: int = 0) -> "GPT2Config":
    """The ``GPT2Config`` whose ``GPT2LMHeadModel`` computes what ``GPT(config)`` computes."""
    if config.moe is not None:
        raise ValueError("a GPT with MoE blocks has no GPT-2 counterpart (GPT2LMHeadModel has dense MLPs only)")
    transformers = _require_transformers()
    return transformers.GPT2Config(
        vocab_size=config.vocab_size, n_positions=config.block_size, n_embd=config.n_embd, n_layer=config.n_layer,
        n_head=config.n_head, n_inner=4 * config.n_embd, activation_function="gelu", layer_norm_epsilon=1e-5,
        resid_pdrop=config.dropout, embd_pdrop=config.dropout, attn_pdrop=config.dropout,
        scale_attn_weights=True, scale_attn_by_inverse_layer_idx=False, tie_word_embeddings=True,
        bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=pad_id)


def to_transformers(model: GPT, eos_id: int = 1, pad_id: int = 0) -> "GPT2LMHeadModel":
    """A ``GPT2LMHeadModel`` (fp32, on the CPU) holding a copy of ``model``'s language-model weights."""
    hf = _require_transformers().GPT2LMHeadModel(gpt2_config(model.config, eos_id, pad_id))
    target = hf.state_dict()
    ours = {k: v for k, v in model.state_dict().items() if not k.startswith(_HEADS)}
    if set(ours) != set(target) or any(ours[k].shape != (target[k].t() if k.endswith(_CONV1D) else target[k]).shape
                                       for k in ours):
        extra = sorted(set(ours) ^ set(target))[:3]
        raise ValueError("only a plain GPT converts to GPT-2 (no LoRA adapters or quantized layers; merge LoRA first "
                         f"with rlhf.text.lora.merge_lora); weights that do not match: {extra}")
    state = {k: (v.t() if k.endswith(_CONV1D) else v).detach().float().cpu().clone() for k, v in ours.items()}
    hf.load_state_dict(state)
    hf.generation_config.eos_token_id, hf.generation_config.pad_token_id = eos_id, pad_id
    return hf.eval()


def from_transformers(hf_model: "GPT2LMHeadModel", block_size: int | None = None) -> GPT:
    """Our ``GPT`` with a ``GPT2LMHeadModel``'s weights; refuses configs that would compute something else."""
    c = hf_model.config
    checks = {"activation_function": (c.activation_function, "gelu"),
              "layer_norm_epsilon": (c.layer_norm_epsilon, 1e-5),
              "n_inner": (c.n_inner or 4 * c.n_embd, 4 * c.n_embd),
              "scale_attn_weights": (c.scale_attn_weights, True),
              "scale_attn_by_inverse_layer_idx": (c.scale_attn_by_inverse_layer_idx, False),
              "tie_word_embeddings": (getattr(c, "tie_word_embeddings", True), True)}
    wrong = {k: got for k, (got, want) in checks.items() if got != want}
    if wrong:
        raise ValueError(f"this GPT2Config does not match rlhf.text.model.GPT: {wrong} (needed: "
                         f"{ {k: want for k, (_, want) in checks.items()} })")
    model = GPT(GPTConfig(vocab_size=c.vocab_size, block_size=block_size or c.n_positions, n_layer=c.n_layer,
                          n_head=c.n_head, n_embd=c.n_embd, dropout=c.resid_pdrop))
    src = hf_model.state_dict()
    state = {}
    for k in model.state_dict():
        v = src[k].detach().float().cpu()
        state[k] = (v.t() if k.endswith(_CONV1D) else v).clone()
    if block_size is not None:
        state["transformer.wpe.weight"] = state["transformer.wpe.weight"][:block_size]
    model.load_state_dict(state)
    return model.eval()


def to_transformers_tokenizer(tokenizer: Tokenizer) -> "PreTrainedTokenizerFast":
    """Our word-level vocabulary as a ``PreTrainedTokenizerFast`` with the same ids, left padding.

    Decoding joins words with single spaces and never merges " ." into "." (``clean_up_tokenization_spaces``
    off), so ``decode(ids, skip_special_tokens=True)`` gives what ``Tokenizer.decode`` gives up to the first
    ``<eos>``. ``<unk>`` is an ordinary token here (kept when decoding), as in ``Tokenizer.decode``.
    """
    transformers = _require_transformers()
    from tokenizers import Tokenizer as RustTokenizer
    from tokenizers import models, pre_tokenizers

    rust = RustTokenizer(models.WordLevel(vocab=dict(tokenizer.stoi), unk_token=UNK))
    rust.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=rust, pad_token=PAD, eos_token=EOS, padding_side="left", truncation_side="left",
        clean_up_tokenization_spaces=False, model_max_length=10**6)


def hf_logits(hf_model: "GPT2LMHeadModel", ids: Tensor, attention_mask: Tensor) -> Tensor:
    """Logits of a ``GPT2LMHeadModel`` over left-padded rows with our position ids (for comparisons)."""
    with torch.no_grad():
        return hf_model(input_ids=ids, attention_mask=attention_mask,
                        position_ids=position_ids_from_mask(attention_mask)).logits
