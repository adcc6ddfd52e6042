"""The learner's optimizer: Adam with eps 1e-5 (as in the PPO reference implementations)."""
from __future__ import annotations

import torch
from torch import nn


def make_optimizer(policy: nn.Module, lr: float) -> torch.optim.Optimizer:
    """Adam over the trainable parameters; the fused kernel where the device supports it (one launch per step)."""
    params = [p for p in policy.parameters() if p.requires_grad]
    fused = all(p.dtype.is_floating_point for p in params)
    return torch.optim.Adam(params, lr=lr, eps=1e-5, fused=fused or None)
