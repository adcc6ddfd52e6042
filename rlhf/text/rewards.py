"""From sequence scores to per-token rewards and advantages (pure functions), and user reward files.

InstructGPT / Ziegler et al. (2019): each response token is penalised by beta * KL(policy || reference)
estimated at that token, and the reward model's score is added at the last real token (the EOS, or the
last token of a response cut at ``max_new_tokens``) - not after it. A response that never emitted EOS
can be penalised (TRL's ``missing_eos_penalty``).
"""
from __future__ import annotations

import importlib.util
import math
import numbers
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from rlhf.errors import ConfigError
from rlhf.ppo.advantages import gae, grpo_advantages, masked_whiten, rloo_advantages
from rlhf.ppo.losses import kl_estimate
from rlhf.text.reward_model import last_token_index

RewardFn = Callable[[str, str], float]


def token_rewards(scores: Tensor, logp: Tensor, ref_logp: Tensor, mask: Tensor, kl_coef: float,
                  estimator: str = "k1") -> tuple[Tensor, Tensor]:
    """(rewards, kl), each (B, T): rewards = -beta * kl per token, plus the score at the last real token.

    ``kl`` is the per-token estimate of KL(policy || reference) (``kl_estimate``), 0 on padding.
    """
    kl = torch.where(mask.bool(), kl_estimate(logp, ref_logp, estimator), 0.0)
    rewards = -kl_coef * kl
    rows = torch.arange(scores.shape[0], device=scores.device)
    rewards[rows, last_token_index(mask)] += scores
    return rewards, kl


def penalise_missing_eos(scores: Tensor, ended: Tensor, penalty: float | None) -> Tensor:
    """Scores with ``penalty`` subtracted where the response never emitted EOS."""
    return scores if penalty is None else torch.where(ended, scores, scores - penalty)


def token_gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """GAE over response tokens (B, T): the episode ends at each row's last real token (no bootstrap after it).

    Calls the same ``gae`` as the gym trainer, time axis first.
    """
    m = mask.float()
    values = values * m
    next_values = torch.cat([values[:, 1:], torch.zeros_like(values[:, :1])], 1)
    end = torch.zeros_like(m)
    end[torch.arange(m.shape[0]), last_token_index(mask)] = 1.0
    adv, ret = gae((rewards * m).T, values.T, next_values.T, end.T, end.T, gamma, lam)
    return adv.T * m, ret.T * m


def group_advantages(rewards: Tensor, mask: Tensor, num_generations: int, method: str) -> Tensor:
    """RLOO / GRPO: one advantage per response from its total reward against the other samples of its
    prompt (rows are grouped as consecutive runs of ``num_generations``), spread over its tokens."""
    totals = (rewards * mask).sum(1).reshape(-1, num_generations)
    adv = rloo_advantages(totals) if method == "rloo" else grpo_advantages(totals)
    return adv.reshape(-1, 1) * mask.float()


def whiten_rewards(rewards: Tensor, mask: Tensor, whiten: Callable[..., Tensor] = masked_whiten) -> Tensor:
    """Scale token rewards to unit variance over real tokens, keeping their mean (TRL's ``whiten_rewards``).

    ``whiten``: ``masked_whiten``, or ``rlhf.distributed.whiten`` for the statistics of every rank's tokens."""
    return whiten(rewards, mask, shift_mean=False) * mask


class AdaptiveKL:
    """Ziegler et al.'s proportional controller: beta moves towards the KL ``target`` over ``horizon`` samples."""

    def __init__(self, init: float, target: float, horizon: int) -> None:
        self.value, self.target, self.horizon = init, target, horizon

    def update(self, kl: float, n_samples: int) -> float:
        error = min(max(kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_samples / self.horizon
        return self.value


# ----------------------------------------------------------------------------- user reward files

def load_reward_function(path: str | Path) -> RewardFn:
    """``reward_function(prompt: str, response: str) -> float`` from a Python file (like a DeepRacer reward file)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"text.reward_function = {str(path)!r}: file not found")
    from envs.deepracer.guard import Guard, UserCodeError

    spec = importlib.util.spec_from_file_location(f"rlhf_user_reward_{abs(hash(str(path.resolve())))}", path)
    module = importlib.util.module_from_spec(spec)
    try:  # contained like a DeepRacer reward file: sys.exit or any BaseException is reported, signals still stop
        with Guard(timeout_s=None) as guard:
            guard.call(spec.loader.exec_module, module)
    except UserCodeError as exc:  # the user's file: report it in one line
        raise ConfigError(f"text.reward_function = {str(path)!r}: importing it {exc.reason}") from None
    fn = getattr(module, "reward_function", None)
    if not callable(fn):
        raise ConfigError(f"text.reward_function = {str(path)!r}: defines no function reward_function(prompt, response)")
    return fn


def call_reward(fn: RewardFn, prompts: list[str], responses: list[str], name: str = "text.reward_function") -> Tensor:
    """Score every (prompt, response); a raise, a non-number or a non-finite value stops the run with that
    pair in the message."""
    from envs.deepracer.guard import Guard, UserCodeError

    out = []
    with Guard(timeout_s=None) as guard:  # SIGINT/SIGTERM interrupt a call that hangs; sys.exit is reported
        for prompt, response in zip(prompts, responses):
            try:
                value = guard.call(fn, prompt, response)
            except UserCodeError as exc:
                raise ConfigError(f"{name} {exc.reason} for prompt {prompt!r}, response {response!r}") from None
            out.append(_checked(value, name, prompt, response))
    return torch.tensor(out, dtype=torch.float32)


def _checked(value, name: str, prompt: str, response: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)) \
            or abs(float(value)) > 3e38:
        raise ConfigError(f"{name} returned {value!r} for prompt {prompt!r}, response {response!r}: it must "
                          "return a finite number")
    return float(value)
