"""The learner's optimizer: Adam with eps 1e-5 (as in the PPO reference implementations).

``make_optimizer`` returns a ``FlatAdam``: ordinary fused Adam whose single parameter is one flat buffer
holding all of the module's trainable parameters. A PPO step on a small MLP is dominated by per-tensor
overhead (zero_grad, the global grad-norm clip and Adam each loop over every weight and bias), so
making them one tensor each is worth a lot; the arithmetic is unchanged.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


class FlatAdam(torch.optim.Adam):
    """Fused Adam over one contiguous buffer; the module's parameters become views into it.

    Each parameter keeps its name, shape and place in the module (``state_dict`` is unchanged); only its
    storage moves into ``self.flat``. Each parameter's ``.grad`` is a view into ``self.flat.grad``, so
    autograd accumulates straight into the flat gradient and the usual ``zero_grad`` / backward / clip /
    ``step`` sequence (including ``torch.amp.GradScaler``) works as with plain Adam. Two differences:
    ``zero_grad`` zeroes in place instead of setting gradients to None (they must stay views), so a
    parameter that got no gradient is stepped with a zero gradient; and moving or casting the module
    after building the optimizer detaches it from the buffer (build the optimizer last, as the trainer does).
    """

    def __init__(self, params: list[nn.Parameter], lr: float, eps: float = 1e-5) -> None:
        self.module_params = list(params)
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
        self._kernel_ok = True

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Zero the flat gradient in place (``set_to_none`` is ignored: gradients must stay views of it)."""
        if self.flat.grad is not self._flat_grad:
            self.flat.grad = self._flat_grad
        self._flat_grad.zero_()
        for p, g in zip(self.module_params, self._grad_views):
            if p.grad is not g:  # reset elsewhere (e.g. module.zero_grad()): point it back at the buffer
                p.grad = g

    @torch.no_grad()
    def clip_and_step(self, max_grad_norm: float | None) -> Tensor:
        """Global grad-norm clip (as ``clip_grad_norm_``) and one Adam step, each a single op on the flat
        buffers. The fp32 fast path of ``ppo_update``; the result equals clip_grad_norm_ + ``step()``
        up to float rounding of the norm. Returns the norm before clipping (a tensor: no sync)."""
        grad = self.flat.grad
        norm = torch.linalg.vector_norm(grad)
        if max_grad_norm is not None and grad.is_cpu:  # reading a CPU scalar is free: skip the tensor ops
            coef = max_grad_norm / (float(norm) + 1e-6)
            if coef < 1.0:
                grad.mul_(coef)
        elif max_grad_norm is not None:
            grad.mul_(torch.clamp(max_grad_norm / (norm + 1e-6), max=1.0))
        group, state = self.param_groups[0], self.state[self.flat]
        if not state:  # what Adam's fused path creates on its first step
            state["step"] = torch.zeros((), dtype=torch.float32, device=self.flat.device)
            state["exp_avg"] = torch.zeros_like(self.flat, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(self.flat, memory_format=torch.preserve_format)
        if (not self._kernel_ok or group["amsgrad"] or group["maximize"] or group["weight_decay"]
                or torch.is_tensor(group["lr"])):
            self.step()  # settings this shortcut does not cover
            return norm
        beta1, beta2 = group["betas"]
        state["step"] += 1
        try:  # the kernel Adam(fused=True) calls, minus its Python bookkeeping; private, so guarded
            torch._fused_adam_([self.flat], [grad], [state["exp_avg"]], [state["exp_avg_sq"]], [], [state["step"]],
                               amsgrad=False, lr=group["lr"], beta1=beta1, beta2=beta2, weight_decay=0.0,
                               eps=group["eps"], maximize=False, grad_scale=None, found_inf=None)
        except (AttributeError, TypeError, RuntimeError):
            state["step"] -= 1
            self._kernel_ok = False  # another torch version: the public step from now on
            self.step()
        return norm

    def load_state_dict(self, state_dict: dict) -> None:
        """Also accepts the state of a plain Adam over the same parameters (checkpoints before FlatAdam)."""
        params = state_dict["param_groups"][0]["params"]
        if len(state_dict["param_groups"]) == 1 and len(params) == len(self.module_params) > 1:
            per_param = [state_dict["state"].get(i, {}) for i in params]
            state = {}
            if all(per_param):
                state = {0: {"step": per_param[0]["step"],
                             "exp_avg": torch.cat([s["exp_avg"].reshape(-1) for s in per_param]),
                             "exp_avg_sq": torch.cat([s["exp_avg_sq"].reshape(-1) for s in per_param])}}
            state_dict = {"state": state, "param_groups": [{**state_dict["param_groups"][0], "params": [0]}]}
        super().load_state_dict(state_dict)


def make_optimizer(policy: nn.Module, lr: float) -> torch.optim.Optimizer:
    """Adam over the trainable parameters: a ``FlatAdam`` when they share a float dtype and a device,
    otherwise plain Adam (fused where the dtypes allow: one kernel launch per step)."""
    params = [p for p in policy.parameters() if p.requires_grad]
    if params and len({(p.dtype, p.device) for p in params}) == 1 and params[0].dtype.is_floating_point:
        return FlatAdam(params, lr=lr, eps=1e-5)
    fused = all(p.dtype.is_floating_point for p in params)
    return torch.optim.Adam(params, lr=lr, eps=1e-5, fused=fused or None)
