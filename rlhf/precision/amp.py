"""Training-time precision: autocast around forward passes, fp32 master weights, loss scaling.

The learner's parameters and optimizer state always stay fp32; only the forward computation is
cast. fp16 needs a GradScaler because small gradients underflow; bf16 has fp32's range and does not.

Numerics contract. CUDA autocast runs softmax, log_softmax, layer_norm and losses in float32,
but CPU autocast does not: under CPU bf16/fp16 autocast they run in the low dtype. So
log-probs, entropies, ratios and KL must be computed from ``logits.float()`` inside
``float32_region()``; that is correct on both devices and costs nothing in fp32 mode.
"""
from __future__ import annotations

import contextlib
import math
from typing import Iterable

import torch
from torch import nn

from rlhf.errors import NonFiniteError

TRAIN_MODES = ("fp32", "bf16-mixed", "fp16-mixed")
MIN_LOSS_SCALE = 2.0**-24  # fp16's smallest subnormal: below it every scaled gradient underflows anyway
_AUTOCAST_DTYPE = {"bf16-mixed": torch.bfloat16, "fp16-mixed": torch.float16}


def check_train_mode(mode: str, model: nn.Module | None = None,
                     device: torch.device | str = "cpu") -> None:
    """Refuse training modes that are unknown or known to be a bad idea here (ValueError says why).

    * fp16-mixed on CPU with convolution layers: CPU fp16 convolution backward has no fast
      kernel and runs orders of magnitude slower than fp32; use bf16-mixed or fp32.
    * bf16-mixed on a CUDA device without bf16 support: use fp16-mixed.
    """
    if mode not in TRAIN_MODES:
        raise ValueError(f"precision.train = {mode!r}: allowed values are {', '.join(TRAIN_MODES)}")
    device = torch.device(device)
    if mode == "fp16-mixed" and device.type == "cpu" and model is not None:
        convs = [name for name, m in model.named_modules() if isinstance(m, nn.modules.conv._ConvNd)]
        if convs:
            raise ValueError(f"precision.train = 'fp16-mixed' on CPU with convolution layers ({', '.join(convs[:3])}"
                             f"{', ...' if len(convs) > 3 else ''}): CPU fp16 convolution backward is orders of "
                             "magnitude slower than fp32; use 'bf16-mixed' or 'fp32' on CPU")
    if (mode == "bf16-mixed" and device.type == "cuda" and torch.cuda.is_available()
            and not torch.cuda.is_bf16_supported()):
        raise ValueError(f"precision.train = 'bf16-mixed': {device} does not support bfloat16; use 'fp16-mixed'")


def float32_region() -> contextlib.AbstractContextManager:
    """Context in which autocast is off (CPU and CUDA): ops run in their inputs' dtype.

    Wrap log_softmax / softmax / entropy / KL / layer norms whose result must be fp32 and
    pass them ``.float()`` tensors: disabling autocast does not upcast tensors already produced
    in bf16/fp16.
    """
    cuda = torch.cuda.is_available()
    if not torch.is_autocast_enabled("cpu") and not (cuda and torch.is_autocast_enabled("cuda")):
        return contextlib.nullcontext()  # nothing to turn off (fp32 training): skip the context managers
    stack = contextlib.ExitStack()
    stack.enter_context(torch.autocast("cpu", enabled=False))
    if cuda:
        stack.enter_context(torch.autocast("cuda", enabled=False))
    return stack


class Precision:
    """How the learner computes: one object the PPO update asks for autocast and optimizer steps."""

    def __init__(self, train: str = "fp32", device: torch.device | str = "cpu",
                 model: nn.Module | None = None, skip_nonfinite: bool = False) -> None:
        """``model``, when given, is checked with ``check_train_mode`` (e.g. fp16 convs on CPU).

        A NaN/inf loss or gradient norm raises ``NonFiniteError`` before the optimizer steps; with
        ``skip_nonfinite`` that step is skipped and counted in ``train/skipped_updates`` instead. In fp16 the
        GradScaler skips such steps itself (an overflow at too high a scale) and halves the scale; only when
        the scale falls below ``MIN_LOSS_SCALE`` is it no overflow, and the run stops.
        """
        check_train_mode(train, model, device)
        self.mode = train
        self.device = torch.device(device)
        self.dtype = _AUTOCAST_DTYPE.get(train)
        use_scaler = train == "fp16-mixed"
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=use_scaler) if use_scaler else None
        self.skipped_steps = 0
        self.skip_nonfinite, self.skipped_updates = skip_nonfinite, 0
        # data-parallel training sets a callable that averages the gradients over the ranks before the clip
        # (``rlhf.distributed.GradientMean``); None in one process
        self.grad_reduce = None

    def autocast(self) -> contextlib.AbstractContextManager:
        """Context for forward passes; a no-op in fp32."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer,
             params: Iterable[nn.Parameter] | None = None, max_grad_norm: float | None = None) -> dict:
        """backward -> (unscale) -> clip the global grad norm -> optimizer step.

        Clips ``params`` (default: the optimizer's own parameters, which for a flat-buffer optimizer is one
        tensor). Returns ``grad_norm`` (a 0-d tensor, the norm before clipping) and ``skipped`` (1.0 when
        fp16 loss scaling found inf/NaN gradients and skipped the step, or a NaN/inf step was skipped by
        ``skip_nonfinite``).
        """
        params = list(params) if params is not None else [p for g in optimizer.param_groups for p in g["params"]]
        optimizer.zero_grad(set_to_none=True)
        if self.scaler is None:
            loss.backward()
            if self.grad_reduce is not None:
                self.grad_reduce(params)
            grad_norm, finite = _clip(params, max_grad_norm)
            if not finite:  # the norm is already a float here: the check costs nothing on the happy path
                return self._nonfinite(loss, grad_norm, optimizer)
            optimizer.step()
            return {"grad_norm": grad_norm, "skipped": 0.0}
        self.scaler.scale(loss).backward()
        if self.grad_reduce is not None:  # same scale on every rank: the scaled gradients average as they are
            self.grad_reduce(params)
        self.scaler.unscale_(optimizer)
        grad_norm, _ = _clip(params, max_grad_norm)
        scale_before = self.scaler.get_scale()
        self.scaler.step(optimizer)
        self.scaler.update()
        scale = self.scaler.get_scale()
        skipped = float(scale < scale_before)
        self.skipped_steps += int(skipped)
        if scale < MIN_LOSS_SCALE:  # ~40 overflows in a row: NaN/inf at every scale, not an fp16 overflow
            raise NonFiniteError(f"training stopped: fp16 loss scaling skipped steps until the scale fell to {scale:g} "
                                 f"({self.skipped_steps} skipped steps; last loss {float(loss.detach()):g}): the "
                                 "loss or gradients are NaN/inf at any scale")
        return {"grad_norm": grad_norm, "skipped": skipped}

    def _nonfinite(self, loss: torch.Tensor, grad_norm: torch.Tensor, optimizer: torch.optim.Optimizer) -> dict:
        """No optimizer step on NaN/inf: stop with the source named, or skip and count (``skip_nonfinite``)."""
        optimizer.zero_grad(set_to_none=True)
        value = float(loss.detach())
        source = (f"the loss is {value:g}" if not math.isfinite(value)
                  else f"the gradient norm is {float(grad_norm):g} (loss {value:g})")
        if not self.skip_nonfinite:
            raise NonFiniteError(f"non-finite update: {source}; no optimizer step taken (set "
                                 "ppo.skip_nonfinite_updates=true to skip such minibatches instead)")
        self.skipped_updates += 1
        return {"grad_norm": torch.zeros(()), "skipped": 1.0}

    def stats(self) -> dict[str, float]:
        out = {"train/skipped_updates": float(self.skipped_updates)} if self.skip_nonfinite else {}
        if self.scaler is None:
            return out
        return {**out, "precision/loss_scale": float(self.scaler.get_scale()),
                "precision/skipped_steps": float(self.skipped_steps)}

    def state_dict(self) -> dict:
        return {"scaler": self.scaler.state_dict() if self.scaler else {}, "skipped_steps": self.skipped_steps,
                "skipped_updates": self.skipped_updates}

    def load_state_dict(self, state: dict) -> None:
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.skipped_steps = int(state.get("skipped_steps", 0))
        self.skipped_updates = int(state.get("skipped_updates", 0))


def _clip(params: list[nn.Parameter], max_grad_norm: float | None) -> tuple[torch.Tensor, bool]:
    """(global grad norm before clipping as a tensor, whether it is finite); clipped in place to
    ``max_grad_norm`` if set and finite."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(()), True
    if len(grads) == 1 and grads[0].is_cpu:  # one flat buffer (FlatAdam) on CPU: reading the norm is free
        norm = torch.linalg.vector_norm(grads[0])
        value = float(norm)
        coef = max_grad_norm / (value + 1e-6) if max_grad_norm is not None else 1.0
        if coef < 1.0:
            grads[0].mul_(coef)
        return norm, math.isfinite(value)
    if max_grad_norm is None:
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    else:
        norm = nn.utils.clip_grad_norm_(params, max_grad_norm)
    return norm, bool(torch.isfinite(norm))
