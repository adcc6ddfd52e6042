"""NaN/inf guards for the places numbers enter training: env steps, rewards, network state before a save.

Each check is one vectorised reduction on the happy path; only when it fails is the array searched for
the first bad element, so the error can name it (env index, parameter name).
"""
from __future__ import annotations

from typing import Any, Iterable

import numpy as np
import torch

from rlhf.errors import NonFiniteError

F32_MAX = float(np.finfo(np.float32).max)
_F32_MAX_SQ = F32_MAX * F32_MAX  # a float64 number: |x| >= F32_MAX anywhere makes x.x at least this


def fits_float32(x: np.ndarray) -> bool:
    """True when every element of a numpy array is finite and inside float32's range (non-floats: always).

    One dot product of ``x`` with itself: NaN/inf anywhere make it NaN/inf, any |x| >= F32_MAX makes it
    >= F32_MAX**2; only when that fails (a float32 sum of huge squares can overflow too) is each element
    checked. ``np.vdot`` flattens any shape and raises no overflow warning.
    """
    if x.dtype.kind != "f":
        return True
    if float(np.vdot(x, x)) < _F32_MAX_SQ:
        return True
    return bool((np.abs(x) < F32_MAX).all())  # NaN compares False


def first_bad(x: np.ndarray) -> tuple[tuple[int, ...], float]:
    """(index, value) of the first element that is NaN, inf or beyond float32's range."""
    bad = ~(np.abs(np.asarray(x, dtype=np.float64)) < F32_MAX)
    index = tuple(int(i) for i in np.argwhere(bad)[0]) if bad.any() else ()
    return index, float(np.asarray(x)[index]) if index else float("nan")


def describe(value: float) -> str:
    """'nan', 'inf', '-inf' or '1e+39 (beyond float32)'."""
    return f"{value:g}" if not np.isfinite(value) else f"{value:g} (beyond float32's range)"


def check_env_arrays(what: str, x: np.ndarray, step: int) -> None:
    """Raise NonFiniteError naming the env index and rollout step if ``x`` (num_envs, ...) has a bad value."""
    if not fits_float32(x):
        index, value = first_bad(x)
        where = f"env index {index[0]}" if index else "the env"
        element = f" (element {index[1:]})" if len(index) > 1 else ""
        raise NonFiniteError(f"{what} from {where} at rollout step {step} is {describe(value)}{element}")


def _tensors(obj: Any, prefix: str) -> Iterable[tuple[str, torch.Tensor]]:
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _tensors(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _tensors(v, f"{prefix}[{i}]")


def check_state(state: Any, what: str) -> None:
    """Refuse to go on (and so to save) when a floating tensor anywhere in ``state`` holds NaN/inf.

    ``state`` is a module, an optimizer or any nest of dicts/lists of tensors (a state_dict).
    """
    if isinstance(state, torch.nn.Module):
        state = dict(state.named_parameters()) | dict(state.named_buffers())
    elif isinstance(state, torch.optim.Optimizer):
        state = state.state_dict()["state"]
    for name, t in _tensors(state, ""):
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            kind = "NaN" if bool(torch.isnan(t).any()) else "inf"
            raise NonFiniteError(f"{what} {name} holds {kind}: not saved")
