import math

import pytest
import torch

from rlhf.text.model import GPT, GPTConfig
from rlhf.text.sft import collate, lr_at, perplexity, response_nll


def test_lr_schedule():
    assert lr_at(0, 100, 1.0, warmup=10) == pytest.approx(0.1)
    assert lr_at(9, 100, 1.0, warmup=10) == pytest.approx(1.0)
    assert lr_at(55, 100, 1.0, warmup=10) == pytest.approx(0.55)
    assert lr_at(100, 100, 1.0, warmup=10) == pytest.approx(0.1)


def test_collate_marks_response_targets_only():
    ids, mask, targets = collate([([5, 6, 7, 8], 2), ([9, 10, 11], 2)], pad_id=0)
    assert ids.tolist() == [[5, 6, 7, 8], [0, 9, 10, 11]]
    assert mask.tolist() == [[1, 1, 1, 1], [0, 1, 1, 1]]
    # target j predicts token j + 1: responses are [7, 8] and [11]
    assert targets.tolist() == [[False, True, True], [False, False, True]]


def test_perplexity_of_a_uniform_model_is_the_vocabulary_size():
    model = GPT(GPTConfig(vocab_size=13, block_size=8, n_layer=1, n_head=1, n_embd=8))
    torch.nn.init.zeros_(model.lm_head.weight)                  # tied: also zeroes the token embeddings
    examples = [([3, 4, 5, 6], 1), ([7, 8], 1)]
    with torch.no_grad():
        nll, n = response_nll(model, *collate(examples, pad_id=0))
    assert int(n) == 4 and float(nll) == pytest.approx(4 * math.log(13), rel=1e-5)
    assert perplexity(model, examples, pad_id=0) == pytest.approx(13, rel=1e-5)
