"""Memory accounting: bytes by dtype, and the model-size table behind ``rlhf model-size``.

Storage rows are measured on real copies of the model (cast, or quantized with
``quantize_model``) rather than multiplied out, so per-row scales, block constants, biases and
layers that stay float are all counted. Training rows are computed from the parameter count.
"""
from __future__ import annotations

import copy
import io

import torch
from torch import nn

from rlhf.precision.amp import TRAIN_MODES
from rlhf.precision.layers import check_scheme, quantizable_linears, quantize_model

OPTIMIZERS = ("adam", "adamw", "sgd", "none")
_OPTIMIZER_STATE_PER_PARAM = {"adam": 2, "adamw": 2, "sgd": 0, "none": 0}   # fp32 tensors per param


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def model_memory(model: nn.Module) -> dict[str, int]:
    """Bytes held by parameters and buffers, by dtype name ("float32", "int8", ...).

    Shared tensors (tied weights) are counted once.
    """
    sizes: dict[str, int] = {}
    for tensor in [*model.parameters(), *model.buffers()]:
        name = _dtype_name(tensor.dtype)
        sizes[name] = sizes.get(name, 0) + tensor.numel() * tensor.element_size()
    return sizes


def state_dict_bytes(model: nn.Module) -> int:
    """Sum of ``nbytes`` over the tensors of ``model.state_dict()`` (what a checkpoint must hold)."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values() if torch.is_tensor(t))


def serialized_bytes(model: nn.Module) -> int:
    """Size of ``torch.save(model.state_dict())``: tensor bytes plus the container's overhead."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _row(section: str, item: str, params: int, nbytes: int | None, source: str, note: str = "") -> dict:
    return {"section": section, "item": item, "params": params, "bytes": nbytes, "source": source, "note": note}


def model_size_table(model: nn.Module, optimizer: str = "adam", train_mode: str = "fp32") -> list[dict]:
    """Rows describing what ``model`` costs stored in each format and trained in ``train_mode``.

    Each row: ``section`` ("storage" | "training"), ``item``, ``params``, ``bytes`` (None when a
    format does not apply), ``source`` ("measured" on a real copy | "computed"), ``note``.
    Mixed-precision training keeps fp32 master weights (the learner's parameters), fp32
    gradients and fp32 optimizer state, plus the low-precision weight copies autocast makes
    during the forward pass; it saves activation memory, not weight memory.
    """
    check_scheme(optimizer, OPTIMIZERS, "optimizer")
    check_scheme(train_mode, TRAIN_MODES, "train_mode")
    n = count_parameters(model)
    n_train = count_parameters(model, trainable_only=True)
    rows = []
    for item, dtype in (("weights fp32", torch.float32), ("weights fp16", torch.float16),
                        ("weights bf16", torch.bfloat16)):
        rows.append(_row("storage", item, n, sum(model_memory(copy.deepcopy(model).to(dtype)).values()),
                         "measured", "all float parameters and buffers cast"))
    has_linear = bool(quantizable_linears(model))
    for item, scheme, note in (("weights int8", "int8", "Linear int8 + fp32 row scales; other layers fp32"),
                               ("weights 4-bit (nf4)", "nf4",
                                "Linear packed NF4 + double-quantized block scales; other layers fp32")):
        if has_linear:
            rows.append(_row("storage", item, n, sum(model_memory(quantize_model(model, scheme)).values()),
                             "measured", note))
        else:
            rows.append(_row("storage", item, n, None, "measured", "no nn.Linear layer to quantize"))
    rows.append(_row("training", "gradients fp32", n_train, 4 * n_train, "computed"))
    per_param = _OPTIMIZER_STATE_PER_PARAM[optimizer]
    rows.append(_row("training", f"optimizer state ({optimizer})", n_train, 4 * per_param * n_train, "computed",
                     f"{per_param} fp32 tensors per parameter"))
    total = 4 * n + 4 * n_train + 4 * per_param * n_train
    if train_mode == "fp32":
        rows.append(_row("training", "weights fp32", n, 4 * n, "computed"))
    else:
        low = "bf16" if train_mode.startswith("bf16") else "fp16"
        rows.append(_row("training", "master weights fp32", n, 4 * n, "computed", "the learner's parameters"))
        rows.append(_row("training", f"autocast weight copies {low}", n, 2 * n, "computed",
                         "transient, during forward"))
        total += 2 * n
    rows.append(_row("training", f"total ({train_mode}, {optimizer})", n, total, "computed",
                     "excluding activations"))
    return rows


def _human(nbytes: int | None) -> str:
    if nbytes is None:
        return "n/a"
    value = float(nbytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1024
    return f"{value:.2f} GiB"


def format_model_size_table(rows: list[dict]) -> str:
    """Plain-text table of ``model_size_table`` rows; ratios are relative to fp32 weights."""
    fp32 = next((r["bytes"] for r in rows if r["item"] == "weights fp32"), None)
    header = ("section", "item", "params", "bytes", "x fp32", "source", "note")
    lines = [header]
    for r in rows:
        ratio = f"{r['bytes'] / fp32:.3f}" if r["bytes"] is not None and fp32 else "-"
        lines.append((r["section"], r["item"], f"{r['params']:,}", _human(r["bytes"]), ratio, r["source"], r["note"]))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    right = {2, 3, 4}
    out = []
    for k, line in enumerate(lines):
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(line, widths))]
        out.append("  ".join(cells).rstrip())
        if k == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)
