"""model_memory and the model-size table."""
import pytest
import torch
from torch import nn

from rlhf.precision import format_model_size_table, model_memory, model_size_table


def test_model_memory_by_dtype_counts_tied_once():
    emb = nn.Embedding(10, 4)
    head = nn.Linear(4, 10, bias=False)
    head.weight = emb.weight
    model = nn.Sequential(emb, head)
    model.register_buffer("steps", torch.zeros(3, dtype=torch.int64))
    assert model_memory(model) == {"float32": 160, "int64": 24}


def test_table_rows_measured_and_computed():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 4))
    n = 128 * 128 + 128 + 128 * 4 + 4
    rows = {r["item"]: r for r in model_size_table(model, "adam", "fp16-mixed")}
    assert rows["weights fp32"]["params"] == n and rows["weights fp32"]["bytes"] == 4 * n
    assert rows["weights bf16"]["bytes"] == rows["weights fp16"]["bytes"] == 2 * n
    # int8: 1 byte per weight + fp32 row scale + fp32 bias per output
    assert rows["weights int8"]["bytes"] == 128 * 128 + 128 * 4 + 4 * (128 + 4) * 2
    assert rows["weights int8"]["source"] == "measured"
    assert rows["weights 4-bit (nf4)"]["bytes"] < 0.2 * 4 * n
    assert rows["optimizer state (adam)"]["bytes"] == 8 * n
    assert rows["master weights fp32"]["bytes"] == 4 * n
    assert rows["total (fp16-mixed, adam)"]["bytes"] == (4 + 4 + 8 + 2) * n
    text = format_model_size_table(list(rows.values()))
    assert "weights 4-bit (nf4)" in text and "measured" in text and "x fp32" in text


def test_table_without_linear_and_bad_options():
    rows = model_size_table(nn.Sequential(nn.Conv2d(1, 2, 3)), "sgd")
    assert {r["item"]: r["bytes"] for r in rows}["weights int8"] is None
    assert "n/a" in format_model_size_table(rows)
    with pytest.raises(ValueError, match="optimizer"):
        model_size_table(nn.Linear(2, 2), "lion")
    with pytest.raises(ValueError, match="train_mode"):
        model_size_table(nn.Linear(2, 2), "adam", "int8")
