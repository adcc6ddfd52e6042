"""One PPO update: epochs x shuffled minibatches, clipped (or KL-penalised) surrogate, value loss,
entropy bonus, global grad-norm clipping and target-KL early stop. Returns a stats dict."""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import Tensor

from rlhf.config import PPOConfig
from rlhf.ppo.advantages import explained_variance, whiten
from rlhf.ppo.losses import (
    approx_kl,
    clip_fraction,
    clipped_surrogate_loss,
    entropy_loss,
    kl_penalty_surrogate_loss,
    value_loss,
)
from rlhf.precision import Precision


@dataclass
class Batch:
    """A flat batch of transitions (first axis = sample). Everything but ``obs``/``actions`` is fp32."""

    obs: Tensor
    actions: Tensor
    logp: Tensor
    values: Tensor
    advantages: Tensor
    returns: Tensor

    def __len__(self) -> int:
        return self.obs.shape[0]

    def index(self, idx: Tensor) -> "Batch":
        return Batch(*(getattr(self, f.name)[idx] for f in fields(self)))


def adapt_kl_coef(kl_coef: float, kl: float, kl_target: float) -> float:
    """The PPO paper's adaptive beta: halve when KL < d/1.5, double when KL > 1.5 d."""
    if kl < kl_target / 1.5:
        return kl_coef / 2.0
    if kl > kl_target * 1.5:
        return kl_coef * 2.0
    return kl_coef


def ppo_update(policy: torch.nn.Module, optimizer: torch.optim.Optimizer, b: Batch, cfg: PPOConfig,
               precision: Precision, clip_range: float, kl_coef: float = 0.0) -> dict[str, float]:
    """Run ``cfg.epochs`` passes of shuffled minibatches over ``b``; return SB3-named statistics.

    Two shortcuts leave the algorithm unchanged. When one minibatch holds the whole batch, it is used as
    is (shuffling it would only reorder the sums) and its advantages are normalised once. In fp32 with an
    optimizer that offers ``clip_and_step`` (``rlhf.optim.FlatAdam``), clip + Adam run as one op each on
    flat buffers instead of through ``precision.step``.
    """
    params = [p for p in policy.parameters() if p.requires_grad]
    n = len(b)
    mb_size = min(cfg.batch_size, n)
    whole = mb_size == n
    fast_step = getattr(optimizer, "clip_and_step", None) if precision.mode == "fp32" else None
    # approx_kl / clip_fraction are statistics, computed in one go after the loop unless target_kl needs them now
    kl_each_step = cfg.target_kl is not None or not whole
    b_adv = whiten(b.advantages) if whole and cfg.normalize_advantage and n > 1 else b.advantages
    pg_losses, v_losses, ent_losses, kls, clipfracs, grad_norms, new_logps = [], [], [], [], [], [], []
    n_updates, stop = 0, False
    for _epoch in range(cfg.epochs):
        if whole:
            minibatches = [(b, b_adv)]
        else:
            b_inds = torch.randperm(n)
            minibatches = []
            for start in range(0, n, mb_size):
                mb_inds = b_inds[start:start + mb_size]
                if len(mb_inds) < 2 and n >= 2:
                    continue  # a 1-sample tail cannot be normalised; SB3 would also skip it
                mb = b.index(mb_inds)
                normalize = cfg.normalize_advantage and len(mb) > 1
                minibatches.append((mb, whiten(mb.advantages) if normalize else mb.advantages))
        for mb, mb_adv in minibatches:
            with precision.autocast():
                out, new_values = policy(mb.obs)
            new_logp, entropy = policy.logp_entropy(out, mb.actions)
            new_values = new_values.float()

            if cfg.policy_loss == "clip":
                pg_loss = clipped_surrogate_loss(new_logp, mb.logp, mb_adv, clip_range)
            else:
                pg_loss = kl_penalty_surrogate_loss(new_logp, mb.logp, mb_adv, kl_coef)
            v_loss = value_loss(new_values, mb.returns, mb.values, cfg.clip_value, cfg.loss_type, cfg.huber_delta)
            ent_loss = entropy_loss(entropy)
            loss = pg_loss + cfg.vf_coef * v_loss
            if cfg.entropy_coef:  # a zero coefficient would only add zeros to the gradients
                loss = loss + cfg.entropy_coef * ent_loss

            if kl_each_step:
                kl = approx_kl(new_logp.detach(), mb.logp)
                if cfg.target_kl is not None and float(kl) > 1.5 * cfg.target_kl:
                    stop = True  # SB3's rule: stop before stepping on a minibatch that already moved too far
                    kls.append(kl)
                    break
            if fast_step is not None:
                optimizer.zero_grad()
                loss.backward()
                grad_norms.append(fast_step(cfg.max_grad_norm))
            else:
                grad_norms.append(precision.step(loss, optimizer, params, cfg.max_grad_norm)["grad_norm"])
            n_updates += 1
            pg_losses.append(pg_loss.detach())
            v_losses.append(v_loss.detach())
            ent_losses.append(ent_loss.detach())
            if kl_each_step:
                kls.append(kl)
                clipfracs.append(clip_fraction(new_logp.detach(), mb.logp, clip_range))
            else:
                new_logps.append(new_logp.detach())
        if stop:
            break
    if new_logps:  # whole-batch steps: every step saw the same old log-probs, so stack and average once
        new_logps_t = torch.stack(new_logps)
        kls.append(approx_kl(new_logps_t, b.logp))
        clipfracs.append(clip_fraction(new_logps_t, b.logp, clip_range))

    def mean(xs: list) -> float:
        if not xs:
            return float("nan")
        if not all(isinstance(x, torch.Tensor) for x in xs):
            xs = [torch.as_tensor(x, dtype=torch.float32) for x in xs]
        return float(torch.stack(xs).float().mean())

    return {
        "train/policy_gradient_loss": mean(pg_losses),
        "train/value_loss": mean(v_losses),
        "train/entropy_loss": mean(ent_losses),
        "train/approx_kl": mean(kls),
        "train/clip_fraction": mean(clipfracs),
        "train/loss": float(pg_losses[-1] + cfg.entropy_coef * ent_losses[-1] + cfg.vf_coef * v_losses[-1])
        if pg_losses else float("nan"),
        "train/explained_variance": explained_variance(b.values, b.returns),
        "train/grad_norm": mean(grad_norms),
        "train/n_updates": float(n_updates),
        "train/clip_range": float(clip_range),
        "train/early_stop": float(stop),
    }
