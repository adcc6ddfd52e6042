"""Hyperparameter schedules written as a float or ``lin_<x>`` (rl-zoo's linear decay to 0)."""
from __future__ import annotations

import math

MAX_MAGNITUDE = 1e12  # no hyperparameter here is sanely larger; well inside float32 after products


def parse_schedule(value: float | str) -> tuple[float, bool]:
    """Return (initial value, decays linearly). Raises ValueError with what is allowed.

    NaN, inf and magnitudes above ``MAX_MAGNITUDE`` are refused here, so ``lin_nan`` fails at validation.
    """
    number, linear = None, False
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        text = value.strip()
        linear = text.startswith("lin_")
        try:
            number = float(text[4:] if linear else text)
        except ValueError:
            pass
    if number is None:
        raise ValueError(f"expected a number or 'lin_<number>' (linear decay to 0), got {value!r}")
    if not math.isfinite(number) or abs(number) > MAX_MAGNITUDE:
        raise ValueError(f"expected a finite number or 'lin_<number>' with magnitude at most {MAX_MAGNITUDE:g}, "
                         f"got {value!r}")
    return number, linear


def schedule_value(value: float | str, progress_remaining: float) -> float:
    """Value at ``progress_remaining`` (1 at the start of training, 0 at the end)."""
    initial, linear = parse_schedule(value)
    return initial * progress_remaining if linear else initial
