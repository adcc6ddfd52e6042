"""Per-token rewards, KL estimators, group baselines and masked statistics against hand-computed values."""
import math

import pytest
import torch

from rlhf.errors import ConfigError
from rlhf.ppo import masked_mean, masked_var, masked_whiten
from rlhf.ppo.advantages import grpo_advantages, rloo_advantages
from rlhf.ppo.losses import kl_estimate
from rlhf.text.rewards import (AdaptiveKL, call_reward, group_advantages, last_token_index, load_reward_function,
                               penalise_missing_eos, token_gae, token_rewards)


def test_k1_and_k3_hand_computed():
    logp, ref = torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -1.0])
    # k1 = log p - log ref; k3 = (r - 1) - log r with r = ref / p
    assert kl_estimate(logp, ref, "k1").tolist() == pytest.approx([0.5, -1.0])
    r = [math.exp(-0.5), math.exp(1.0)]
    assert kl_estimate(logp, ref, "k3").tolist() == pytest.approx([r[0] - 1 + 0.5, r[1] - 1 - 1.0])
    assert (kl_estimate(torch.randn(100), torch.randn(100), "k3") >= 0).all()
    with pytest.raises(ValueError, match="k1, k3"):
        kl_estimate(logp, ref, "k2")


def test_score_lands_on_the_last_real_token():
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    assert last_token_index(mask).tolist() == [2, 4, 0]  # right-padded responses
    logp = torch.full((3, 5), -1.0)
    ref = torch.full((3, 5), -1.5)  # k1 = 0.5 per real token
    rewards, kl = token_rewards(torch.tensor([2.0, -1.0, 3.0]), logp, ref, mask, kl_coef=0.1)
    assert torch.equal(kl, torch.tensor([[0.5, 0.5, 0.5, 0, 0], [0.5] * 5, [0.5, 0, 0, 0, 0]]))
    assert rewards[0].tolist() == pytest.approx([-0.05, -0.05, 2.0 - 0.05, 0.0, 0.0])
    assert rewards[1].tolist() == pytest.approx([-0.05, -0.05, -0.05, -0.05, -1.0 - 0.05])
    assert rewards[2].tolist() == pytest.approx([3.0 - 0.05, 0, 0, 0, 0])


def test_missing_eos_penalty():
    out = penalise_missing_eos(torch.tensor([1.0, 1.0]), torch.tensor([True, False]), 2.0)
    assert out.tolist() == [1.0, -1.0]
    assert penalise_missing_eos(torch.tensor([1.0]), torch.tensor([False]), None).tolist() == [1.0]


def test_token_gae_hand_computed_and_stops_at_the_last_token():
    rewards = torch.tensor([[0.0, 0.0, 1.0, 9.0]])  # the 9 is padding: it must not leak in
    values = torch.tensor([[0.5, 0.25, 0.5, 7.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    adv, ret = token_gae(rewards, values, mask, gamma=1.0, lam=0.5)
    d = [0.0 + 0.25 - 0.5, 0.0 + 0.5 - 0.25, 1.0 - 0.5]  # delta_t = r + V(t+1) - V(t); no bootstrap at the end
    a2 = d[2]
    a1 = d[1] + 0.5 * a2
    a0 = d[0] + 0.5 * a1
    assert adv[0].tolist() == pytest.approx([a0, a1, a2, 0.0])
    assert ret[0, :3].tolist() == pytest.approx([a0 + 0.5, a1 + 0.25, a2 + 0.5])


def test_rloo_and_grpo_hand_computed():
    scores = torch.tensor([[1.0, 2.0, 6.0], [0.0, 0.0, 3.0]])
    expected = torch.tensor([[1 - 4.0, 2 - 3.5, 6 - 1.5], [0 - 1.5, 0 - 1.5, 3 - 0.0]])
    assert torch.allclose(rloo_advantages(scores), expected)
    mean, std = 3.0, math.sqrt(((1 - 3) ** 2 + (2 - 3) ** 2 + (6 - 3) ** 2) / 2)
    assert grpo_advantages(scores)[0].tolist() == pytest.approx([(x - mean) / (std + 1e-4) for x in (1, 2, 6)])
    with pytest.raises(ValueError, match="at least 2"):
        rloo_advantages(torch.ones(3, 1))
    # spread over tokens: rows are consecutive groups, each token of a response gets its advantage
    rewards = torch.tensor([[0.0, 1.0], [0.0, 2.0], [3.0, 0.0], [0.0, 0.0]])
    mask = torch.tensor([[1, 1], [1, 1], [1, 0], [1, 1]])
    adv = group_advantages(rewards, mask, num_generations=2, method="rloo")
    assert torch.allclose(adv, torch.tensor([[-1.0, -1.0], [1.0, 1.0], [3.0, 0.0], [-3.0, -3.0]]))


def test_masked_statistics_equal_plain_torch_on_the_real_elements():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 7, generator=g)
    mask = torch.rand(6, 7, generator=g) > 0.4
    real = x[mask]
    assert float(masked_mean(x, mask)) == pytest.approx(float(real.mean()), rel=1e-6)
    assert float(masked_var(x, mask)) == pytest.approx(float(real.var()), rel=1e-5)
    assert float(masked_var(x, mask, unbiased=False)) == pytest.approx(float(real.var(unbiased=False)), rel=1e-5)
    w = masked_whiten(x, mask)
    assert torch.allclose(w[mask], (real - real.mean()) / (real.std() + 1e-8), atol=1e-6)
    x_garbage = x.masked_fill(~mask, float("inf"))
    assert float(masked_mean(x_garbage, mask)) == pytest.approx(float(real.mean()), rel=1e-6)


def test_adaptive_kl_controller_ziegler():
    c = AdaptiveKL(0.1, target=4.0, horizon=1000)
    assert c.update(8.0, 100) == pytest.approx(0.1 * (1 + 0.2 * 0.1))    # error clipped at +0.2
    c = AdaptiveKL(0.1, target=4.0, horizon=1000)
    assert c.update(3.0, 100) == pytest.approx(0.1 * (1 - 0.2 * 0.1))    # -0.25 clipped to -0.2
    c = AdaptiveKL(0.1, target=4.0, horizon=1000)
    assert c.update(4.4, 100) == pytest.approx(0.1 * (1 + 0.1 * 0.1))    # within the band: proportional


def test_reward_files_and_bad_values(tmp_path):
    good = tmp_path / "r.py"
    good.write_text("def reward_function(prompt, response):\n    return float(len(response.split()))\n")
    fn = load_reward_function(good)
    assert call_reward(fn, ["p", "p"], ["a b", "c"]).tolist() == [2.0, 1.0]
    for body, match in (("return float('nan')", "finite number"), ("return 'x'", "finite number"),
                        ("raise KeyError('boom')", "KeyError"), ("return 1.7e308", "finite number")):
        bad = tmp_path / f"bad{abs(hash(body))}.py"
        bad.write_text(f"def reward_function(prompt, response):\n    {body}\n")
        with pytest.raises(ConfigError, match=match) as info:
            call_reward(load_reward_function(bad), ["review : the soup"], ["was great ."])
        assert "review : the soup" in str(info.value)
    with pytest.raises(ConfigError, match="not found"):
        load_reward_function(tmp_path / "missing.py")
    empty = tmp_path / "empty.py"
    empty.write_text("x = 1\n")
    with pytest.raises(ConfigError, match="defines no function"):
        load_reward_function(empty)


def test_reward_files_that_exit_raise_base_exceptions_or_hang_are_contained(tmp_path):
    import os
    import signal
    import threading

    from envs.deepracer.guard import UserCodeInterrupted

    for body, words in (("import sys; sys.exit(0)", r"text.reward_function called sys.exit\(0\) for prompt"),
                        ("raise GeneratorExit('bye')", "text.reward_function raised GeneratorExit: bye for prompt"),
                        ("raise KeyboardInterrupt", "text.reward_function raised KeyboardInterrupt for prompt")):
        bad = tmp_path / f"bad{abs(hash(body))}.py"
        bad.write_text(f"def reward_function(prompt, response):\n    {body}\n")
        with pytest.raises(ConfigError, match=words):
            call_reward(load_reward_function(bad), ["review : the soup"], ["was great ."])
    at_import = tmp_path / "exits.py"
    at_import.write_text("raise SystemExit(3)\n")
    with pytest.raises(ConfigError, match="importing it called sys.exit"):
        load_reward_function(at_import)
    # a call that never returns is interrupted by SIGTERM (it used to keep the process alive)
    hangs = tmp_path / "hangs.py"
    hangs.write_text("import time\ndef reward_function(prompt, response):\n    while True:\n        time.sleep(0.01)\n")
    fn = load_reward_function(hangs)
    previous = signal.signal(signal.SIGTERM, lambda *a: None)
    timer = threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGTERM))
    try:
        timer.start()
        with pytest.raises(UserCodeInterrupted):
            call_reward(fn, ["p"], ["r"])
    finally:
        timer.cancel()
        signal.signal(signal.SIGTERM, previous)
