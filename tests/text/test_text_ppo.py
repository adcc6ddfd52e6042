"""The text policy through the shared PPO core: ratio 1 in every precision, masked token batches, one update."""
import pytest
import torch

from rlhf.config import load_config
from rlhf.ppo.update import Batch, PPOSettings, ppo_update
from rlhf.precision import Precision
from rlhf.testing import assert_ratio_starts_at_one, first_minibatch_ratio
from rlhf.text.generate import generate
from rlhf.text.model import GPT, GPTConfig
from rlhf.text.policy import TextPolicy
from rlhf.text.rewards import token_gae, token_rewards
from rlhf.text.task import Task
from rlhf.text.tokenizer import Tokenizer

TOKENIZER = Tokenizer(Task.vocabulary)


def tiny_policy(seed=0, value_head=True):
    torch.manual_seed(seed)
    gpt = GPT(GPTConfig(vocab_size=TOKENIZER.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=32,
                        value_head=value_head))
    return TextPolicy(gpt, temperature=0.9)


def token_batch(policy, precision, n=12, seed=0):
    prompts = Task(seed=0).prompts("train")[:n]
    ids, mask = TOKENIZER.encode_batch(prompts)
    gen = generate(policy.model, ids, mask, 8, TOKENIZER.eos_id, TOKENIZER.pad_id, temperature=0.9,
                   generator=torch.Generator().manual_seed(seed))
    obs = {"input_ids": gen.sequences, "attention_mask": gen.attention_mask}
    with torch.no_grad(), precision.autocast():
        logp, _, values = policy.evaluate_actions(obs, gen.response)
    g = torch.Generator().manual_seed(seed + 1)
    scores = torch.randn(n, generator=g)
    rewards, _ = token_rewards(scores, logp, logp - 0.1, gen.response_mask, kl_coef=0.05)
    adv, ret = token_gae(rewards, values, gen.response_mask, 1.0, 0.95)
    return Batch(obs, gen.response, logp, values, adv, ret, gen.response_mask.float()), gen


@pytest.mark.parametrize("mode", ["fp32", "bf16-mixed", "fp16-mixed"])
def test_ratio_is_exactly_one_at_equal_weights_in_every_training_mode(mode):
    precision = Precision(mode, "cpu")
    policy = tiny_policy()
    batch, _ = token_batch(policy, precision)
    assert_ratio_starts_at_one(policy, batch, precision)
    ratio = first_minibatch_ratio(policy, batch, precision)
    assert ratio.shape == batch.actions.shape and ratio.dtype == torch.float32


def test_generate_log_probs_match_the_policy_up_to_rounding():
    """Sampled tokens' log-probs from the KV-cached loop equal a full forward pass's (what PPO stores)."""
    policy = tiny_policy()
    batch, gen = token_batch(policy, Precision("fp32"))
    real = gen.response_mask.bool()
    assert torch.allclose(gen.logprobs[real], batch.logp[real], atol=1e-5)


def test_one_update_moves_log_probs_towards_positive_advantage_and_ignores_padding():
    policy = tiny_policy()
    batch, gen = token_batch(policy, Precision("fp32"), n=16)
    sign = torch.where(torch.arange(16) % 2 == 0, 1.0, -1.0)[:, None].expand_as(batch.logp)
    batch.advantages = sign * batch.mask
    before = batch.logp.clone()
    stats = ppo_update(policy, torch.optim.Adam(policy.parameters(), lr=3e-3), batch,
                       PPOSettings(epochs=4, batch_size=8, normalize_advantage=False))
    with torch.no_grad():
        after = policy.evaluate_actions(batch.obs, batch.actions)[0]
    delta = (after - before) * batch.mask
    up = float(delta[sign[:, 0] > 0].sum() / batch.mask[sign[:, 0] > 0].sum())
    down = float(delta[sign[:, 0] < 0].sum() / batch.mask[sign[:, 0] < 0].sum())
    assert up > 0.05 and down < -0.05, (up, down)
    assert stats["train/n_updates"] == 8.0 and stats["train/value_loss"] > 0


def test_text_config_words():
    cfg = load_config("configs/text_rlhf.yaml")
    assert cfg.text.advantage == "gae" and cfg.ppo.discount_factor == 1.0 and cfg.text_stages == ["sft", "reward_model", "ppo"]
    assert load_config("configs/text_rlhf.yaml", ["stages=[ppo]"]).text_stages == ["ppo"]
