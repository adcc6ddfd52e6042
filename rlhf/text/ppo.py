"""Stage 3: PPO on generated text through the shared core (``rlhf.ppo``), TRL's words for the objective.

One iteration: sample prompts -> generate responses (KV cache, the acting copy in its rollout precision)
-> score them (reward model or a user callable) -> log-probs and values of the learner and log-probs of
the frozen reference (``evaluate_actions``, the call the update makes, so the first ratio is 1) ->
per-token rewards (-beta * KL, score at the last real token) -> advantages (GAE over tokens, or RLOO /
GRPO group baselines) -> ``ppo_update`` with a (B, T) token mask -> KL-coefficient control.

Data-parallel (torchrun, ``rlhf.distributed``): every rank samples its own ``prompts_per_update`` prompts from
its own stream (seed + rank); ``pipeline.build_text_ppo`` installs the gradient mean and cross-rank whitening;
here the KL controller and the step counter read every rank's samples, so the ranks stay identical.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import torch
from torch import Tensor

from rlhf import distributed
from rlhf.config import Config
from rlhf.errors import NonFiniteError, RankFailedError
from rlhf.finite import check_state
from rlhf.moe import moe_statistics
from rlhf.ppo.advantages import masked_mean, masked_whiten
from rlhf.ppo.update import Batch, PPOSettings, ppo_update
from rlhf.precision import Precision
from rlhf.text.generate import GenerationOutput, generate
from rlhf.text.policy import TextPolicy
from rlhf.text.rewards import (AdaptiveKL, group_advantages, penalise_missing_eos, token_gae, token_rewards,
                               whiten_rewards)
from rlhf.text.tokenizer import Tokenizer

# (prompts, responses, generation) -> raw scores (B,)
ScoreFn = Callable[[list[str], list[str], GenerationOutput], Tensor]
# (obs, actions) -> reference log-probs (B, T)
ReferenceFn = Callable[[dict[str, Tensor], Tensor], Tensor]


@dataclass
class TextRollout:
    """One iteration's samples and everything computed from them (rows = responses)."""

    prompts: list[str]
    responses: list[str]
    generation: GenerationOutput
    batch: Batch
    scores: Tensor
    kl: Tensor  # (B, T) per-token KL estimate to the reference
    entropy: Tensor  # (B, T)
    ended: Tensor  # (B,) emitted EOS


@dataclass
class Scored:
    """One rank's sampled and scored responses before advantages: what needs no other rank."""

    prompts: list[str]
    responses: list[str]
    gen: GenerationOutput
    obs: dict[str, Tensor]
    actions: Tensor
    mask: Tensor  # (B, T) response tokens
    logp: Tensor
    values: Tensor | None
    entropy: Tensor
    rewards: Tensor  # (B, T) per-token: -kl_coef * KL, plus the score at the last real token
    scores: Tensor
    kl: Tensor
    ended: Tensor


class TextPPO:
    """Owns the policy, its optimizer, the acting copy, the reference and the KL coefficient."""

    def __init__(self, cfg: Config, policy: TextPolicy, tokenizer: Tokenizer, prompts: list[str], score: ScoreFn,
                 reference: ReferenceFn, settings: PPOSettings, precision: Precision,
                 optimizer: torch.optim.Optimizer, device: torch.device) -> None:
        self.cfg, self.text = cfg, cfg.text
        self.policy, self.tokenizer, self.prompts = policy, tokenizer, prompts
        self.score, self.reference, self.precision = score, reference, precision
        self.optimizer, self.device = optimizer, device
        group = self.text.advantage != "gae"
        # group baselines have no critic; their advantages are already centred per prompt
        self.settings = replace(settings, vf_coef=0.0, normalize_advantage=False) if group else settings
        self.kl = AdaptiveKL(self.text.kl_coef, self.text.adaptive_kl.target, self.text.adaptive_kl.horizon) \
            if self.text.adaptive_kl else None
        self.kl_coef = self.text.kl_coef
        self.world, self.rank = distributed.world_size(), distributed.rank()
        # each rank its own prompts and samples (its minibatch shuffles: ``build_text_ppo`` seeds torch by rank)
        self.generator = torch.Generator().manual_seed(cfg.seed + self.rank)
        self.actor = self._make_actor()
        self.updates, self.global_step = 0, 0
        self.n_updates = 0  # gradient steps over the whole run (train/n_updates, cumulative as in SB3)

    # ------------------------------------------------------------------ acting copy
    def _make_actor(self):
        if self.cfg.precision.rollout == "fp32":
            return self.policy.model
        from rlhf.precision import make_actor

        return make_actor(self.policy.model, self.cfg.precision.rollout)

    def _refresh_actor(self) -> None:
        if self.actor is not self.policy.model:
            from rlhf.precision import refresh_actor

            self.actor = refresh_actor(self.actor, self.policy.model)

    # ------------------------------------------------------------------ one iteration
    def next_prompts(self) -> list[str]:
        """``prompts_per_update`` training prompts, each repeated ``num_generations`` times in a row."""
        idx = torch.randint(len(self.prompts), (self.text.prompts_per_update,), generator=self.generator)
        return [self.prompts[i] for i in idx.tolist() for _ in range(self.text.num_generations)]

    def rollout(self, prompts: list[str]) -> TextRollout:
        """Generate, score and turn scores into per-token rewards and advantages."""
        return self._advantages(self._sample_and_score(prompts))

    @torch.no_grad()
    def _sample_and_score(self, prompts: list[str]) -> Scored:
        """This rank's own part of a rollout (no collective): generate, score, per-token rewards, checks."""
        t, tok = self.text, self.tokenizer
        ids, pmask = tok.encode_batch(prompts)
        gen = generate(self.actor, ids.to(self.device), pmask.to(self.device), t.max_new_tokens, tok.eos_id,
                       tok.pad_id, temperature=t.temperature, top_k=t.top_k, top_p=t.top_p, generator=self.generator)
        obs = {"input_ids": gen.sequences, "attention_mask": gen.attention_mask}
        actions, mask = gen.response, gen.response_mask
        with self.precision.autocast():
            logp, entropy, values = self.policy.evaluate_actions(obs, actions)
            ref_logp = self.reference(obs, actions)
        responses = [tok.decode(row[: int(n)]) for row, n in zip(actions.tolist(), mask.sum(1).tolist())]
        ended = (actions == tok.eos_id).any(1)
        raw = self.score(prompts, responses, gen).to(self.device)
        _check_finite(raw, "reward model score" if t.reward_function is None else "text.reward_function", prompts,
                      responses)
        scores = penalise_missing_eos(raw, ended, t.missing_eos_penalty)
        rewards, kl = token_rewards(scores, logp, ref_logp.float(), mask, self.kl_coef, t.kl_estimator)
        _check_finite(rewards.sum(1), "per-token reward (score - kl_coef * KL to the reference)", prompts, responses)
        return Scored(prompts, responses, gen, obs, actions, mask, logp, values, entropy, rewards, scores, kl, ended)

    @torch.no_grad()
    def _advantages(self, sc: Scored) -> TextRollout:
        """Rewards -> advantages; data-parallel, reward whitening reads every rank's statistics."""
        t, rewards, mask, values = self.text, sc.rewards, sc.mask, sc.values
        if t.whiten_rewards:
            rewards = whiten_rewards(rewards, mask, distributed.whiten if self.world > 1 else masked_whiten)
        if t.advantage == "gae":
            ppo = self.cfg.ppo
            advantages, returns = token_gae(rewards, values, mask, ppo.discount_factor, ppo.gae_lambda)
        else:
            advantages = group_advantages(rewards, mask, t.num_generations, t.advantage)
            values = returns = torch.zeros_like(advantages)
        batch = Batch(sc.obs, sc.actions, sc.logp, values, advantages, returns, mask.float())
        return TextRollout(sc.prompts, sc.responses, sc.gen, batch, sc.scores, sc.kl, sc.entropy, sc.ended)

    def iteration(self) -> tuple[dict[str, float], TextRollout]:
        """One generate -> score -> update cycle; returns (stats in TRL's and SB3's words, the rollout).

        Statistics are this rank's; ``rlhf.distributed.reduce_stats`` averages them over the ranks."""
        ro = self._rollout_on_every_rank(self.next_prompts())
        stats = ppo_update(self.policy, self.optimizer, ro.batch, self.settings, self.precision)
        self.n_updates += int(stats["train/n_updates"])
        stats["train/n_updates"] = float(self.n_updates)
        mask = ro.batch.mask
        kl_per_response = float(ro.kl.sum(1).mean())
        non_score = -self.kl_coef * kl_per_response
        stats.update({
            "objective/kl": kl_per_response,
            "objective/kl_coef": self.kl_coef,
            "objective/scores": float(ro.scores.mean()),
            "objective/non_score_reward": non_score,
            "objective/rlhf_reward": float(ro.scores.mean()) + non_score,
            "objective/entropy": float((ro.entropy * mask).sum(1).mean()),
            "val/num_eos_tokens": float(ro.ended.sum()),
            "val/mean_response_length": float(mask.sum(1).mean()),
        })
        if self.actor is not self.policy.model:  # k1 estimate of KL(actor || learner), per token, as the gym trainer logs
            stats["precision/actor_learner_kl"] = float(masked_mean(ro.generation.logprobs - ro.batch.logp, mask))
        tokens, n_samples = int(mask.sum()), len(ro.prompts)
        if self.world > 1:  # every rank's samples (as many per rank): the controller's beta stays the same everywhere
            kl_sum, tokens, n_samples = distributed.sum_over_ranks(kl_per_response, tokens, n_samples)
            kl_per_response = kl_sum / self.world
        if self.kl is not None:
            self.kl_coef = self.kl.update(kl_per_response, int(n_samples))
        self._refresh_actor()
        self.updates += 1
        self.global_step += int(tokens)
        stats.update(self.precision.stats())
        stats.update(moe_statistics(self.policy.model.moe_layers))  # routing of the last minibatch
        return stats, ro

    def _rollout_on_every_rank(self, prompts: list[str]) -> TextRollout:
        """``rollout``; data-parallel, the ranks agree before any collective (reward whitening, the update's)
        whether each sampled and scored its prompts: an error on one rank (its reward function raised, a
        NaN score) stops every rank with ``RankFailedError`` on the others, and a signal that cut one rank's
        reward call short (KeyboardInterrupt) stops every rank with KeyboardInterrupt."""
        if self.world == 1:
            return self.rollout(prompts)
        scored, error = None, None
        try:
            scored = self._sample_and_score(prompts)
        except KeyboardInterrupt:
            pass
        except Exception as exc:  # raised below, after every rank knows
            error = exc
        if distributed.any_rank(error is not None):
            if error is not None:
                raise error
            raise RankFailedError("another data-parallel rank stopped with an error while sampling or scoring "
                                  "(its message is above); every rank stopped before this update")
        if distributed.any_rank(scored is None):
            raise KeyboardInterrupt
        return self._advantages(scored)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        """Everything a checkpoint holds; refuses (NonFiniteError) a policy or optimizer holding NaN/inf.

        Data-parallel, every rank calls it (it gathers each rank's random streams into ``rng["ranks"]``)."""
        check_state(self.policy.model, "policy parameter")
        check_state(self.optimizer, "optimizer state")
        rng = {"torch": torch.get_rng_state(), "generator": self.generator.get_state()}
        if self.world > 1:
            rng["ranks"] = distributed.gather_object(dict(rng))
        return {"policy": self.policy.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "precision": self.precision.state_dict(),
                "counters": {"updates": self.updates, "global_step": self.global_step, "kl_coef": self.kl_coef,
                             "n_updates": self.n_updates},
                "rng": rng}

    def load_state_dict(self, state: dict) -> None:
        self.policy.model.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.precision.load_state_dict(state["precision"])
        c = state["counters"]
        self.updates, self.global_step, self.kl_coef = c["updates"], c["global_step"], c["kl_coef"]
        self.n_updates = int(c.get("n_updates", 0))
        if self.kl is not None:
            self.kl.value = self.kl_coef
        self._load_rng(state["rng"])
        self._refresh_actor()

    def _load_rng(self, rng: dict) -> None:
        """This rank's streams: its own from a checkpoint of as many ranks, else (another world size) rank 0's
        on rank 0 and fresh ones, seeded by rank and update, on the others."""
        ranks = rng.get("ranks")
        if ranks is not None and len(ranks) == self.world:
            rng = ranks[self.rank]
        elif self.rank > 0:
            seed = self.cfg.seed + self.rank + self.updates * self.world
            torch.manual_seed(seed)
            self.generator.manual_seed(seed)
            return
        torch.set_rng_state(rng["torch"])
        self.generator.set_state(rng["generator"])


def _check_finite(values: Tensor, what: str, prompts: list[str], responses: list[str]) -> None:
    """Stop before a NaN/inf (B,) row value reaches advantages and the update; name the first bad sample."""
    bad = ~torch.isfinite(values)
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise NonFiniteError(f"{what} is {float(values[i]):g} for prompt {prompts[i]!r}, response {responses[i]!r}")
