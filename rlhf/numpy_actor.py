"""The rollout actor of a small tanh-MLP policy on CPU: the policy network's forward pass in numpy.

Why: a rollout step runs the actor on a handful of observations between two env steps. Right after the
env's Python and numpy code, each torch call costs about 10 us more than it does in a tight loop (its
dispatcher path is no longer in the CPU's caches), so the dozen calls of a torch forward and sample made
acting cost as much as stepping CartPole itself. The same arithmetic in numpy costs a fraction.

Nothing is copied: the weights are numpy views of the policy's own parameters, which the optimizer updates
in place, so the actor acts with the current weights at every step. Samples come from the actor's own numpy
generator, saved in checkpoints (``state_dict``). The learner still scores every collected step with
``evaluate_actions`` (``rlhf.rollout.score_rollout``), so PPO's old log-probs are torch's and its ratio
starts at exactly 1; the actions are samples of the same weights up to float32 rounding.

``NumpyActor.why_not(policy)`` says when this does not apply (the policy then acts itself): a trunk that is
not a plain tanh MLP (the fused path's rule, ``policy.fused: off`` included), a shared trunk, observation
normalisation, or parameters that are not float32 on the CPU.
"""
from __future__ import annotations

import numpy as np
import torch

from rlhf.policies import ActorCritic


class NumpyActor:
    """``sample_actions`` / ``env_actions`` of an ``ActorCritic`` in numpy (see the module docstring)."""

    takes_numpy = True  # the collector passes observations as a float32 array, not a tensor

    def __init__(self, policy: ActorCritic, seed: int | tuple[int, ...]) -> None:
        self.rng = np.random.default_rng(seed)
        self.refresh(policy)
        self.continuous = policy.continuous
        if self.continuous:
            self.low = policy.action_low.numpy()
            self.high = policy.action_high.numpy()

    @staticmethod
    def why_not(policy: ActorCritic) -> str | None:
        """None when ``policy`` can act through a ``NumpyActor``; otherwise the reason it cannot."""
        if policy.vf_trunk is None:
            return "shared trunk"
        if policy.obs_rms is not None:
            return "observation normalisation"
        probe = torch.zeros(1, *policy.obs_space.shape)
        plan, why = policy._fused_plan(probe)
        if plan is not None and any(p.device.type != "cpu" or p.dtype != torch.float32 for p in plan[0]):
            return "parameters not float32 on the CPU"
        return why

    def refresh(self, policy: ActorCritic) -> "NumpyActor | ActorCritic":
        """Views of ``policy``'s current actor weights (after an update moved or replaced any), or the policy
        itself once it no longer qualifies (``why_not``)."""
        if self.why_not(policy) is not None:
            return policy
        plan, _ = policy._fused_plan(torch.zeros(1, *policy.obs_space.shape))
        net = [p.detach().numpy() for p in plan[0]]
        self.layers = [(w.T, b) for w, b in zip(net[0::2], net[1::2])]  # x @ W.T + b, as nn.Linear
        self.log_std = policy.log_std.detach().numpy() if policy.continuous else None
        return self

    def sample_actions(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        """Actions for a (N, ...) float32 batch: Gumbel-max samples of the logits (argmax when
        ``deterministic``), or Gaussian samples around the mean, as ``ActorCritic.sample_actions`` draws them."""
        x = obs.reshape(obs.shape[0], -1)
        for wt, b in self.layers[:-1]:
            x = np.tanh(x @ wt + b)
        wt, b = self.layers[-1]
        out = x @ wt + b
        if self.continuous:
            if deterministic:
                return out
            return out + self.rng.standard_normal(out.shape, dtype=np.float32) * np.exp(self.log_std)
        if deterministic:
            return out.argmax(-1)
        # float64 draws: a float32 exponential is exactly 0 about once in 7 million draws, and -log(0) = inf
        # would pick that action whatever its probability
        return (out - np.log(self.rng.standard_exponential(out.shape))).argmax(-1)

    def env_actions(self, actions: np.ndarray) -> np.ndarray:
        """What the env receives: Box actions clipped to its bounds, Discrete as they are."""
        return np.clip(actions, self.low, self.high) if self.continuous else actions

    def state_dict(self) -> dict:
        return {"bit_generator": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["bit_generator"]
