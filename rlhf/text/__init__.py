"""Toy RLHF in miniature: a synthetic review language with a hidden gold preference, a word-level
tokenizer, a tiny GPT, batched sampling, supervised fine-tuning and a Bradley-Terry reward model."""
from rlhf.text.generate import (Completion, GenerationOutput, filter_logits, generate, logprobs_from_logits,
                                sample_completions)
from rlhf.text.model import GPT, GPTConfig, GPTOutput
from rlhf.text.reward_model import (RewardModel, bradley_terry_loss, last_token_index, score_completions,
                                    train_reward_model)
from rlhf.text.sft import train_sft
from rlhf.text.task import (DEFAULT_LABEL_NOISE, Judgement, PreferencePair, Task, gold_label_accuracy, gold_score,
                            judge, preference_pairs)
from rlhf.text.tokenizer import Tokenizer, left_pad

__all__ = [
    "Task", "Judgement", "PreferencePair", "DEFAULT_LABEL_NOISE", "gold_score", "judge", "preference_pairs",
    "gold_label_accuracy", "Tokenizer", "left_pad", "GPT", "GPTConfig", "GPTOutput", "GenerationOutput",
    "Completion", "generate", "logprobs_from_logits", "filter_logits", "sample_completions", "train_sft",
    "RewardModel", "bradley_terry_loss", "last_token_index", "score_completions", "train_reward_model",
]
