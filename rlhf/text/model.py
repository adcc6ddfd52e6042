"""A tiny GPT (after nanoGPT's model.py) with optional value and reward heads and a KV cache.

Batches of prompts of different lengths are left-padded: ``attention_mask`` (B, L) marks real
tokens, padded keys are never attended to, and position ids count real tokens only, so a row's
real positions compute exactly what the same row would compute unpadded. Every linear layer is
a plain ``nn.Linear`` so that ``rlhf.precision`` can swap in quantized layers and LoRA can wrap
them; the projections keep nanoGPT's names (``attn.c_attn``, ``attn.c_proj``, ``mlp.c_fc``,
``mlp.c_proj``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rlhf.errors import ConfigError
from rlhf.moe import MoE, MoESettings, auxiliary_loss, moe_layers

KVCache = tuple[tuple[Tensor, Tensor], ...]   # per layer: keys, values, each (B, n_head, L, head_dim)


@dataclass
class GPTConfig:
    vocab_size: int
    block_size: int = 48       # longest real sequence (prompt + response); padding does not count
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    value_head: bool = False   # per-token value estimate for PPO, sharing the trunk
    reward_head: bool = False  # per-token scalar read at the last real token by the reward model
    moe: MoESettings | None = None  # each block's FFN becomes a Mixture of FFN experts (rlhf.moe)

    def __post_init__(self) -> None:
        if isinstance(self.moe, dict):  # read back from a checkpoint's asdict()
            self.moe = MoESettings(**self.moe)


@dataclass
class GPTOutput:
    logits: Tensor                  # (B, T, vocab_size)
    hidden_states: Tensor           # (B, T, n_embd), after the final LayerNorm
    values: Tensor | None = None    # (B, T) when config.value_head
    rewards: Tensor | None = None   # (B, T) when config.reward_head
    past_kv: KVCache | None = None  # when use_cache


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        assert config.n_embd % config.n_head == 0
        self.n_head, self.dropout = config.n_head, config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor, attn_mask: Tensor | None,
                past: tuple[Tensor, Tensor] | None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        B, T, C = x.shape
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
                   for t in self.c_attn(x).split(C, dim=2))
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=attn_mask is None,
                                           dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y)), (k, v)


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd)
        self.mlp = MLP(config) if config.moe is None else \
            MoE([MLP(config) for _ in range(config.moe.experts)], config.n_embd, config.moe)

    def forward(self, x: Tensor, attn_mask: Tensor | None,
                past: tuple[Tensor, Tensor] | None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        a, kv = self.attn(self.ln_1(x), attn_mask, past)
        x = x + a
        return x + self.mlp(self.ln_2(x)), kv


def attention_bias(attention_mask: Tensor, query_length: int) -> Tensor:
    """Boolean SDPA mask (B, 1, T, L): causal, padded keys hidden, for the last ``query_length`` positions.

    Each position may also see itself, so a padding query (whose keys are all padding) stays
    finite instead of producing NaN; its output is never used.
    """
    L = attention_mask.shape[1]
    q_pos = torch.arange(L - query_length, L, device=attention_mask.device)[:, None]
    k_pos = torch.arange(L, device=attention_mask.device)[None, :]
    visible = (k_pos <= q_pos) & attention_mask.bool()[:, None, None, :]
    return visible | (k_pos == q_pos)


def position_ids_from_mask(attention_mask: Tensor) -> Tensor:
    """Position of each token among its row's real tokens (0 for leading padding)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


class GPT(nn.Module):
    """Decoder-only transformer: token + learned position embeddings, pre-LN blocks, tied lm_head.

    The optional value head is a zero-initialised ``nn.Linear(n_embd, 1)`` on the final hidden
    state, sharing the trunk with the language model (as TRL's AutoModelForCausalLMWithValueHead):
    one forward pass yields both the log-probs and the values PPO needs, the cheapest choice on a
    CPU. Zero init makes the first value estimates 0 rather than noise. The reward head is the
    same kind of layer, read by ``RewardModel`` at each sequence's last real token.
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying, as GPT-2
        self.value_head = nn.Linear(config.n_embd, 1) if config.value_head else None
        self.reward_head = nn.Linear(config.n_embd, 1) if config.reward_head else None
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):  # GPT-2's scaled init of residual projections
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))
        for head in (self.value_head, self.reward_head):
            if head is not None:
                nn.init.zeros_(head.weight)
                nn.init.zeros_(head.bias)
        self.moe_layers = moe_layers(self)  # a plain list: not registered twice as submodules

    def auxiliary_loss(self) -> Tensor | None:
        """The MoE FFNs' load-balancing (+ z) loss from the last forward; None without MoE."""
        return auxiliary_loss(self.moe_layers) if self.moe_layers else None

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    @classmethod
    def from_trunk(cls, source: "GPT", *, value_head: bool = False, reward_head: bool = False) -> "GPT":
        """A new model with ``source``'s transformer and lm_head weights and fresh (zero) heads.

        This is how the reward model and the PPO policy start from the SFT model.
        """
        model = cls(replace(source.config, value_head=value_head, reward_head=reward_head))
        trunk = {k: v for k, v in source.state_dict().items() if not k.startswith(("value_head.", "reward_head."))}
        missing, unexpected = model.load_state_dict(trunk, strict=False)
        assert not unexpected and all(k.startswith(("value_head.", "reward_head.")) for k in missing)
        return model.to(next(source.parameters()).device)

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count; position embeddings excluded by default (as nanoGPT; wte is tied to lm_head)."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.transformer.wpe.weight.numel() if non_embedding else n

    def forward(self, idx: Tensor, attention_mask: Tensor | None = None, past_kv: KVCache | None = None,
                position_ids: Tensor | None = None, use_cache: bool = False) -> GPTOutput:
        """Run ``idx`` (B, T) after an optional cache of earlier positions.

        ``attention_mask`` (B, past + T) marks real tokens (1) and padding (0) over the cached and
        the new positions together. Without a mask every token is real and the plain causal
        kernel is used. Position ids default to each token's index among its row's real tokens.
        """
        B, T = idx.shape
        past_len = past_kv[0][0].shape[2] if past_kv is not None else 0
        if attention_mask is None and past_len == 0:
            attn_mask = None
            if position_ids is None:
                position_ids = torch.arange(T, device=idx.device).expand(B, T)
        else:
            if attention_mask is None:
                attention_mask = torch.ones(B, past_len + T, dtype=torch.long, device=idx.device)
            if attention_mask.shape != (B, past_len + T):
                raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}, "
                                 f"expected (batch, cached + new) = ({B}, {past_len + T})")
            attn_mask = attention_bias(attention_mask, T)
            if position_ids is None:
                position_ids = position_ids_from_mask(attention_mask)[:, past_len:]
        if int(position_ids.max()) >= self.config.block_size:
            raise ConfigError(f"text.model.block_size = {self.config.block_size}: a sequence of "
                              f"{int(position_ids.max()) + 1} real tokens is longer (raise block_size)")

        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(position_ids))
        new_kv = []
        for i, block in enumerate(self.transformer.h):
            x, kv = block(x, attn_mask, past_kv[i] if past_kv is not None else None)
            new_kv.append(kv)
        x = self.transformer.ln_f(x)
        return GPTOutput(
            logits=self.lm_head(x),
            hidden_states=x,
            values=self.value_head(x).squeeze(-1) if self.value_head is not None else None,
            rewards=self.reward_head(x).squeeze(-1) if self.reward_head is not None else None,
            past_kv=tuple(new_kv) if use_cache else None,
        )
