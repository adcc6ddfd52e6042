"""8-bit quantization math: pure tensor functions, no modules, no state.

Conventions shared by every function here:

* ``scale`` always broadcasts against the quantized tensor *after* grouping. A 0-d scale is
  per-tensor, shape ``(rows, 1)`` is per-channel (one scale per row, i.e. per output feature of a
  Linear weight), shape ``(rows, n_groups)`` is group-wise: the last axis is cut into ``n_groups``
  contiguous groups of equal size. ``dequantize`` reads the grouping back from the scale's shape,
  so quantized tensors need no side metadata.
* Rounding is ``torch.round`` (half to even), which is what the integer kernels of common
  backends do too.
* An all-zero group gets scale 1 instead of 0, so dequantization never divides by zero or
  produces NaN; its codes are all 0 anyway.
"""
from __future__ import annotations

import torch

GRANULARITIES = ("tensor", "channel", "group")
INT8_MAX = 127
UINT8_MAX = 255


def _grouped(x: torch.Tensor, granularity: str, group_size: int) -> torch.Tensor:
    """View ``x`` so that a reduction over the last axis yields one value per scale."""
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity = {granularity!r}: allowed values are {', '.join(GRANULARITIES)}")
    if granularity == "tensor":
        return x.reshape(1, -1)
    rows = x.reshape(-1, x.shape[-1]) if x.dim() > 1 else x.reshape(1, -1)
    if granularity == "channel":
        return rows.unsqueeze(1)                                     # (rows, 1, cols)
    if group_size < 1 or rows.shape[-1] % group_size:
        raise ValueError(f"group_size = {group_size}: must divide the last dimension ({rows.shape[-1]})")
    return rows.reshape(rows.shape[0], -1, group_size)               # (rows, groups, group_size)


def _scale_shape(x: torch.Tensor, granularity: str, stat: torch.Tensor) -> torch.Tensor:
    """Give a per-group statistic the public scale shape described in the module docstring."""
    if granularity == "tensor":
        return stat.reshape(())
    return stat.reshape(*x.shape[:-1], -1)


def _expand(scale: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Broadcast a (possibly group-wise) scale to the full shape of ``like``."""
    if scale.dim() == 0 or scale.shape[-1] == 1:
        return scale
    groups = scale.shape[-1]
    return scale.repeat_interleave(like.shape[-1] // groups, dim=-1)


def absmax_quantize(x: torch.Tensor, granularity: str = "tensor",
                    group_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8: ``q = round(x / s)`` with ``s = max|x| / 127`` per tensor, row or group.

    Symmetric quantization needs no zero point, so an int8 x int8 product dequantizes with a
    single multiply - the reason it is the default for weights and (row-wise) activations.
    Returns ``(q: int8, scale: float32)``; ``|x - q * scale| <= scale / 2`` elementwise.
    """
    x = x.float()
    absmax = _grouped(x, granularity, group_size).abs().amax(dim=-1)
    scale = _scale_shape(x, granularity, absmax) / INT8_MAX
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round(x / _expand(scale, x)).clamp_(-INT8_MAX, INT8_MAX).to(torch.int8)
    return q, scale


def zeropoint_quantize(x: torch.Tensor, granularity: str = "tensor",
                       group_size: int = 64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric 8-bit: ``q = round(x / s) + z`` in uint8, covering ``[min(x, 0), max(x, 0)]``.

    Uses all 256 codes for one-sided data (post-ReLU activations) where absmax would waste half.
    The range always contains 0 and ``z`` is an integer, so 0.0 dequantizes to exactly 0.0 -
    padding and masked positions stay exactly zero.
    Returns ``(q: uint8, scale: float32, zero_point: uint8)`` with scale and zero point shaped alike.
    """
    x = x.float()
    g = _grouped(x, granularity, group_size)
    lo = _scale_shape(x, granularity, g.amin(dim=-1).clamp(max=0.0))
    hi = _scale_shape(x, granularity, g.amax(dim=-1).clamp(min=0.0))
    scale = (hi - lo) / UINT8_MAX
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    zero_point = torch.round(-lo / scale).clamp_(0, UINT8_MAX)
    q = (torch.round(x / _expand(scale, x)) + _expand(zero_point, x)).clamp_(0, UINT8_MAX)
    return q.to(torch.uint8), scale, zero_point.to(torch.uint8)


def dequantize(q: torch.Tensor, scale: torch.Tensor,
               zero_point: torch.Tensor | None = None) -> torch.Tensor:
    """Inverse of both quantizers: ``(q - z) * s`` in float32, grouping read from ``scale``'s shape."""
    values = q.float()
    if zero_point is not None:
        values = values - _expand(zero_point.float(), q)
    return values * _expand(scale, q)


def fake_quantize(x: torch.Tensor, granularity: str = "channel", group_size: int = 64) -> torch.Tensor:
    """Quantize-dequantize with a straight-through gradient, for quantization-aware training.

    Forward returns the int8-rounded values the deployed model will see; backward passes the
    gradient through unchanged (round has zero gradient almost everywhere, which would stop
    learning). Written as ``x + (qdq(x) - x).detach()``: the value is qdq(x), the graph is x's.
    """
    q, scale = absmax_quantize(x.detach(), granularity, group_size)
    return x + (dequantize(q, scale).to(x.dtype) - x).detach()


def outlier_columns(x: torch.Tensor, threshold: float) -> torch.Tensor:
    """Boolean mask over input features (last axis) where any |x| >= threshold (LLM.int8())."""
    return (x.reshape(-1, x.shape[-1]).abs() >= threshold).any(dim=0)


def int8_matmul(x: torch.Tensor, weight_q: torch.Tensor, weight_scale: torch.Tensor,
                threshold: float | None = None) -> torch.Tensor:
    """``x @ W.T`` with int8 weights (row-wise scales) and int8 activations (row-wise scales).

    With ``threshold`` set this is the LLM.int8() mixed decomposition: input feature columns in
    which any |x| >= threshold are taken out and multiplied in float32 with the matching
    (dequantized) weight columns; every other column goes through the int8 x int8 product.
    A single large activation otherwise sets the scale of its whole row and rounds the remaining
    entries of that row to a few codes. Products of int8 codes are accumulated in float32, which
    is exact while ``127 * 127 * in_features < 2**24`` (in_features <= 1040) and off by float32
    rounding beyond - the honest CPU stand-in for an int32-accumulating kernel.
    Returns float32 with shape ``(*x.shape[:-1], out_features)``.
    """
    x2 = x.reshape(-1, x.shape[-1]).float()
    outliers = outlier_columns(x2, threshold) if threshold is not None else None
    regular = x2 if outliers is None or not outliers.any() else x2.masked_fill(outliers, 0.0)
    x_q, x_scale = absmax_quantize(regular, "channel")               # vector-wise: one scale per row
    out = (x_q.float() @ weight_q.float().t()) * (x_scale * weight_scale.reshape(1, -1))
    if outliers is not None and outliers.any():
        w_cols = weight_q[:, outliers].float() * weight_scale.reshape(-1, 1)
        out = out + x2[:, outliers] @ w_cols.t()
    return out.reshape(*x.shape[:-1], weight_q.shape[0])


def llm_int8_matmul(x: torch.Tensor, weight: torch.Tensor, threshold: float | None = 6.0) -> torch.Tensor:
    """Convenience: quantize a float ``weight`` (out, in) row-wise and run ``int8_matmul``."""
    weight_q, weight_scale = absmax_quantize(weight, "channel")
    return int8_matmul(x, weight_q, weight_scale, threshold)
