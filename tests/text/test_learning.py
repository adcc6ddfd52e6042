"""Short SFT and reward-model runs with fixed seeds: each stage must clearly learn."""
import pytest
import torch

from rlhf.text.model import GPT, GPTConfig
from rlhf.text.reward_model import RewardModel, train_reward_model
from rlhf.text.sft import train_sft
from rlhf.text.task import Task
from rlhf.text.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def sft_run():
    torch.manual_seed(0)
    task = Task(seed=0)
    tokenizer = Tokenizer(task.vocabulary)
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size))
    logged = []
    metrics = train_sft(model, tokenizer, task, steps=150, batch_size=32, corpus_size=2000, val_size=200,
                        log_every=50, seed=0, log=lambda stats, step: logged.append((step, stats)))
    return task, tokenizer, model, metrics, logged


def test_short_sft_run_lowers_validation_perplexity(sft_run):
    _, _, _, metrics, logged = sft_run
    assert metrics["sft/initial_val_perplexity"] > 100              # ~ vocabulary size at initialisation
    assert metrics["sft/val_perplexity"] < 8                        # ~4.6 after 150 steps; the grammar's floor is ~4
    assert [step for step, _ in logged] == [0, 50, 100, 150]
    assert {"sft/loss", "sft/learning_rate"} <= set(logged[1][1])
    assert set(logged[-1][1]) == {"sft/loss", "sft/val_perplexity"}


def test_short_reward_model_run_beats_chance_on_held_out_pairs(sft_run):
    task, tokenizer, sft, _, _ = sft_run
    rm = RewardModel.from_sft(sft)
    metrics = train_reward_model(rm, sft, tokenizer, task, n_train_pairs=28 * 96, n_val_pairs=28 * 32, steps=60,
                                 batch_size=28 * 4, n_norm_samples=128, seed=0)
    assert metrics["rm/accuracy"] > 0.65                            # ~0.74; chance is 0.5
    assert 0.85 < metrics["rm/gold_label_accuracy"] < 0.95
    assert metrics["rm/gold_correlation"] > 0.4
    assert float(rm.reward_gain) != 1.0                              # normalisation fitted
