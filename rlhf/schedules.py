"""Hyperparameter schedules written as a float or ``lin_<x>`` (rl-zoo's linear decay to 0)."""
from __future__ import annotations


def parse_schedule(value: float | str) -> tuple[float, bool]:
    """Return (initial value, decays linearly). Raises ValueError with what is allowed."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value), False
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("lin_"):
            try:
                return float(text[4:]), True
            except ValueError:
                pass
        else:
            try:
                return float(text), False
            except ValueError:
                pass
    raise ValueError(f"expected a number or 'lin_<number>' (linear decay to 0), got {value!r}")


def schedule_value(value: float | str, progress_remaining: float) -> float:
    """Value at ``progress_remaining`` (1 at the start of training, 0 at the end)."""
    initial, linear = parse_schedule(value)
    return initial * progress_remaining if linear else initial
