"""``python -m rlhf.precision``: measure what each quantization scheme costs and saves.

Prints, for a 3-layer 256-wide MLP with fixed seeds: state-dict bytes (sum of tensor nbytes,
and torch.save size) relative to fp32, output error on Gaussian inputs and on inputs with one
outlier feature, NF4 round-trip error on Gaussian weights, rollout-actor speed, and the
model-size table.
"""
from __future__ import annotations

import time

import torch
from torch import nn

from rlhf.precision import (QUANT_SCHEMES, ROLLOUT_MODES, double_dequantize, double_quantize,
                            format_model_size_table, make_actor, model_size_table, nf4_dequantize, nf4_quantize,
                            quantize_model, serialized_bytes, state_dict_bytes)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def _per_call_ms(model: nn.Module, x: torch.Tensor, repeats: int = 50) -> float:
    with torch.no_grad():
        model(x)
        start = time.perf_counter()
        for _ in range(repeats):
            model(x)
    return (time.perf_counter() - start) / repeats * 1e3


def main() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 16))
    x = torch.randn(64, 256)
    x_outlier = x.clone()
    x_outlier[:, 7] = 40.0
    with torch.no_grad():
        ref, ref_outlier = model(x), model(x_outlier)
    fp32_sd, fp32_saved = state_dict_bytes(model), serialized_bytes(model)
    print("MLP 256-256-256-16, batch 64, seed 0")
    print(f"{'scheme':<14}{'sd bytes/fp32':>14}{'saved/fp32':>12}{'rel err':>10}{'rel err (outlier col)':>23}")
    for scheme in QUANT_SCHEMES:
        q = quantize_model(model, scheme)
        with torch.no_grad():
            err, err_outlier = _rel(q(x), ref), _rel(q(x_outlier), ref_outlier)
        print(f"{scheme:<14}{state_dict_bytes(q) / fp32_sd:>14.3f}{serialized_bytes(q) / fp32_saved:>12.3f}"
              f"{err:>10.4f}{err_outlier:>23.4f}")

    w = torch.randn(1024, 1024)
    packed, absmax = nf4_quantize(w)
    single = _rel(nf4_dequantize(packed, absmax, w.shape), w)
    double = _rel(nf4_dequantize(packed, double_dequantize(*double_quantize(absmax)), w.shape), w)
    print(f"\nNF4 on N(0,1) weights 1024x1024: rel err {single:.4f} (fp32 block scales), {double:.4f} (double-quant)")

    policy = nn.Sequential(nn.Linear(32, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 5))
    obs = torch.randn(256, 32)
    times = ", ".join(f"{mode} {_per_call_ms(make_actor(policy, mode), obs):.3f} ms" for mode in ROLLOUT_MODES)
    print(f"\nactor forward, 32-64-64-5 MLP, batch 256, {torch.get_num_threads()} threads: {times}")

    print()
    print(format_model_size_table(model_size_table(model, "adam", "bf16-mixed")))


if __name__ == "__main__":
    main()
