"""Quantization-aware training: train through the rounding that deployment will apply.

``prepare_qat`` swaps nn.Linear for ``QATLinear``, an nn.Linear subclass whose forward uses
fake-quantized weights (and, for the int8 schemes, fake-quantized activations) with a
straight-through gradient. It simulates exactly what ``quantize_model`` later computes - per-row
absmax int8 weights and per-row int8 activations (outlier columns kept float for
"int8-outlier"), or NF4 weights - so the network learns weights that survive the rounding and
``quantize_model(qat_model, scheme)`` reproduces the trained network's outputs to float32
rounding. Because ``QATLinear`` is an nn.Linear, that call needs nothing special.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from rlhf.precision.layers import DEFAULT_OUTLIER_THRESHOLD, QUANT_SCHEMES, check_scheme, replace_linears
from rlhf.precision.nf4 import double_dequantize, double_quantize, nf4_dequantize, nf4_quantize
from rlhf.precision.quant import fake_quantize, outlier_columns


def fake_quantize_nf4(weight: torch.Tensor, double_quant: bool = True) -> torch.Tensor:
    """NF4 quantize-dequantize (as ``NF4Linear`` stores it) with a straight-through gradient."""
    packed, absmax = nf4_quantize(weight.detach())
    if double_quant:
        absmax = double_dequantize(*double_quantize(absmax))
    return weight + (nf4_dequantize(packed, absmax, weight.shape).to(weight.dtype) - weight).detach()


def fake_quantize_activations(x: torch.Tensor, threshold: float | None) -> torch.Tensor:
    """Per-row absmax int8 fake-quant of activations; columns with |x| >= threshold stay float."""
    if threshold is None:
        return fake_quantize(x, "channel")
    outliers = outlier_columns(x.detach(), threshold)
    if not outliers.any():
        return fake_quantize(x, "channel")
    regular = fake_quantize(x.masked_fill(outliers, 0.0), "channel")
    return torch.where(outliers, x, regular)


class QATLinear(nn.Linear):
    """nn.Linear whose forward sees its weights (and inputs) as ``scheme`` will store them."""

    def __init__(self, linear: nn.Linear, scheme: str = "int8", activations: bool = True,
                 threshold: float = DEFAULT_OUTLIER_THRESHOLD) -> None:
        super().__init__(linear.in_features, linear.out_features, linear.bias is not None,
                         device=linear.weight.device, dtype=linear.weight.dtype)
        with torch.no_grad():
            self.weight.copy_(linear.weight)
            if linear.bias is not None:
                self.bias.copy_(linear.bias)
        self.scheme = scheme
        self.quantize_activations = activations and scheme != "nf4"
        self.threshold = threshold if scheme == "int8-outlier" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.scheme == "nf4":
            weight = fake_quantize_nf4(self.weight)
        else:
            weight = fake_quantize(self.weight, "channel")
        if self.quantize_activations:
            x = fake_quantize_activations(x, self.threshold)
        return F.linear(x, weight, self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, scheme={self.scheme}, activations={self.quantize_activations}"


def prepare_qat(model: nn.Module, scheme: str = "int8", *, activations: bool = True,
                threshold: float = DEFAULT_OUTLIER_THRESHOLD) -> nn.Module:
    """A deep copy of ``model`` with every nn.Linear replaced by a trainable ``QATLinear``.

    ``activations`` also fake-quantizes Linear inputs (int8 schemes only; NF4 layers compute in
    float). Train the result as usual, then deploy with ``quantize_model(model, scheme)``.
    """
    check_scheme(scheme, QUANT_SCHEMES)
    return replace_linears(copy.deepcopy(model),
                           lambda linear: QATLinear(linear, scheme, activations, threshold),
                           what=f"prepare_qat(scheme={scheme!r})")
