"""The learner's optimizer: Adam with eps 1e-5 (as in the PPO reference implementations).

``make_optimizer(policy, lr, kind)``: ``adam`` is plain ``torch.optim.Adam`` (fused where the dtypes
allow); ``flat_adam`` is ``FlatAdam``, the same Adam over one flat buffer holding every trainable
parameter. A PPO step on a small MLP is dominated by per-tensor overhead (zero_grad, the global
grad-norm clip and Adam each loop over every weight and bias), so one tensor instead of a dozen is
worth a lot; the arithmetic is unchanged (tested against plain Adam). ``auto`` picks ``flat_adam``
when the parameters share a float dtype and a device, ``adam`` otherwise.
"""
from __future__ import annotations

import sys

import torch
import torch.optim.optimizer as torch_optimizer
from torch import nn

from rlhf.errors import ConfigError

OPTIMIZERS = ("auto", "adam", "flat_adam")


def _global_step_hooks() -> bool:
    """Whether ``torch.optim.optimizer.register_optimizer_step_{pre,post}_hook`` hooks exist (private dicts,
    read defensively: if torch renames them, FlatAdam's steps simply go through the hooked wrapper)."""
    pre = getattr(torch_optimizer, "_global_optimizer_pre_hooks", None)
    post = getattr(torch_optimizer, "_global_optimizer_post_hooks", None)
    return pre is None or post is None or bool(pre) or bool(post)


def _without_compiler_import(method):
    """``torch.optim.Optimizer``'s ``method`` without its ``torch._disable_dynamo`` wrapper while the compiler
    stack is not loaded.

    The wrapper imports ``torch._dynamo`` on first use, about 1 s of a short run's start-up, only to mark the
    method as not traceable by ``torch.compile``; a process that has not imported the compiler traces
    nothing. Once ``torch._dynamo`` is loaded (the user compiles something) the wrapped method is used as is.
    """
    raw = getattr(method, "__wrapped__", None)
    if raw is None:
        return method

    def call(self, *args, **kwargs):
        return (method if "torch._dynamo" in sys.modules else raw)(self, *args, **kwargs)

    call.__doc__, call.__name__ = raw.__doc__, raw.__name__
    return call


class FlatAdam(torch.optim.Adam):
    """Fused Adam over one contiguous buffer; the module's parameters become views into it.

    Each parameter keeps its name, shape and place in the module (``state_dict`` is unchanged); only its
    storage moves into ``self.flat``. Each parameter's ``.grad`` is a view into ``self.flat.grad``, so
    autograd accumulates straight into the flat gradient and the usual zero_grad / backward / clip /
    ``step`` sequence (``torch.amp.GradScaler`` included) works as with plain Adam. Differences:
    ``zero_grad`` zeroes in place instead of setting gradients to None (they must stay views), so a
    parameter that got no gradient is stepped with a zero gradient; moving or casting the module after
    building the optimizer detaches it from the buffer (build the optimizer last, as the trainer does);
    ``step`` calls the fused Adam kernel directly, skipping ``Optimizer.step``'s Python bookkeeping, and
    falls back to the public ``step`` if that private kernel is missing or its signature changed.
    """

    _step_supports_amp_scaling = False  # GradScaler checks inf/NaN itself and skips our step if needed

    def __init__(self, params: list[nn.Parameter], lr: float, eps: float = 1e-5) -> None:
        self.module_params = list(params)
        if not self.module_params or len({(p.dtype, p.device) for p in self.module_params}) != 1 \
                or not self.module_params[0].dtype.is_floating_point:
            raise ValueError("FlatAdam needs trainable parameters of one float dtype on one device")
        with torch.no_grad():
            flat = torch.cat([p.detach().reshape(-1) for p in self.module_params])
        self.flat = nn.Parameter(flat)
        self.flat.grad = self._flat_grad = torch.zeros_like(flat)
        self._grad_views = []
        offset = 0
        for p in self.module_params:
            n = p.numel()
            p.data = self.flat.data[offset:offset + n].view_as(p)
            self._grad_views.append(self.flat.grad[offset:offset + n].view_as(p))
            p.grad = self._grad_views[-1]
            offset += n
        super().__init__([self.flat], lr=lr, eps=eps, fused=True)
        self.kernel_ok = True  # False: use the public Adam.step (set on the first failure, or by hand)

    add_param_group = _without_compiler_import(torch.optim.Optimizer.add_param_group)
    state_dict = _without_compiler_import(torch.optim.Optimizer.state_dict)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Zero the flat gradient in place (``set_to_none`` is ignored: gradients must stay views of it)."""
        if self.flat.grad is not self._flat_grad:
            self.flat.grad = self._flat_grad
        self._flat_grad.zero_()
        for p, g in zip(self.module_params, self._grad_views):
            if p.grad is not g:  # reset elsewhere (e.g. module.zero_grad()): point it back at the buffer
                p.grad = g

    def step(self, closure=None):
        """One Adam step on the flat buffer (``_step``), with the step hooks when any are registered.

        ``torch.optim.Optimizer`` wraps every subclass's ``step`` in a profiler range and a hook dispatch,
        which costs more than this whole step on a small MLP; ``step.hooked`` below tells it this one
        dispatches for itself: through the same wrapper, but only when a pre/post step hook exists.
        """
        if self._optimizer_step_pre_hooks or self._optimizer_step_post_hooks or _global_step_hooks():
            return torch.optim.Optimizer.profile_hook_step(FlatAdam._step)(self, closure)
        return self._step(closure)

    step.hooked = True  # type: ignore[attr-defined]

    @torch.no_grad()
    def _step(self, closure=None):
        """The kernel ``Adam(fused=True)`` runs, called directly."""
        group, state = self.param_groups[0], self.state[self.flat]
        if (closure is not None or not self.kernel_ok or group["amsgrad"] or group["maximize"]
                or group["weight_decay"] or torch.is_tensor(group["lr"])):
            return _public_adam_step(self, closure)
        if not state:  # what Adam's fused path creates on its first step
            state["step"] = torch.zeros((), dtype=torch.float32, device=self.flat.device)
            state["exp_avg"] = torch.zeros_like(self.flat, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(self.flat, memory_format=torch.preserve_format)
        beta1, beta2 = group["betas"]
        state["step"] += 1
        try:
            torch._fused_adam_([self.flat], [self.flat.grad], [state["exp_avg"]], [state["exp_avg_sq"]], [],
                               [state["step"]], amsgrad=False, lr=group["lr"], beta1=beta1, beta2=beta2,
                               weight_decay=0.0, eps=group["eps"], maximize=False, grad_scale=None, found_inf=None)
        except (AttributeError, TypeError, RuntimeError):
            state["step"] -= 1
            self.kernel_ok = False  # another torch version: the public step from now on
            return _public_adam_step(self)
        return None

    def load_state_dict(self, state_dict: dict) -> None:
        """Also accepts the state of a plain Adam over the same parameters (``optimizer: adam`` checkpoints)."""
        params = state_dict["param_groups"][0]["params"]
        if len(state_dict["param_groups"]) == 1 and len(params) == len(self.module_params) > 1:
            per_param = [state_dict["state"].get(i, {}) for i in params]
            state = {}
            if all(per_param):
                state = {0: {"step": per_param[0]["step"],
                             "exp_avg": torch.cat([s["exp_avg"].reshape(-1) for s in per_param]),
                             "exp_avg_sq": torch.cat([s["exp_avg_sq"].reshape(-1) for s in per_param])}}
            state_dict = {"state": state, "param_groups": [{**state_dict["param_groups"][0], "params": [0]}]}
        _load_state_dict(self, state_dict)


_load_state_dict = _without_compiler_import(torch.optim.Optimizer.load_state_dict)


def _public_adam_step(optimizer: torch.optim.Adam, closure=None):
    """``torch.optim.Adam.step`` without torch's hook wrapper (``FlatAdam.step`` already went through it)."""
    step = torch.optim.Adam.step
    return (step.__wrapped__ if getattr(step, "hooked", False) else step)(optimizer, closure)


def make_optimizer(policy: nn.Module, lr: float, kind: str = "auto") -> torch.optim.Optimizer:
    """Adam (eps 1e-5) over the trainable parameters, flat-buffer or plain; see the module docstring."""
    params = [p for p in policy.parameters() if p.requires_grad]
    flat_ok = bool(params) and len({(p.dtype, p.device) for p in params}) == 1 and params[0].dtype.is_floating_point
    if kind not in OPTIMIZERS:
        raise ConfigError(f"ppo.optimizer = {kind!r}: allowed values are {', '.join(OPTIMIZERS)}")
    if kind == "flat_adam" and not flat_ok:
        raise ConfigError("ppo.optimizer = 'flat_adam': the trainable parameters do not share one float dtype and "
                          "device; use 'adam' or 'auto'")
    if kind == "flat_adam" or (kind == "auto" and flat_ok):
        return FlatAdam(params, lr=lr, eps=1e-5)
    fused = all(p.dtype.is_floating_point for p in params)
    return torch.optim.Adam(params, lr=lr, eps=1e-5, fused=fused or None)
