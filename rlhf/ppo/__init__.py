"""PPO math: pure functions for losses and advantages, and the one PPO update loop."""
from rlhf.ppo.advantages import explained_variance, gae, masked_mean, masked_var, masked_whiten, whiten
from rlhf.ppo.losses import (
    approx_kl,
    clip_fraction,
    clipped_surrogate_loss,
    entropy_loss,
    kl_penalty_surrogate_loss,
    value_loss,
)

__all__ = [
    "approx_kl", "clip_fraction", "clipped_surrogate_loss", "entropy_loss", "explained_variance", "gae",
    "kl_penalty_surrogate_loss", "masked_mean", "masked_var", "masked_whiten", "value_loss", "whiten",
]
