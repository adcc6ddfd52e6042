import math

import numpy as np
import pytest

from rlhf.text.task import (DEFAULT_LABEL_NOISE, LENGTH_RANGE, PreferencePair, Task, gold_label_accuracy, gold_score,
                            judge, preference_pairs, preference_probability)

PROMPT = "restaurant review : the pasta"


def test_positive_fluent_review_beats_negative_one():
    good = gold_score(PROMPT, "was really tasty and the waiter was friendly .")
    bad = gold_score(PROMPT, "was really bland and the waiter was rude .")
    assert good > 1.0 > -1.0 > bad
    assert judge(PROMPT, "was really tasty and the waiter was friendly .").errors == 0


def test_intensifiers_scale_and_negation_flips_and_halves():
    plain = judge(PROMPT, "was tasty and the waiter was friendly .").sentiment
    assert judge(PROMPT, "was really tasty and the waiter was friendly .").sentiment > plain
    assert judge(PROMPT, "was not tasty and the waiter was friendly .").sentiment == pytest.approx((-0.4 + 0.8) / 2)
    assert judge(PROMPT, "was not terrible and the waiter was friendly .").sentiment == pytest.approx((0.5 + 0.8) / 2)


def test_repeated_words_are_penalised_more_the_more_they_repeat():
    distinct = judge(PROMPT, "was amazing and the waiter was wonderful and the soup was perfect .")
    twice = judge(PROMPT, "was amazing and the waiter was amazing and the soup was perfect .")
    thrice = judge(PROMPT, "was amazing and the waiter was amazing and the soup was amazing .")
    assert (distinct.repeats, twice.repeats, thrice.repeats) == (0, 1, 2)
    assert distinct.score > twice.score > thrice.score
    # the sentiment of the three is within 0.05 of each other: the difference is the repetition
    assert distinct.score - thrice.score > 0.9


def test_length_preference():
    short = judge(PROMPT, "was tasty .")                        # 5 words after the header
    right = judge(PROMPT, "was tasty and the soup was tasty .")
    rambling = judge(PROMPT, "was tasty and the soup was fresh and the bread was crispy and the salad was juicy "
                             "and the waiter was friendly .")
    assert short.length == 5 and short.length_gap == LENGTH_RANGE[0] - 5
    assert right.length_gap == 0
    assert rambling.length > LENGTH_RANGE[1] and rambling.length_gap > 0
    assert rambling.sentiment == pytest.approx(0.72)
    assert gold_score(PROMPT, "was tasty and the waiter was helpful .") > short.score
    assert gold_score(PROMPT, "was tasty and the waiter was helpful .") > rambling.score


def test_fluency_errors():
    ok = "was tasty and the waiter was friendly ."
    assert judge(PROMPT, ok).errors == 0
    assert judge(PROMPT, "was friendly and the waiter was friendly .").errors == 1    # person adjective on food
    assert judge(PROMPT, "was tasty and the plot was good .").errors == 1             # off-topic noun
    assert judge(PROMPT, "were tasty and the waiter was friendly .").errors == 1      # agreement
    assert judge(PROMPT, "was tasty and the friendly was good .").errors == 1         # one broken clause
    assert judge(PROMPT, "was really really tasty .").errors == 1                     # stacked intensifiers
    assert judge(PROMPT, "was tasty and the waiter was friendly").errors == 1         # no final "."
    assert judge(PROMPT, "was tasty . the waiter was friendly .").errors == 1         # two sentences
    assert judge(PROMPT, "").errors == 2                                              # unfinished clause, no "."
    broken = judge(PROMPT, "was tasty and the friendly was good .")
    assert broken.clauses == 1 and broken.sentiment == pytest.approx(0.8)             # no sentiment from it


def test_prompts_split_by_seed():
    task = Task(seed=0)
    assert not set(task.train_prompts) & set(task.heldout_prompts)
    assert len(task.heldout_prompts) == round(0.2 * (len(task.train_prompts) + len(task.heldout_prompts)))
    assert Task(seed=0).heldout_prompts == task.heldout_prompts
    assert Task(seed=1).heldout_prompts != task.heldout_prompts
    assert all(len(p.split()) <= 7 for p in task.train_prompts)
    with pytest.raises(ValueError, match="split"):
        task.prompts("test")


def test_corpus_is_flawless_with_mixed_sentiment():
    task = Task(seed=0)
    corpus = task.sft_corpus(2000, np.random.default_rng(0))
    assert all(p in task.train_prompts for p, _ in corpus)
    judged = [judge(p, r) for p, r in corpus]
    assert sum(j.errors + j.repeats for j in judged) == 0
    sentiments = np.array([j.sentiment for j in judged])
    assert (sentiments > 0.3).mean() > 0.25 and (sentiments < -0.3).mean() > 0.25
    assert -1.0 < np.mean([j.score for j in judged]) < 0.5
    assert all(p in task.heldout_prompts for p, _ in task.sft_corpus(50, np.random.default_rng(0), "heldout"))


def test_preference_probability_hand_computed():
    assert preference_probability(1.0, 0.0, 0.5) == pytest.approx(1 / (1 + math.exp(-2)))
    assert preference_probability(0.0, 1.0, 0.5) == pytest.approx(1 / (1 + math.exp(2)))
    assert preference_probability(-800.0, 800.0, 0.1) == 0.0          # no overflow


def test_gold_label_accuracy_hand_computed():
    pairs = [PreferencePair("p", "a", "b", 1.0, 0.0, True), PreferencePair("p", "a", "b", 0.0, 1.0, False),
             PreferencePair("p", "a", "b", 2.0, 1.0, False), PreferencePair("p", "a", "b", 0.5, 0.5, True)]
    assert gold_label_accuracy(pairs) == pytest.approx((1 + 0 + 1 + 0.5) / 4)
    with pytest.raises(ValueError):
        gold_label_accuracy([])


def test_preference_pairs_follow_bradley_terry():
    good, bad = "was tasty and the waiter was friendly .", "was tasty and the waiter was lazy ."
    gap = gold_score(PROMPT, good) - gold_score(PROMPT, bad)
    pairs = preference_pairs([(PROMPT, good, bad)] * 4000, 1.0, np.random.default_rng(0))
    share = np.mean([p.chosen == good for p in pairs])
    assert share == pytest.approx(1 / (1 + math.exp(-gap)), abs=0.025)
    first = [p for p in pairs if p.first_preferred]
    assert all(p.chosen == good and p.gold_chosen == gold_score(PROMPT, good) for p in first)
    with pytest.raises(ValueError, match="label_noise"):
        preference_pairs([(PROMPT, good, bad)], 0.0, np.random.default_rng(0))


def test_default_noise_gives_a_ceiling_near_090_on_corpus_pairs():
    task, rng = Task(seed=0), np.random.default_rng(0)
    triples = [(p, task.demonstration(p, rng), task.demonstration(p, rng)) for p in task.train_prompts * 10]
    assert 0.86 < gold_label_accuracy(preference_pairs(triples, DEFAULT_LABEL_NOISE, rng)) < 0.94
