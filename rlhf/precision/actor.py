"""Rollout actors: cheaper copies of the policy that collect experience while the learner trains.

``make_actor(policy, mode)`` returns a module of the policy's own class (same methods, same
buffers such as observation running mean/var), with its nn.Linear layers swapped for bf16,
int8 or NF4 stand-ins; "fp32" returns the policy itself. After every update,
``refresh_actor(actor, policy)`` re-quantizes the existing buffers in place from the learner's
current weights and copies every other parameter and buffer - no module is rebuilt.

Off-policy correction. A low-precision actor's action distribution differs slightly from the
learner's, so the log-probs it records are those of a different policy. The trainer therefore
does not use them as PPO's "old" log-probs: before the update it recomputes the old log-probs
(and values) with the fp32 learner on the collected observations and actions, so the PPO ratio
starts at exactly 1 and the clipping is around the learner's own policy. It logs the mean
``actor_logp - learner_logp`` on the batch as ``precision/actor_learner_kl`` (a k1 estimate of
KL(actor || learner) under actor samples); a value that grows means the actor's precision is
too low for this policy.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from rlhf.precision.amp import float32_region
from rlhf.precision.layers import (DEFAULT_OUTLIER_THRESHOLD, QUANT_SCHEMES, _QuantLinear, check_scheme,
                                   quantize_model, replace_linears)

ROLLOUT_MODES = ("fp32", "bf16", *QUANT_SCHEMES)


class BF16Linear(_QuantLinear):
    """bf16 weight and bias; computes in bf16 but takes and returns the caller's dtype.

    Casting at every layer boundary keeps everything between Linear layers (activations,
    normalisers, distribution heads, log_softmax) in float32.
    """

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__(linear.in_features, linear.out_features, linear.bias is not None)
        self._init_from(linear)
        if self.bias is not None:
            self.bias = self.bias.to(torch.bfloat16)

    def _quantize(self, weight: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"weight_bf16": weight.to(torch.bfloat16).clone()}

    @torch.no_grad()
    def refresh_(self, linear: nn.Linear) -> "BF16Linear":
        self.weight_bf16.copy_(linear.weight.detach())
        if self.bias is not None:
            self.bias.copy_(linear.bias.detach())
        return self

    def dequantized_weight(self) -> torch.Tensor:
        return self.weight_bf16.float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with float32_region():                # bf16 by construction, whatever autocast is active
            return F.linear(x.to(torch.bfloat16), self.weight_bf16, self.bias).to(x.dtype)


def make_actor(policy: nn.Module, mode: str, *, threshold: float = DEFAULT_OUTLIER_THRESHOLD) -> nn.Module:
    """A rollout copy of ``policy`` in ``mode`` ("fp32" | "bf16" | "int8" | "int8-outlier" | "nf4").

    "fp32" returns ``policy`` itself (no copy, nothing to refresh). Other modes return a deep
    copy whose remaining float parameters do not require grad: actors are never trained.
    """
    check_scheme(mode, ROLLOUT_MODES, "precision.rollout")
    if mode == "fp32":
        return policy
    if mode == "bf16":
        actor = replace_linears(copy.deepcopy(policy), BF16Linear, what="make_actor(mode='bf16')")
    else:
        actor = quantize_model(policy, mode, threshold=threshold)
    actor.requires_grad_(False)
    return actor


@torch.no_grad()
def refresh_actor(actor: nn.Module, policy: nn.Module) -> nn.Module:
    """Bring ``actor`` up to ``policy``'s current weights in place and return it.

    Quantized layers re-quantize from the matching nn.Linear; every other parameter and buffer
    (convs, norms, observation statistics) is copied. The train/eval flag follows the policy.
    """
    if actor is policy:
        return actor
    for name, module in actor.named_modules():
        source = policy.get_submodule(name) if name else policy
        if isinstance(module, _QuantLinear):
            module.refresh_(source)
            continue
        if isinstance(source, _QuantLinear):
            raise ValueError(f"refresh_actor: policy module {name!r} is quantized; refresh from the fp32 learner")
        for key, tensor in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
            value = getattr(source, key)
            if value is None:
                continue
            if tensor.shape != value.shape:
                tensor.data = value.detach().to(tensor.dtype).clone()   # e.g. a statistic that grew
            else:
                tensor.copy_(value.detach())
    actor.train(policy.training)
    return actor
