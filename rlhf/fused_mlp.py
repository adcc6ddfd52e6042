"""Opt-in fast path: tanh MLPs that read the same input (an actor and a critic) as ONE autograd node.

Why: for 64-unit MLPs on a few hundred CPU samples, autograd's per-op bookkeeping and ``nn.Module``
calls cost as much as the arithmetic; one node with a hand-written backward for both networks makes a
PPO gradient step markedly cheaper. The numbers are autograd's (gradchecked in float64 and compared
with layer-by-layer autograd in float32). Its plain twin is the same ``nn.Sequential`` run layer by
layer: ``policy.fused: off``. ``why_not_fusable`` says why the fast path does not apply to a set of layers.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.modules.module import register_module_module_registration_hook, register_module_parameter_registration_hook

_structure_version = 0


def _count_registration(*_args) -> None:
    global _structure_version
    _structure_version += 1


register_module_module_registration_hook(_count_registration)
register_module_parameter_registration_hook(_count_registration)


def structure_version() -> int:
    """How many submodules and parameters have been (re)assigned anywhere in this process.

    Counted by torch's global registration hooks: a layer swapped into a ``Sequential``, a LoRA wrapper, a
    new weight or a bias set to None all change it. A fused plan cached under one value is valid while the
    value stays, so the per-call check is one integer comparison instead of walking the modules.
    """
    return _structure_version


def _tanh_mlp_forward(x: Tensor, params: tuple[Tensor, ...], tanh_last: bool) -> list[Tensor]:
    """Activations ``[x, h1, ..., out]`` of Linear layers ``params = (W1, b1, W2, b2, ...)`` with tanh
    between them (and after the last one if ``tanh_last``).

    On large tensors tanh(z) is computed as 2 sigmoid(2z) - 1 with 2z straight out of addmm: aten::tanh goes
    through MKL's VML, which takes a slow scalar path on some CPUs (AMD), and this is the same function in
    under half the time on a (256, 64) batch. Small tensors keep aten::tanh, where the extra ops cost more.
    """
    hs, n = [x], len(params) // 2
    for i in range(n):
        w, b = params[2 * i], params[2 * i + 1]
        if i == n - 1 and not tanh_last:
            x = torch.addmm(b, x, w.t())
        elif x.shape[0] * w.shape[0] < 4096:
            x = torch.addmm(b, x, w.t()).tanh_()
        else:
            x = torch.sigmoid_(torch.addmm(b, x, w.t(), beta=2.0, alpha=2.0)).mul_(2.0).sub_(1.0)
        hs.append(x)
    return hs


class _TanhMLP(torch.autograd.Function):
    """Tanh MLPs (``_tanh_mlp_forward``) that read the same input - the actor and the critic - as one
    autograd node with a hand-written backward.

    Why: for 64-unit MLPs on a few hundred CPU samples, autograd's per-op bookkeeping and nn.Module calls
    cost as much as the arithmetic. One node for both networks instead of ~4 per layer makes a PPO
    gradient step markedly cheaper; the gradients are autograd's (tested to float rounding).
    """

    @staticmethod
    def forward(ctx, x: Tensor, tanh_last: bool, depths: tuple[int, ...], *params: Tensor) -> tuple[Tensor, ...]:
        outs, saved, start = [], [], 0
        for depth in depths:
            net = params[start:start + 2 * depth]
            start += 2 * depth
            hs = _tanh_mlp_forward(x, net, tanh_last)
            outs.append(hs[-1])
            saved += [*hs[:-1], *net[0::2], *hs[-1:]] if tanh_last else [*hs[:-1], *net[0::2]]
        ctx.tanh_last, ctx.depths = tanh_last, depths
        ctx.save_for_backward(*saved)
        return tuple(outs)

    @staticmethod
    def backward(ctx, *out_grads: Tensor):
        saved, start = ctx.saved_tensors, 0
        x_grad, grads = None, []
        for depth, grad in zip(ctx.depths, out_grads):
            hs, weights = saved[start:start + depth], saved[start + depth:start + 2 * depth]
            if ctx.tanh_last:
                grad = torch.ops.aten.tanh_backward(grad, saved[start + 2 * depth])
            start += 2 * depth + ctx.tanh_last
            net_grads: list[Tensor | None] = [None] * (2 * depth)
            for i in reversed(range(depth)):
                # dW = g' h, computed as (h' g)' when the layer is wider than its input: same numbers, but
                # MKL is several times faster when the short side of the product comes first
                w = weights[i]
                wide = w.shape[1] < w.shape[0]
                net_grads[2 * i] = torch.mm(hs[i].t(), grad).t() if wide else torch.mm(grad.t(), hs[i])
                net_grads[2 * i + 1] = grad.sum(0)
                if i > 0:
                    grad = torch.ops.aten.tanh_backward(torch.mm(grad, w), hs[i])
                elif ctx.needs_input_grad[0]:
                    x_grad = torch.mm(grad, w) if x_grad is None else x_grad.addmm_(grad, w)
            grads += net_grads
        return x_grad, None, None, *grads


def tanh_mlp_linears(trunk: nn.Module) -> list[nn.Module] | None:
    """The layers in the Linear slots of ``Sequential(Flatten, Sequential(Linear, Tanh, Linear, Tanh, ...))``
    when every activation is exactly ``nn.Tanh``; None for any other shape (a CNN, another activation).

    Reads ``_modules`` directly: this runs on every forward, and ``Sequential.__getitem__`` costs more than
    the check itself."""
    if not isinstance(trunk, nn.Sequential):
        return None
    outer = list(trunk._modules.values())
    if len(outer) != 2 or not isinstance(outer[1], nn.Sequential):
        return None
    layers = list(outer[1]._modules.values())
    if len(layers) % 2 or any(type(a) is not nn.Tanh for a in layers[1::2]):
        return None
    return layers[0::2]


def linear_params(linears: list[nn.Module]) -> tuple[Tensor, ...]:
    """``(W1, b1, W2, b2, ...)`` of Linear layers (read from ``_parameters``: this runs on every forward)."""
    return tuple(t for layer in linears for t in (layer._parameters["weight"], layer._parameters["bias"]))


def fused_tanh_mlps(nets: tuple[tuple[Tensor, ...], ...], x: Tensor, tanh_last: bool = False) -> tuple[Tensor, ...]:
    """Tanh MLPs on the same input, each given as its Linear layers ``(W1, b1, W2, b2, ...)``, with tanh
    between layers (and after the last if ``tanh_last``): one ``_TanhMLP`` autograd node when a gradient
    is wanted, plain ops otherwise (rollouts)."""
    params = tuple(t for net in nets for t in net)
    if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in params)):
        return _TanhMLP.apply(x, tanh_last, tuple(len(net) // 2 for net in nets), *params)
    return tuple(_tanh_mlp_forward(x, net, tanh_last)[-1] for net in nets)


def why_not_fusable(modules: list[nn.Module]) -> str | None:
    """None if every module is exactly ``nn.Linear`` with a bias and no hooks; else the reason.

    Checked on every forward (a few type checks), so a layer swapped for a quantized, QAT or LoRA one, or
    a forward hook added later, moves that call to the layer-by-layer path instead of being skipped.
    """
    for m in modules:
        if type(m) is not nn.Linear:
            return f"{type(m).__name__} layer"
        if m.bias is None:
            return "Linear without bias"
        if m._forward_hooks or m._forward_pre_hooks:
            return "forward hook on a layer"
    return None
