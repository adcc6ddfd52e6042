"""Stage 2, the reward model: learn the labellers' preferences from noisy pairwise comparisons.

As in InstructGPT, the reward model is the SFT transformer with a scalar head read at the last
real token of prompt + response, trained with the Bradley-Terry loss on pairs of SFT samples
labelled by the (noisy, hidden) gold preference. It is then normalised so that SFT samples score
mean 0 and std 1; the gain and bias are buffers, so checkpoints carry them.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rlhf.moe import with_auxiliary_loss
from rlhf.text.generate import Completion, sample_completions
from rlhf.text.model import GPT, GPTConfig
from rlhf.text.sft import lr_at, make_optimizer, scheduled_step
from rlhf.text.task import DEFAULT_LABEL_NOISE, PreferencePair, Task, gold_label_accuracy
from rlhf.text.tokenizer import Tokenizer, left_pad

LogFn = Callable[[dict, int], None]


def bradley_terry_loss(r_chosen: Tensor, r_rejected: Tensor) -> Tensor:
    """-log sigmoid(r_chosen - r_rejected), averaged: the NLL of the labels under Bradley-Terry."""
    return -F.logsigmoid(r_chosen - r_rejected).mean()


def pairwise_accuracy(r_chosen: Tensor, r_rejected: Tensor) -> float:
    """Fraction of pairs ranked as labelled (ties count one half, as in ``gold_label_accuracy``)."""
    return float(((r_chosen > r_rejected).float() + 0.5 * (r_chosen == r_rejected).float()).mean())


def last_token_index(attention_mask: Tensor) -> Tensor:
    """(B,) index of each row's last real token, for left, right or no padding."""
    positions = torch.arange(attention_mask.shape[-1], device=attention_mask.device).expand_as(attention_mask)
    last = torch.where(attention_mask.bool(), positions, -1).max(dim=-1).values
    if bool((last < 0).any()):
        raise ValueError("attention_mask has a row without any real token")
    return last


class RewardModel(nn.Module):
    """GPT trunk + scalar head; ``score`` = raw reward * ``reward_gain`` + ``reward_bias``.

    A response cut off before EOS is scored at its last token like any other; penalising
    unfinished responses (TRL's ``missing_eos_penalty``) is the PPO stage's choice.
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.gpt = GPT(replace(config, value_head=False, reward_head=True))
        self.register_buffer("reward_gain", torch.tensor(1.0))
        self.register_buffer("reward_bias", torch.tensor(0.0))

    @classmethod
    def from_sft(cls, sft: GPT) -> "RewardModel":
        """Start from the SFT weights (InstructGPT does): the trunk already reads the language."""
        model = cls(sft.config)
        model.gpt = GPT.from_trunk(sft, reward_head=True)
        return model.to(next(sft.parameters()).device)

    def raw_score(self, sequences: Tensor, attention_mask: Tensor) -> Tensor:
        """(B,) unnormalised reward at each row's last real token (differentiable)."""
        rewards = self.gpt(sequences, attention_mask=attention_mask).rewards
        return rewards.gather(1, last_token_index(attention_mask)[:, None]).squeeze(1).float()

    def forward(self, sequences: Tensor, attention_mask: Tensor) -> Tensor:
        return self.raw_score(sequences, attention_mask) * self.reward_gain + self.reward_bias

    @torch.no_grad()
    def score(self, sequences: Tensor, attention_mask: Tensor) -> Tensor:
        """(B,) normalised reward of prompt + response sequences (mean 0, std 1 on SFT samples)."""
        return self(sequences, attention_mask)

    @torch.no_grad()
    def fit_normalisation(self, raw_scores: Tensor) -> None:
        """Set gain and bias so that ``raw_scores`` map to mean 0 and std 1."""
        mean, std = raw_scores.float().mean(), raw_scores.float().std().clamp(min=1e-6)
        self.reward_gain.fill_(float(1.0 / std))
        self.reward_bias.fill_(float(-mean / std))


@dataclass
class PreferenceGroup:
    """Distinct policy responses to one prompt and the labelled comparisons among them.

    As in InstructGPT, all K-choose-2 comparisons of a prompt travel in one batch: each response
    is run once and serves K - 1 comparisons, where shuffled pairs would run it K - 1 times and
    fit it in K - 1 separate steps (which InstructGPT found to overfit).
    """
    sequences: list[list[int]]   # prompt + response (+ EOS) token ids of each distinct response
    pairs: list[PreferencePair]  # one per comparison, labelled by the noisy labeller
    chosen: list[int]            # index into ``sequences`` of each pair's chosen response
    rejected: list[int]


def sample_preference_groups(policy: GPT, tokenizer: Tokenizer, task: Task, prompts: Sequence[str],
                             n_prompts: int, responses_per_prompt: int, label_noise: float, max_new_tokens: int,
                             temperature: float, generator: torch.Generator,
                             rng: np.random.Generator) -> list[PreferenceGroup]:
    """``responses_per_prompt`` policy samples for ``n_prompts`` random prompts; every pair labelled.

    Identical responses are merged (a pair of twins carries no preference); prompts left with
    fewer than two distinct responses are dropped.
    """
    drawn = [prompts[i] for i in rng.integers(len(prompts), size=n_prompts)]
    completions = sample_completions(policy, tokenizer, [p for p in drawn for _ in range(responses_per_prompt)],
                                     max_new_tokens, temperature=temperature, generator=generator)
    groups = []
    for start in range(0, len(completions), responses_per_prompt):
        distinct = list({tuple(c.response_ids): c for c in completions[start:start + responses_per_prompt]}.values())
        if len(distinct) < 2:
            continue
        index = [(i, j) for i in range(len(distinct)) for j in range(i + 1, len(distinct))]
        pairs = task.preference_pairs([(distinct[i].prompt, distinct[i].response, distinct[j].response)
                                       for i, j in index], label_noise, rng)
        groups.append(PreferenceGroup(
            sequences=[c.prompt_ids + c.response_ids for c in distinct], pairs=pairs,
            chosen=[i if p.first_preferred else j for (i, j), p in zip(index, pairs)],
            rejected=[j if p.first_preferred else i for (i, j), p in zip(index, pairs)]))
    return groups


def group_scores(model: RewardModel, groups: Sequence[PreferenceGroup], pad_id: int) -> tuple[Tensor, Tensor]:
    """Raw rewards of every pair's chosen and rejected response; each sequence is run once."""
    device = next(model.parameters()).device
    ids, mask = left_pad([seq for g in groups for seq in g.sequences], pad_id)
    scores = model.raw_score(ids.to(device), mask.to(device))
    chosen, rejected, offset = [], [], 0
    for g in groups:
        chosen += [offset + i for i in g.chosen]
        rejected += [offset + i for i in g.rejected]
        offset += len(g.sequences)
    return scores[torch.tensor(chosen, device=device)], scores[torch.tensor(rejected, device=device)]


@torch.no_grad()
def evaluate_groups(model: RewardModel, groups: Sequence[PreferenceGroup], pad_id: int,
                    batch_size: int = 64) -> tuple[float, float]:
    """(Bradley-Terry loss, pairwise accuracy) over all comparisons, against their noisy labels."""
    was_training = model.training
    model.eval()
    chosen, rejected = zip(*(group_scores(model, groups[i:i + batch_size], pad_id)
                             for i in range(0, len(groups), batch_size)))
    model.train(was_training)
    r_c, r_r = torch.cat(chosen), torch.cat(rejected)
    return float(bradley_terry_loss(r_c, r_r)), pairwise_accuracy(r_c, r_r)


@torch.no_grad()
def score_completions(model: RewardModel, completions: Sequence[Completion], pad_id: int,
                      batch_size: int = 256, normalised: bool = True) -> Tensor:
    """(N,) reward of each completion (prompt + response ids as generated)."""
    device = next(model.parameters()).device
    scores = []
    for i in range(0, len(completions), batch_size):
        ids, mask = left_pad([c.prompt_ids + c.response_ids for c in completions[i:i + batch_size]], pad_id)
        score = model.score if normalised else model.raw_score
        scores.append(score(ids.to(device), mask.to(device)))
    return torch.cat(scores).cpu()


def train_reward_model(reward_model: RewardModel, policy: GPT, tokenizer: Tokenizer, task: Task,
                       n_train_pairs: int = 56_000, n_val_pairs: int = 7_000, responses_per_prompt: int = 8,
                       steps: int = 600, batch_size: int = 224, lr: float = 1e-3, weight_decay: float = 0.1,
                       warmup: int = 20, label_noise: float = DEFAULT_LABEL_NOISE, max_new_tokens: int = 32,
                       temperature: float = 1.0, n_norm_samples: int = 1024, log_every: int = 50, seed: int = 0,
                       log: LogFn | None = None) -> dict:
    """Train ``reward_model`` in place on comparisons of ``policy`` samples, then normalise it.

    Comparisons come in groups: ``responses_per_prompt`` samples of one prompt and all pairs among
    them (28 for 8 samples), so ``n_train_pairs`` / ``n_val_pairs`` / ``batch_size`` (all counted in
    comparisons) are rounded to whole prompts; identical responses are merged, so somewhat fewer
    pairs come out (``rm/train_pairs``). Training prompts are drawn from the train split, validation
    prompts from the held-out split.

    Returned: ``rm/loss`` (train, last ``log_every`` steps), ``rm/accuracy`` (held-out comparisons,
    against their noisy labels), ``rm/gold_label_accuracy`` (the same labels against the gold
    ordering: the accuracy ceiling), ``rm/val_loss``, ``rm/gold_correlation`` (Pearson, normalised
    score vs gold score on fresh policy samples), ``rm/raw_mean`` / ``rm/raw_std`` (what was
    normalised away), ``rm/train_pairs``, ``rm/seconds``.
    """
    if responses_per_prompt < 2:
        raise ValueError(f"responses_per_prompt must be >= 2 to compare responses, got {responses_per_prompt}")
    start_time = time.perf_counter()
    rng = np.random.default_rng(seed)
    generator = torch.Generator(device=next(policy.parameters()).device).manual_seed(seed)
    torch.manual_seed(seed)
    sample = dict(responses_per_prompt=responses_per_prompt, label_noise=label_noise,
                  max_new_tokens=max_new_tokens, temperature=temperature, generator=generator, rng=rng)
    pairs_per_prompt = responses_per_prompt * (responses_per_prompt - 1) // 2

    def prompts_for(n_pairs: int) -> int:
        return max(1, round(n_pairs / pairs_per_prompt))

    train = sample_preference_groups(policy, tokenizer, task, task.train_prompts, prompts_for(n_train_pairs), **sample)
    val = sample_preference_groups(policy, tokenizer, task, task.heldout_prompts, prompts_for(n_val_pairs), **sample)
    if not train or not val:
        raise ValueError("the policy produced no two distinct responses for any prompt: nothing to compare")

    optimizer = make_optimizer(reward_model, lr, weight_decay)
    reward_model.train()
    recent: list[float] = []
    for step in range(steps):
        batch = [train[i] for i in rng.integers(len(train), size=prompts_for(batch_size))]
        loss = with_auxiliary_loss(bradley_terry_loss(*group_scores(reward_model, batch, tokenizer.pad_id)),
                                   reward_model.gpt)
        value = scheduled_step(reward_model, optimizer, loss, lr_at(step, steps, lr, warmup), f"reward model step {step}")
        recent = (recent + [value])[-log_every:]
        if log and (step + 1) % log_every == 0 and step + 1 < steps:
            log({"rm/loss": float(np.mean(recent)), "rm/learning_rate": optimizer.param_groups[0]["lr"]}, step + 1)
    reward_model.eval()

    val_loss, val_accuracy = evaluate_groups(reward_model, val, tokenizer.pad_id)
    fresh = sample_completions(policy, tokenizer, [task.train_prompts[i] for i in
                                                   rng.integers(len(task.train_prompts), size=n_norm_samples)],
                               max_new_tokens, temperature=temperature, generator=generator)
    raw = score_completions(reward_model, fresh, tokenizer.pad_id, normalised=False)
    reward_model.fit_normalisation(raw)
    scores = raw * float(reward_model.reward_gain) + float(reward_model.reward_bias)
    gold = torch.tensor([task.gold_score(c.prompt, c.response) for c in fresh])
    metrics = {"rm/loss": float(np.mean(recent)) if recent else float("nan"),
               "rm/accuracy": val_accuracy,
               "rm/gold_label_accuracy": gold_label_accuracy([p for g in val for p in g.pairs]),
               "rm/val_loss": val_loss,
               "rm/gold_correlation": float(torch.corrcoef(torch.stack([scores, gold]))[0, 1]),
               "rm/raw_mean": float(raw.mean()), "rm/raw_std": float(raw.std()),
               "rm/train_pairs": sum(len(g.pairs) for g in train),
               "rm/seconds": time.perf_counter() - start_time}
    if log:
        log({k: v for k, v in metrics.items() if k != "rm/seconds"}, steps)
    return metrics
