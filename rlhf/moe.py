"""Mixture-of-Experts layers: a noisy top-k router over E experts, sparse dispatch, and the auxiliary losses
that keep the router from collapsing onto one expert.

Why a mixture in a policy: E experts' parameters at the compute of k of them per sample, so different
situations (track shapes, prompt kinds) can get their own weights. The pieces:

- Router (Shazeer et al. 2017, "Outrageously Large Neural Networks"): logits ``x W_g``, plus, in training
  only, Gaussian noise scaled by a learned ``softplus(x W_noise)``; the top-k logits are kept and
  softmaxed into gates. The router runs in fp32 whatever precision the experts use: a softmax over E
  close logits decides which expert sees a sample, and bf16 rounding would tie or flip those choices
  (the same contract as log-softmax in ``rlhf.precision``). Its weights are plain Parameters, not
  ``nn.Linear``, so quantizing a model's Linear layers (rollout copies, QAT, LoRA targets) skips it.
- Load-balancing loss (Switch Transformer / GShard): ``E * sum_i f_i P_i`` with ``f_i`` the fraction of
  routing assignments that went to expert i and ``P_i`` the mean router probability of expert i. It is 1
  for a perfectly balanced router and E for one that sends everything to one expert (top-1).
- Router z-loss (ST-MoE): the mean squared log-sum-exp of the logits, keeping them small.
- Capacity (optional): each expert takes at most ``ceil(capacity_factor * N * k / E)`` assignments per
  batch, first slot first then token order (GShard); the rest are dropped (that expert's share is 0).

Each ``MoE`` layer records its losses and routing statistics on every forward (``aux_loss``, ``stats``);
``auxiliary_loss(layers)`` sums the losses for the trainers, ``moe_statistics(layers)`` gives TensorBoard
scalars.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from rlhf.precision import float32_region


@dataclass(frozen=True)
class MoESettings:
    """What one ``MoE`` layer needs (filled from the ``moe:`` config sections)."""

    experts: int = 4
    top_k: int = 2
    noisy: bool = True
    aux_loss_coef: float = 0.01
    z_loss_coef: float = 0.0
    capacity_factor: float | None = None


# ----------------------------------------------------------------------------- pure routing math

def top_k_gates(logits: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """(gates (N, k), expert indices (N, k)): the k largest logits per row and their softmax."""
    values, indices = logits.topk(k, dim=-1)
    return torch.softmax(values, dim=-1), indices


def expert_fractions(indices: Tensor, num_experts: int) -> Tensor:
    """Fraction of routing assignments (token, slot) that went to each expert, before capacity drops; (E,)."""
    counts = torch.bincount(indices.reshape(-1), minlength=num_experts).to(torch.float32)
    return counts / max(indices.numel(), 1)


def load_balancing_loss(probs: Tensor, indices: Tensor) -> Tensor:
    """Switch/GShard auxiliary loss ``E * sum_i f_i P_i``: 1 when balanced, E when collapsed (top-1).

    ``f`` counts assignments (not differentiable); the gradient flows through ``P``, the mean router
    probability, pushing probability away from overloaded experts."""
    num_experts = probs.shape[-1]
    f = expert_fractions(indices, num_experts)
    return num_experts * (f * probs.mean(0)).sum()


def router_z_loss(logits: Tensor) -> Tensor:
    """ST-MoE's z-loss: mean of logsumexp(logits)^2, which keeps router logits from growing."""
    return torch.logsumexp(logits, dim=-1).pow(2).mean()


def capacity_keep(indices: Tensor, num_experts: int, capacity: int) -> Tensor:
    """(N, k) bool: which assignments fit in their expert's ``capacity``; first slots first, then token order."""
    n, k = indices.shape
    one_hot = F.one_hot(indices.t().reshape(-1), num_experts)  # (k*N, E), slot-major
    position = (one_hot.cumsum(0) - 1) * one_hot  # place of each assignment in its expert's queue
    fits = (position.sum(-1) < capacity).reshape(k, n).t()
    return fits


def expert_capacity(tokens: int, settings: MoESettings) -> int | None:
    if settings.capacity_factor is None:
        return None
    return max(1, math.ceil(settings.capacity_factor * tokens * settings.top_k / settings.experts))


# ----------------------------------------------------------------------------- modules

class Router(nn.Module):
    """Noisy top-k gating logits, computed in fp32 (see the module docstring)."""

    def __init__(self, dim: int, num_experts: int, noisy: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(num_experts, dim) * dim ** -0.5 * 0.1)
        self.noise_weight = nn.Parameter(torch.zeros(num_experts, dim)) if noisy else None

    def forward(self, x: Tensor) -> Tensor:
        with float32_region():
            x = x.float()
            logits = x @ self.weight.float().t()
            if self.training and self.noise_weight is not None:
                noise_std = F.softplus(x @ self.noise_weight.float().t())
                logits = logits + torch.randn_like(logits) * noise_std
        return logits


class MoE(nn.Module):
    """``sum_k gate_k * expert_k(x)`` over the top-k experts of each sample (last axis = features).

    ``experts`` are any modules mapping ``(n, dim) -> (n, out)``: single Linear layers in gym MLP trunks,
    whole FFN blocks in the text transformer. Only the chosen experts run on each sample (sparse
    dispatch); ``dense_forward`` runs every expert on every sample with the same gates, as a reference.
    """

    def __init__(self, experts: list[nn.Module], dim: int, settings: MoESettings) -> None:
        super().__init__()
        if not 1 <= settings.top_k <= settings.experts:
            raise ValueError(f"top_k = {settings.top_k}: must be between 1 and experts = {settings.experts}")
        self.settings = settings
        self.experts = nn.ModuleList(experts)
        self.router = Router(dim, settings.experts, settings.noisy)
        self.aux_loss: Tensor | None = None
        self.stats: dict[str, Tensor] = {}

    def route(self, flat: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """(gates (N, k), indices (N, k), keep (N, k) or None); records aux loss and statistics."""
        s = self.settings
        logits = self.router(flat)
        probs = torch.softmax(logits, dim=-1)
        gates, indices = top_k_gates(logits, s.top_k)
        capacity = expert_capacity(flat.shape[0], s)
        keep = capacity_keep(indices, s.experts, capacity) if capacity is not None else None
        balance = load_balancing_loss(probs, indices)
        aux = s.aux_loss_coef * balance
        if s.z_loss_coef:
            aux = aux + s.z_loss_coef * router_z_loss(logits)
        self.aux_loss = aux
        with torch.no_grad():
            entropy = -(probs * torch.log(probs.clamp_min(1e-12))).sum(-1).mean()
            dropped = (1.0 - keep.float().mean()) if keep is not None else torch.zeros(())
            self.stats = {"load_balancing_loss": balance.detach(), "aux_loss": aux.detach(),
                          "router_entropy": entropy, "dropped_fraction": dropped,
                          "expert_load": expert_fractions(indices, s.experts)}
        return gates, indices, keep

    def forward(self, x: Tensor) -> Tensor:
        flat = x.reshape(-1, x.shape[-1])
        gates, indices, keep = self.route(flat)
        chosen = indices if keep is None else torch.where(keep, indices, -1)
        out = None
        for e, expert in enumerate(self.experts):
            rows, slots = (chosen == e).nonzero(as_tuple=True)
            if rows.numel() == 0:
                continue
            y = expert(flat[rows])
            y = y * gates[rows, slots].unsqueeze(-1).to(y.dtype)
            if out is None:
                out = y.new_zeros(flat.shape[0], y.shape[-1])
            out = out.index_add(0, rows, y)
        if out is None:  # every assignment dropped: the layer outputs zeros
            out = flat.new_zeros(flat.shape[0], self._out_features(flat))
        return out.reshape(*x.shape[:-1], out.shape[-1])

    def dense_forward(self, x: Tensor) -> Tensor:
        """Every expert on every sample, weighted by the same (sparse) gates: the reference for tests."""
        flat = x.reshape(-1, x.shape[-1])
        gates, indices, keep = self.route(flat)
        if keep is not None:
            gates = gates * keep
        weights = torch.zeros(flat.shape[0], len(self.experts), dtype=gates.dtype, device=gates.device)
        weights = weights.scatter_add(1, indices, gates)
        outs = torch.stack([expert(flat) for expert in self.experts], dim=1)  # (N, E, out)
        out = (outs * weights.unsqueeze(-1).to(outs.dtype)).sum(1)
        return out.reshape(*x.shape[:-1], out.shape[-1])

    def _out_features(self, flat: Tensor) -> int:
        with torch.no_grad():
            return self.experts[0](flat[:1]).shape[-1]


# ----------------------------------------------------------------------------- model-level helpers

def moe_layers(model: nn.Module) -> list[MoE]:
    return [m for m in model.modules() if isinstance(m, MoE)]


def auxiliary_loss(layers: list[MoE]) -> Tensor | None:
    """Sum of the layers' auxiliary losses from their last forward (None without MoE layers)."""
    losses = [m.aux_loss for m in layers if m.aux_loss is not None]
    return torch.stack(losses).sum() if losses else None


def with_auxiliary_loss(loss: Tensor, model: nn.Module) -> Tensor:
    """``loss`` plus ``model.auxiliary_loss()`` when the model has one (MoE): how SFT and the reward model
    train their routers; PPO adds it inside ``ppo_update`` through the same method."""
    from rlhf.ppo.update import auxiliary_loss as model_auxiliary_loss

    aux = model_auxiliary_loss(model)
    return loss if aux is None else loss + aux


def moe_statistics(layers: list[MoE]) -> dict[str, float]:
    """TensorBoard scalars: ``moe/aux_loss``, ``moe/load_balancing_loss``, ``moe/router_entropy`` and
    ``moe/dropped_fraction`` averaged over MoE layers; ``moe/expert_load/layer<j>/expert<i>``, the fraction
    of layer j's routing assignments that went to expert i, and its extremes ``moe/expert_load_min|max``
    (a collapsed router shows as a max near 1 and a min near 0)."""
    layers = [m for m in layers if m.stats]
    if not layers:
        return {}
    out = {f"moe/{k}": float(torch.stack([m.stats[k] for m in layers]).mean())
           for k in ("aux_loss", "load_balancing_loss", "router_entropy", "dropped_fraction")}
    loads = torch.stack([m.stats["expert_load"] for m in layers])  # (layers, experts)
    out.update({f"moe/expert_load/layer{j}/expert{i}": float(v) for j, row in enumerate(loads) for i, v in enumerate(row)})
    out["moe/expert_load_min"], out["moe/expert_load_max"] = float(loads.min()), float(loads.max())
    return out


def active_parameters(model: nn.Module) -> tuple[int, int]:
    """(total, active per sample/token): an MoE layer's experts count k/E of their parameters as active."""
    total = sum(p.numel() for p in model.parameters())
    inactive = 0
    for m in moe_layers(model):
        per_expert = sum(p.numel() for p in m.experts[0].parameters())
        inactive += (m.settings.experts - m.settings.top_k) * per_expert
    return total, total - inactive
