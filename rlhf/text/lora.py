"""LoRA and QLoRA adapters for the text policy: train a few low-rank matrices, keep the base frozen.

``apply_lora`` wraps chosen linear layers in ``LoRALinear``, which adds ``scaling * B(A(x))`` to the
frozen base's output (Hu et al., 2021). With ``quantize_base`` the frozen base is first stored in
int8 or NF4 through ``rlhf.precision`` while the adapters train in fp32 (or bf16): QLoRA
(Dettmers et al., 2023). The PPO reference policy is the same model inside ``adapters_disabled``,
so no second copy of the SFT weights is kept in memory.

Why our own module and not peft: peft wraps only the layer types it knows (nn.Linear, Conv,
Embedding and the bitsandbytes / torchao / GPTQ quantized layers). Our quantized bases are
``rlhf.precision``'s plain-PyTorch ``Int8Linear`` and ``NF4Linear``, which peft does not recognise
(peft 0.21 fails on them: they hold buffers, no parameters), and the adapter itself is small. The math, initialisation and scaling are peft's (A Kaiming-
uniform with a=sqrt(5), B zero, ``scaling = alpha / rank``); ``tests/text/test_lora.py`` checks
that peft's LoRA and ours compute the same outputs from the same A/B weights.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rlhf.precision import QUANT_SCHEMES, Int8Linear, NF4Linear, model_memory, quantizable_linears, quantize_linear

DEFAULT_TARGETS = ("c_attn", "c_proj", "c_fc")
ADAM_STATE_BYTES_PER_PARAM = 8   # exp_avg + exp_avg_sq, fp32 whatever the parameter's dtype


class _Int8StraightThrough(torch.autograd.Function):
    """``base(x)`` forward; backward ``grad @ W_dequantized`` for x.

    ``Int8Linear`` rounds its input to int8 codes, whose gradient is zero almost everywhere, so
    without this the adapters of earlier layers would get no useful gradient. bitsandbytes'
    8-bit matmul does the same: the activation rounding is treated as identity in backward.
    """

    @staticmethod
    def forward(ctx, x: Tensor, base: Int8Linear) -> Tensor:  # type: ignore[override]
        ctx.base = base
        return base(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return grad @ ctx.base.dequantized_weight().to(grad.dtype), None


class LoRALinear(nn.Module):
    """A frozen linear-like ``base`` plus a trainable low-rank update ``scaling * B @ A``.

    ``base`` is anything with ``in_features``, ``out_features`` and a forward x -> y: nn.Linear,
    ``Int8Linear``, ``NF4Linear``. ``A`` (rank x in) starts Kaiming-uniform and ``B`` (out x rank)
    at zero, so a fresh wrapper computes exactly what the base computes. ``disabled = True`` makes
    forward return ``base(x)`` only (the reference policy). The adapter runs in ``dtype``; its
    output is cast back to the base output's dtype.
    """

    def __init__(self, base: nn.Module, rank: int = 8, alpha: float = 16.0, dropout: float = 0.0,
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        if rank < 1:
            raise ValueError(f"rank = {rank}: must be a positive integer")
        self.base = base
        self.in_features: int = base.in_features
        self.out_features: int = base.out_features
        self.rank, self.alpha, self.scaling = rank, alpha, alpha / rank
        self.disabled = False
        self.base.requires_grad_(False)
        device = next(iter([*base.parameters(), *base.buffers()]), torch.empty(0)).device
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, device=device, dtype=dtype))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, device=device, dtype=dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))   # as nn.Linear's default, LoRA and peft
        self.dropout: nn.Module = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    @property
    def weight(self) -> Tensor:
        """The base's weight (dequantized for quantized bases), without the adapter."""
        return self.base.weight

    @property
    def bias(self) -> Tensor | None:
        return self.base.bias

    def base_forward(self, x: Tensor) -> Tensor:
        if isinstance(self.base, Int8Linear) and torch.is_grad_enabled() and x.requires_grad:
            return _Int8StraightThrough.apply(x, self.base)
        return self.base(x)

    def forward(self, x: Tensor) -> Tensor:
        y = self.base_forward(x)
        if self.disabled:
            return y
        update = F.linear(F.linear(self.dropout(x).to(self.lora_A.dtype), self.lora_A), self.lora_B)
        return y + (update * self.scaling).to(y.dtype)

    def delta_weight(self) -> Tensor:
        """``scaling * B @ A`` (out x in), the change to the base weight that the adapter makes."""
        return (self.lora_B @ self.lora_A) * self.scaling

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, "
                f"alpha={self.alpha}, disabled={self.disabled}")


def _matches(name: str, patterns: Sequence[str]) -> bool:
    """``name`` ends with one of ``patterns`` at a dot boundary ("c_proj" matches "h.0.mlp.c_proj")."""
    return any(name == p or name.endswith("." + p) for p in patterns)


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def _tied_modules(model: nn.Module) -> set[str]:
    """Names of modules owning a parameter that is also reachable under another name (tied weights)."""
    owners: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        owners.setdefault(id(p), []).append(name.rpartition(".")[0])
    return {owner for names in owners.values() if len(names) > 1 for owner in names}


def apply_lora(model: nn.Module, rank: int = 8, alpha: float = 16.0,
               target_modules: Sequence[str] = DEFAULT_TARGETS, dropout: float = 0.0,
               quantize_base: str | None = None, adapter_dtype: torch.dtype = torch.float32,
               trainable_extra: Sequence[str] = ()) -> nn.Module:
    """Wrap the nn.Linear layers named by ``target_modules`` in ``LoRALinear``, in place; freeze the rest.

    A name matches when it ends with a pattern at a dot boundary: "c_proj" wraps both
    ``attn.c_proj`` and ``mlp.c_proj``, "attn.c_proj" only the first. ``lm_head`` is not a default
    target: it is tied to the token embedding. Afterwards only the adapters and the modules named
    by ``trainable_extra`` (e.g. ``("value_head",)``, same matching) have ``requires_grad``;
    embeddings, LayerNorms, lm_head and the wrapped bases are frozen.

    ``quantize_base`` ("int8", "int8-outlier" or "nf4"): QLoRA. Every frozen nn.Linear - the
    wrapped bases and any linear layer not targeted - is replaced through
    ``rlhf.precision.quantize_linear``, because the point is that the whole frozen base is
    low-bit. Two kinds stay float: ``trainable_extra`` modules (they are trained) and layers whose
    weight is tied to another parameter (quantizing lm_head would add an int copy next to the
    fp32 embedding it shares, not replace it).
    """
    if any(isinstance(m, LoRALinear) for m in model.modules()):
        raise ValueError("apply_lora: the model already has LoRA adapters")
    if quantize_base is not None and quantize_base not in QUANT_SCHEMES:
        raise ValueError(f"quantize_base = {quantize_base!r}: allowed values are None, {', '.join(QUANT_SCHEMES)}")
    linears = [name for name in quantizable_linears(model) if name]   # a bare Linear: use LoRALinear
    for pattern in target_modules:
        if not any(_matches(name, [pattern]) for name in linears):
            raise ValueError(f"target_modules: {pattern!r} matches no nn.Linear layer; "
                             f"available: {', '.join(linears)}")
    all_modules = [name for name, _ in model.named_modules() if name]
    for pattern in trainable_extra:
        if not any(_matches(name, [pattern]) for name in all_modules):
            raise ValueError(f"trainable_extra: {pattern!r} matches no module of the model")

    model.requires_grad_(False)
    tied = _tied_modules(model)
    for name in linears:
        if _matches(name, trainable_extra):
            continue
        layer = original = model.get_submodule(name)
        if quantize_base is not None and name not in tied:
            layer = quantize_linear(layer, quantize_base)
        if _matches(name, target_modules):
            layer = LoRALinear(layer, rank, alpha, dropout, adapter_dtype)
        if layer is not original:
            _set_submodule(model, name, layer)
    for name, module in model.named_modules():
        if name and _matches(name, trainable_extra):
            module.requires_grad_(True)
    return model


def lora_modules(model: nn.Module) -> Iterator[tuple[str, LoRALinear]]:
    return ((name, m) for name, m in model.named_modules() if isinstance(m, LoRALinear))


@contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Run ``model`` as its frozen base: every ``LoRALinear`` returns ``base(x)`` inside the block.

    This is the PPO reference policy - the SFT weights, without a second copy. Each layer's
    previous state is restored on exit, also when the block raises.
    """
    layers = [m for _, m in lora_modules(model)]
    before = [m.disabled for m in layers]
    for m in layers:
        m.disabled = True
    try:
        yield model
    finally:
        for m, state in zip(layers, before):
            m.disabled = state


def lora_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """What a LoRA run trains: the adapters' A/B plus every other trainable parameter (e.g. the value head).

    Load it back with ``model.load_state_dict(sd, strict=False)`` into a model prepared with the
    same ``apply_lora`` call on the same base.
    """
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    return {name: t.detach().clone() for name, t in model.state_dict().items()
            if name in trainable or name.endswith((".lora_A", ".lora_B"))}


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its float base (``W += scaling * B @ A``) and unwrap it, in place.

    For export: the result has plain nn.Linear layers again. Quantized bases are refused - adding
    the update to a dequantized weight and quantizing again would round most of it away; export
    ``lora_state_dict`` with the quantized base instead.
    """
    layers = list(lora_modules(model))
    quantized = [f"{name} ({type(m.base).__name__})" for name, m in layers if not isinstance(m.base, nn.Linear)]
    if quantized:
        raise ValueError(f"merge_lora: cannot merge into quantized bases: {', '.join(quantized)}; "
                         f"save lora_state_dict(model) instead, or apply LoRA to a float base")
    for name, m in layers:
        m.base.weight += m.delta_weight().to(m.base.weight.dtype)
        if name:
            _set_submodule(model, name, m.base)
        else:
            model = m.base
    return model


def _base_numel(model: nn.Module) -> int:
    """Logical parameter count: a quantized linear counts its weight and bias, stored as buffers."""
    n = sum(p.numel() for p in model.parameters())
    for m in model.modules():
        if isinstance(m, (Int8Linear, NF4Linear)):
            n += m.in_features * m.out_features + (m.bias.numel() if m.bias is not None else 0)
    return n


def trainable_fraction(model: nn.Module) -> float:
    """Trainable parameters / all parameters (adapters included, tied weights once, quantized weights
    counted by their logical size) - the ratio peft's ``print_trainable_parameters`` reports."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable / _base_numel(model)


def memory_report(model: nn.Module) -> dict[str, Any]:
    """Bytes a LoRA PPO run holds for weights and optimizer state (activations excluded).

    ``base_bytes``: frozen parameters and buffers (low-bit with QLoRA); ``adapter_bytes``: LoRA A/B;
    ``extra_trainable_bytes``: other trainable parameters (value head); ``gradient_bytes`` and
    ``optimizer_bytes`` (Adam, two fp32 tensors per trainable parameter) exist only for trainable
    parameters; ``reference_copy_bytes`` is 0 because the reference policy is this model inside
    ``adapters_disabled``. ``by_dtype`` is ``rlhf.precision.model_memory`` of the whole model.
    """
    by_dtype = model_memory(model)
    adapters = {id(p): p for _, m in lora_modules(model) for p in (m.lora_A, m.lora_B)}
    trainable = [p for p in model.parameters() if p.requires_grad]
    adapter = sum(p.numel() * p.element_size() for p in adapters.values())
    extra = sum(p.numel() * p.element_size() for p in trainable if id(p) not in adapters)
    n_trainable = sum(p.numel() for p in trainable)
    gradients = sum(p.numel() * p.element_size() for p in trainable)
    base = sum(by_dtype.values()) - adapter - extra
    optimizer = ADAM_STATE_BYTES_PER_PARAM * n_trainable
    return {
        "base_bytes": base,
        "adapter_bytes": adapter,
        "extra_trainable_bytes": extra,
        "gradient_bytes": gradients,
        "optimizer_bytes": optimizer,
        "reference_copy_bytes": 0,
        "total_bytes": base + adapter + extra + gradients + optimizer,
        "trainable_params": n_trainable,
        "trainable_fraction": trainable_fraction(model),
        "by_dtype": by_dtype,
    }
