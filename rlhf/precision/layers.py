"""Quantized stand-ins for nn.Linear, and ``quantize_model`` which swaps them into a copy.

Each layer stores real low-bit tensors as registered buffers (so ``state_dict`` and
``torch.save`` really shrink and load with ``weights_only=True``), takes and returns float
tensors in the caller's dtype, and can be refreshed in place from a float nn.Linear of the same
shape - which is how rollout actors follow the learner without rebuilding modules.
Only nn.Linear is quantized: convolutions and embeddings keep their float weights, and the
projections owned by nn.MultiheadAttention stay float because that module reads their
``.weight`` directly inside its fused kernel.

No bitsandbytes or torchao backend: these layers are plain PyTorch and run on any device. The
int8 path simulates integer arithmetic with float32 matmuls of integer codes (exact, see
``quant.int8_matmul``) and NF4 dequantizes to the compute dtype, so on CPU they save memory,
not time; a fused-kernel backend could replace the forward of these classes without changing
their buffers.
"""
from __future__ import annotations

import copy
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from rlhf.precision.amp import float32_region
from rlhf.precision.nf4 import (ABSMAX_BLOCK_SIZE, NF4_BLOCK_SIZE, double_dequantize, double_quantize,
                                nf4_dequantize, nf4_quantize)
from rlhf.precision.quant import absmax_quantize, dequantize, int8_matmul

QUANT_SCHEMES = ("int8", "int8-outlier", "nf4")
DEFAULT_OUTLIER_THRESHOLD = 6.0


class _QuantLinear(nn.Module):
    """Shared plumbing: shape attributes, bias buffer, float ``weight`` view, refresh."""

    def __init__(self, in_features: int, out_features: int, bias: bool) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)

    @property
    def weight(self) -> torch.Tensor:
        """Dequantized float32 weight, rebuilt on each access, for code that inspects weights."""
        return self.dequantized_weight()

    def dequantized_weight(self) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def refresh_(self, linear: nn.Linear) -> "_QuantLinear":
        """Re-quantize in place from ``linear`` (same shape); buffers keep their identity."""
        if (linear.in_features, linear.out_features) != (self.in_features, self.out_features):
            raise ValueError(f"cannot refresh a {self.in_features}->{self.out_features} quantized layer "
                             f"from a {linear.in_features}->{linear.out_features} Linear")
        for name, value in self._quantize(linear.weight.detach()).items():
            getattr(self, name).copy_(value)
        if self.bias is not None:
            self.bias.copy_(linear.bias.detach().float())
        return self

    def _quantize(self, weight: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def _init_from(self, linear: nn.Linear) -> None:
        for name, value in self._quantize(linear.weight.detach()).items():
            self.register_buffer(name, value)
        if self.bias is not None:
            self.bias = linear.bias.detach().float().clone()

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Int8Linear(_QuantLinear):
    """int8 weights with one fp32 scale per output row; activations quantized per row at run time.

    ``threshold=None`` quantizes every activation column ("int8"); a float threshold keeps the
    outlier columns in float32 (LLM.int8(), "int8-outlier"). See ``quant.int8_matmul``.
    """

    def __init__(self, linear: nn.Linear, threshold: float | None = None) -> None:
        super().__init__(linear.in_features, linear.out_features, linear.bias is not None)
        self.threshold = threshold
        self._init_from(linear)

    def _quantize(self, weight: torch.Tensor) -> dict[str, torch.Tensor]:
        weight_q, weight_scale = absmax_quantize(weight, "channel")
        return {"weight_q": weight_q, "weight_scale": weight_scale}

    def dequantized_weight(self) -> torch.Tensor:
        return dequantize(self.weight_q, self.weight_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with float32_region():                # an autocast matmul would round the int32-exact sums
            out = int8_matmul(x, self.weight_q, self.weight_scale, self.threshold)
            if self.bias is not None:
                out = out + self.bias
        return out.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, threshold={self.threshold}"


class NF4Linear(_QuantLinear):
    """Packed NF4 weights (two codes per byte) with blockwise scales, optionally double-quantized.

    Forward dequantizes the weight to the input's dtype and runs an ordinary matmul, as QLoRA
    does: NF4 is a storage format, the arithmetic happens in the compute dtype.
    """

    def __init__(self, linear: nn.Linear, double_quant: bool = True, block_size: int = NF4_BLOCK_SIZE) -> None:
        super().__init__(linear.in_features, linear.out_features, linear.bias is not None)
        self.double_quant, self.block_size = double_quant, block_size
        self._init_from(linear)

    def _quantize(self, weight: torch.Tensor) -> dict[str, torch.Tensor]:
        packed, absmax = nf4_quantize(weight, self.block_size)
        if not self.double_quant:
            return {"weight_packed": packed, "absmax": absmax}
        codes, scale, offset = double_quantize(absmax, ABSMAX_BLOCK_SIZE)
        return {"weight_packed": packed, "absmax_q": codes, "absmax_scale": scale, "absmax_offset": offset}

    def dequantized_weight(self) -> torch.Tensor:
        if self.double_quant:
            absmax = double_dequantize(self.absmax_q, self.absmax_scale, self.absmax_offset, ABSMAX_BLOCK_SIZE)
        else:
            absmax = self.absmax
        return nf4_dequantize(self.weight_packed, absmax, (self.out_features, self.in_features), self.block_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.dequantized_weight().to(x.dtype), bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, double_quant={self.double_quant}, block_size={self.block_size}"


def check_scheme(scheme: str, allowed: tuple[str, ...] = QUANT_SCHEMES, key: str = "scheme") -> None:
    if scheme not in allowed:
        raise ValueError(f"{key} = {scheme!r}: allowed values are {', '.join(allowed)}")


def quantizable_linears(model: nn.Module) -> list[str]:
    """Qualified names of the nn.Linear modules ``quantize_model`` would replace."""
    skip = {f"{name}.{child}" if name else child
            for name, module in model.named_modules() if isinstance(module, nn.MultiheadAttention)
            for child, _ in module.named_children()}
    return [name for name, module in model.named_modules() if isinstance(module, nn.Linear) and name not in skip]


def quantize_linear(linear: nn.Linear, scheme: str, *, threshold: float = DEFAULT_OUTLIER_THRESHOLD,
                    double_quant: bool = True, block_size: int = NF4_BLOCK_SIZE) -> _QuantLinear:
    """One nn.Linear -> its quantized stand-in for ``scheme``."""
    check_scheme(scheme)
    if scheme == "nf4":
        return NF4Linear(linear, double_quant=double_quant, block_size=block_size)
    return Int8Linear(linear, threshold=threshold if scheme == "int8-outlier" else None)


def replace_linears(model: nn.Module, make: Callable[[nn.Linear], nn.Module], what: str) -> nn.Module:
    """Swap every quantizable nn.Linear of ``model`` (in place) for ``make(linear)``.

    A bare nn.Linear is itself replaced, so use the return value.
    """
    names = quantizable_linears(model)
    if not names:
        raise ValueError(f"{what}: the model has no nn.Linear layer to quantize "
                         f"(only nn.Linear is quantized; convolutions and embeddings stay float)")
    if names == [""]:
        return make(model)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, make(getattr(parent, child)))
    return model


def quantize_model(model: nn.Module, scheme: str, *, threshold: float = DEFAULT_OUTLIER_THRESHOLD,
                   double_quant: bool = True, block_size: int = NF4_BLOCK_SIZE) -> nn.Module:
    """A deep copy of ``model`` with its nn.Linear layers quantized by ``scheme``.

    schemes: "int8" (per-row absmax weights, per-row activations), "int8-outlier" (the same with
    the LLM.int8() float path for activation columns with any |x| >= ``threshold``), "nf4"
    (blockwise 4-bit NormalFloat, ``double_quant`` for the block constants). The input model is
    untouched; everything other than nn.Linear (convs, norms, buffers) is copied as is.
    A state dict of the result loads into ``quantize_model`` of a fresh model of the same
    architecture and scheme.
    """
    check_scheme(scheme)
    quantized = copy.deepcopy(model)
    return replace_linears(
        quantized, lambda linear: quantize_linear(linear, scheme, threshold=threshold,
                                                  double_quant=double_quant, block_size=block_size),
        what=f"quantize_model(scheme={scheme!r})")
