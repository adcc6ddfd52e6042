import math

import pytest
import torch

from rlhf.text.model import GPT, GPTConfig
from rlhf.text.reward_model import (RewardModel, bradley_terry_loss, group_scores, last_token_index,
                                    pairwise_accuracy, PreferenceGroup)
from rlhf.text.task import PreferencePair


def test_bradley_terry_loss_hand_computed():
    loss = bradley_terry_loss(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0]))
    assert loss.item() == pytest.approx((math.log(1 + math.exp(-1)) + math.log(1 + math.exp(2))) / 2, rel=1e-6)
    assert bradley_terry_loss(torch.tensor([0.0]), torch.tensor([0.0])).item() == pytest.approx(math.log(2))


def test_pairwise_accuracy_counts_ties_half():
    assert pairwise_accuracy(torch.tensor([1.0, 0.0, 2.0, 1.0]), torch.tensor([0.0, 1.0, 1.0, 1.0])) == 0.625


def test_last_token_index_left_right_and_no_padding():
    left = torch.tensor([[0, 0, 1, 1], [0, 1, 1, 1], [1, 1, 1, 1]])
    right = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1]])
    both = torch.tensor([[0, 1, 1, 0], [0, 0, 1, 0]])          # left-padded prompt, response padded after EOS
    assert last_token_index(left).tolist() == [3, 3, 3]
    assert last_token_index(right).tolist() == [1, 0, 3]
    assert last_token_index(both).tolist() == [2, 2]
    with pytest.raises(ValueError, match="no real token|without any real token"):
        last_token_index(torch.tensor([[0, 0], [1, 1]]))


def small_rm() -> RewardModel:
    torch.manual_seed(0)
    rm = RewardModel(GPTConfig(vocab_size=11, block_size=16, n_layer=1, n_head=2, n_embd=16))
    torch.nn.init.normal_(rm.gpt.reward_head.weight)            # a non-trivial head for the tests
    return rm.eval()


def test_score_is_read_at_the_last_real_token_whatever_the_padding():
    rm = small_rm()
    seq = [3, 4, 5, 6]
    left = rm.score(torch.tensor([[0, 0] + seq]), torch.tensor([[0, 0, 1, 1, 1, 1]]))
    right = rm.score(torch.tensor([seq + [0, 0]]), torch.tensor([[1, 1, 1, 1, 0, 0]]))
    alone = rm.gpt(torch.tensor([seq])).rewards[0, -1]
    torch.testing.assert_close(left[0], alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(right[0], alone, atol=1e-5, rtol=1e-5)


def test_normalisation_is_carried_by_the_state_dict():
    rm = small_rm()
    ids = torch.randint(2, 11, (64, 6))
    mask = torch.ones_like(ids)
    rm.fit_normalisation(rm.raw_score(ids, mask).detach())
    scores = rm.score(ids, mask)
    assert scores.mean().item() == pytest.approx(0.0, abs=1e-5)
    assert scores.std().item() == pytest.approx(1.0, abs=1e-5)
    fresh = RewardModel(rm.gpt.config)
    fresh.load_state_dict(rm.state_dict())
    torch.testing.assert_close(fresh.eval().score(ids, mask), scores)


def test_from_sft_starts_from_the_sft_trunk():
    torch.manual_seed(0)
    sft = GPT(GPTConfig(vocab_size=11, block_size=16, n_layer=1, n_head=2, n_embd=16))
    rm = RewardModel.from_sft(sft)
    ids = torch.randint(0, 11, (2, 5))
    torch.testing.assert_close(rm.gpt(ids).hidden_states, sft(ids).hidden_states)
    assert torch.all(rm.score(ids, torch.ones_like(ids)) == 0)  # zero-initialised head


def test_group_scores_runs_each_sequence_once_and_indexes_pairs():
    rm = small_rm()
    pair = PreferencePair("p", "a", "b", 1.0, 0.0, True)
    groups = [PreferenceGroup([[3, 4], [5, 6, 7], [8]], [pair] * 3, chosen=[0, 2, 2], rejected=[1, 0, 1]),
              PreferenceGroup([[9, 10], [3]], [pair], chosen=[1], rejected=[0])]
    chosen, rejected = group_scores(rm, groups, pad_id=0)
    alone = [rm.gpt(torch.tensor([s])).rewards[0, -1] for s in ([3, 4], [5, 6, 7], [8], [9, 10], [3])]
    expected_c, expected_r = [alone[i] for i in (0, 2, 2, 4)], [alone[i] for i in (1, 0, 1, 3)]
    torch.testing.assert_close(chosen, torch.stack(expected_c), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rejected, torch.stack(expected_r), atol=1e-5, rtol=1e-5)
