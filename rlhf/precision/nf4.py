"""NF4: blockwise 4-bit NormalFloat quantization (QLoRA), with optional double quantization.

A weight tensor is flattened and cut into blocks of 64. Each block is divided by its absmax, so
values lie in [-1, 1], and each value is replaced by the index of the nearest of 16 levels. The
levels are quantiles of a standard normal rescaled to [-1, 1], with an exact 0: trained weights
are roughly Gaussian, so every code is used about equally often - the information-theoretically
right spacing for that distribution, which uniform int4 is not. Two 4-bit codes share one byte.

The fp32 absmax per 64 weights costs 0.5 bit per weight. Double quantization stores those
constants as 8-bit codes in blocks of 256 (minus their mean, plus one fp32 scale per block),
bringing the overhead to about 0.127 bit per weight. QLoRA quantizes them to an 8-bit float
format; we use symmetric int8 after subtracting the mean, which has the same size and, since
the centred constants are small and roughly symmetric, a similar error.
"""
from __future__ import annotations

import torch

# The 16 NF4 levels of QLoRA (Dettmers et al., 2023), as shipped in bitsandbytes: 8 positive
# and 7 negative normal quantiles normalised to [-1, 1], plus an exact zero.
NF4_LEVELS = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
)
NF4_BLOCK_SIZE = 64
ABSMAX_BLOCK_SIZE = 256


def nf4_levels(device: torch.device | str | None = None) -> torch.Tensor:
    return torch.tensor(NF4_LEVELS, dtype=torch.float32, device=device)


def pack_4bit(codes: torch.Tensor) -> torch.Tensor:
    """Pack codes in [0, 16) two per byte: element 2i in the high nibble, 2i+1 in the low one."""
    flat = codes.reshape(-1).to(torch.uint8)
    if flat.numel() % 2:
        flat = torch.cat([flat, flat.new_zeros(1)])
    return (flat[0::2] << 4) | flat[1::2]


def unpack_4bit(packed: torch.Tensor, numel: int) -> torch.Tensor:
    """Inverse of ``pack_4bit``: the first ``numel`` codes as int64 indices."""
    codes = torch.stack([packed >> 4, packed & 0x0F], dim=-1).reshape(-1)
    return codes[:numel].long()


def _blocks(x: torch.Tensor, block_size: int) -> torch.Tensor:
    """Flatten and zero-pad to whole blocks: shape (n_blocks, block_size)."""
    flat = x.reshape(-1).float()
    pad = (-flat.numel()) % block_size
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    return flat.reshape(-1, block_size)


def nf4_quantize(x: torch.Tensor, block_size: int = NF4_BLOCK_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """Blockwise NF4. Returns ``(packed: uint8 of ceil(numel/2), absmax: float32 per block)``."""
    blocks = _blocks(x, block_size)
    absmax = blocks.abs().amax(dim=1)
    safe = torch.where(absmax > 0, absmax, torch.ones_like(absmax))
    levels = nf4_levels(x.device)
    midpoints = (levels[:-1] + levels[1:]) / 2
    codes = torch.bucketize(blocks / safe.unsqueeze(1), midpoints)   # nearest level, ties go down
    return pack_4bit(codes.reshape(-1)[: x.numel()]), absmax


def nf4_dequantize(packed: torch.Tensor, absmax: torch.Tensor, shape: tuple[int, ...] | torch.Size,
                   block_size: int = NF4_BLOCK_SIZE) -> torch.Tensor:
    """Inverse of ``nf4_quantize``: float32 tensor of ``shape``."""
    numel = 1
    for n in shape:
        numel *= int(n)
    values = nf4_levels(packed.device)[unpack_4bit(packed, numel)]
    scales = absmax.float().repeat_interleave(block_size)[:numel]
    return (values * scales).reshape(shape)


def double_quantize(absmax: torch.Tensor, block_size: int = ABSMAX_BLOCK_SIZE
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """8-bit quantization of the fp32 block constants, in blocks of ``block_size``.

    Returns ``(codes: int8 per constant, scale: float32 per block, offset: float32 scalar)``.
    The mean is taken out first because absmax values are all positive and clustered; centring
    them halves the range the 8 bits must cover.
    """
    offset = absmax.float().mean()
    blocks = _blocks(absmax.float() - offset, block_size)
    scale = blocks.abs().amax(dim=1) / 127
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    codes = torch.round(blocks / scale.unsqueeze(1)).clamp_(-127, 127).to(torch.int8)
    return codes.reshape(-1)[: absmax.numel()], scale, offset


def double_dequantize(codes: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor,
                      block_size: int = ABSMAX_BLOCK_SIZE) -> torch.Tensor:
    """Inverse of ``double_quantize``: the fp32 block constants (to within scale / 2)."""
    scales = scale.repeat_interleave(block_size)[: codes.numel()]
    return codes.float() * scales + offset
