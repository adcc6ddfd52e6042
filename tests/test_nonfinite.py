"""NaN/inf never pass silently: env data at the rollout boundary, losses and gradients before a step,
network state before a checkpoint; the run stops naming the source and keeps its last good checkpoint."""
import math

import numpy as np
import pytest
import torch
from torch import nn

import bad_envs  # noqa: F401  (registers BadEnv-v0)
from rlhf.checkpoint import list_checkpoints, load_checkpoint
from rlhf.config import load_config
from rlhf.errors import ConfigError, NonFiniteError
from rlhf.finite import check_state, first_bad, fits_float32
from rlhf.precision import Precision
from rlhf.trainer import Trainer

NAN, INF = float("nan"), float("inf")


def test_fits_float32_catches_nan_inf_and_overflow_only():
    assert fits_float32(np.array([[0.5, -2.0], [3.0, 1e30]], dtype=np.float64))
    assert fits_float32(np.full(8, 3e38, dtype=np.float32))  # the dot overflows, the values do not
    assert fits_float32(np.array([255, 0], dtype=np.uint8))
    for bad in (NAN, INF, -INF, 1e39, -3.5e38):
        x = np.zeros((3, 2))
        x[2, 1] = bad
        assert not fits_float32(x), bad
        assert first_bad(x)[0] == (2, 1) and (first_bad(x)[1] == bad or math.isnan(bad))


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))


def test_nan_loss_and_nan_gradient_stop_before_the_step():
    model, prec = mlp(), Precision("fp32")
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(NonFiniteError, match=r"the loss is nan; no optimizer step taken"):
        prec.step(model(torch.ones(2, 3)).mean() * NAN, opt, max_grad_norm=0.5)
    w = model[0].weight
    # finite loss (0), NaN gradient: d sqrt(0 * w) / dw = 0 * inf
    with pytest.raises(NonFiniteError, match=r"the gradient norm is nan \(loss 0\)"):
        prec.step(torch.sqrt(w * 0).sum(), opt, max_grad_norm=None)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert opt.state == {}  # Adam never stepped


def test_skip_nonfinite_counts_and_keeps_training():
    from rlhf.optim import make_optimizer

    model, prec = mlp(), Precision("fp32", skip_nonfinite=True)
    opt = make_optimizer(model, 0.1, "flat_adam")  # one flat buffer: the CPU fast path of the norm
    before = [p.detach().clone() for p in model.parameters()]
    out = prec.step(model(torch.ones(2, 3)).mean() * INF, opt, max_grad_norm=0.5)
    assert out["skipped"] == 1.0 and prec.stats() == {"train/skipped_updates": 1.0}
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert prec.step(model(torch.ones(2, 3)).mean(), opt, max_grad_norm=0.5)["skipped"] == 0.0
    assert not torch.equal(before[0], model[0].weight)
    restored = Precision("fp32", skip_nonfinite=True)
    restored.load_state_dict(prec.state_dict())
    assert restored.stats() == {"train/skipped_updates": 1.0}


def test_fp16_scaler_skips_overflows_until_the_scale_is_spent():
    model, prec = mlp(), Precision("fp16-mixed")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(NonFiniteError, match="fp16 loss scaling"):
        for _ in range(60):
            prec.step(model(torch.ones(2, 3)).mean() * NAN, opt)
    # 65536 = 2**16 halves 41 times to 2**-25, the first scale below 2**-24
    assert prec.skipped_steps == 41


def test_check_state_names_the_tensor():
    model = mlp()
    check_state(model, "policy parameter")
    with torch.no_grad():
        model[2].bias[0] = INF
    with pytest.raises(NonFiniteError, match=r"policy parameter 2\.bias holds inf: not saved"):
        check_state(model, "policy parameter")
    with pytest.raises(NonFiniteError, match=r"optimizer state 0\.exp_avg holds NaN"):
        check_state({0: {"step": torch.tensor(1.0), "exp_avg": torch.tensor([0.0, NAN])}}, "optimizer state")


def bad_trainer(tmp_path, bad_step, field="obs", value=NAN, **extra):
    cfg = load_config(data={
        "env": {"id": "bad_envs:BadEnv-v0", "num_envs": 1,
                "kwargs": {"bad_step": bad_step, "field": field, "value": str(value), **extra}},
        "ppo": {"n_steps": 16, "batch_size": 16, "epochs": 1}, "total_timesteps": 128,
        "checkpoint": {"every": 32, "keep": 2}, "logging": {"progress_bar": False, "tensorboard": False}})
    return Trainer(cfg, tmp_path / "run")


@pytest.mark.parametrize("field, value, words", [
    ("obs", NAN, ["observation from env index 0 at rollout step 8 is nan (element (2,))"]),
    ("reward", -INF, ["reward from env index 0 at rollout step 8 is -inf"]),
    ("reward", 1e39, ["reward from env index 0 at rollout step 8 is 1e+39 (beyond float32's range)"]),
])
def test_env_nan_stops_training_and_keeps_the_last_good_checkpoint(tmp_path, field, value, words):
    # 10-step episodes; every 11th vector step is an autoreset, so BadEnv's 67th step is vector step 73:
    # rollout 5 (vector steps 65..80), index 8, after checkpoints at 32 and 64 steps
    trainer = bad_trainer(tmp_path, 67, field, value)
    with pytest.raises(NonFiniteError) as err:
        trainer.train()
    message = str(err.value)
    for word in words + ["env 'BadEnv-v0'", "training stopped after 64 env steps", "step_000000000064.pt"]:
        assert word in message, message
    assert "\n" not in message
    kept = list_checkpoints(tmp_path / "run")
    assert [p.name for p in kept] == ["step_000000000032.pt", "step_000000000064.pt"]
    state = load_checkpoint(kept[-1])
    assert all(torch.isfinite(t).all() for t in state["policy"].values() if t.is_floating_point())


def test_reset_that_raises_and_nan_at_reset_name_the_env():
    from rlhf.rollout import Collector
    from rlhf.vec_env import make_vec_env

    cfg = load_config(data={"env": {"id": "bad_envs:BadEnv-v0", "kwargs": {"raise_on_reset": True}}})
    collector = Collector(make_vec_env(cfg.env), torch.device("cpu"))
    with pytest.raises(ConfigError, match="env 'BadEnv-v0': reset raised RuntimeError: the simulator is not running"):
        collector.reset(seed=0)


def test_text_reward_model_nan_names_the_sample():
    from rlhf.text.ppo import _check_finite

    _check_finite(torch.tensor([1.0, -2.0]), "reward model score", ["a", "b"], ["x", "y"])
    with pytest.raises(NonFiniteError, match=r"reward model score is nan for prompt 'b', response 'y'"):
        _check_finite(torch.tensor([1.0, NAN]), "reward model score", ["a", "b"], ["x", "y"])


def test_sft_step_refuses_a_nan_loss():
    from rlhf.text.sft import scheduled_step

    model = mlp()
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(NonFiniteError, match="sft step 7: the loss is -inf"):
        scheduled_step(model, opt, model(torch.ones(1, 3)).sum() * INF, 0.1, "sft step 7")
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert scheduled_step(model, opt, model(torch.ones(1, 3)).sum() * 0.0 + 1.5, 0.1) == 1.5


def test_text_ppo_stops_on_a_nan_reward_model_score_before_any_update():
    from rlhf.build import ppo_settings
    from rlhf.text.model import GPT, GPTConfig
    from rlhf.text.policy import TextPolicy
    from rlhf.text.ppo import TextPPO
    from rlhf.text.task import Task
    from rlhf.text.tokenizer import Tokenizer

    cfg = load_config(data={"text": {"prompts_per_update": 4, "max_new_tokens": 6}})
    tok = Tokenizer(Task.vocabulary)
    torch.manual_seed(0)
    policy = TextPolicy(GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=32,
                                      value_head=True)), temperature=1.0)
    before = {k: v.clone() for k, v in policy.model.state_dict().items()}

    def score(prompts, responses, gen):  # a reward model gone bad on the third sample
        return torch.tensor([0.5, -1.0, NAN, 2.0])

    ppo = TextPPO(cfg, policy, tok, Task(seed=0).prompts("train"), score, lambda obs, actions: torch.zeros(1),
                  ppo_settings(cfg.ppo), Precision("fp32"), torch.optim.Adam(policy.parameters(), lr=1e-3),
                  torch.device("cpu"))
    with pytest.raises(NonFiniteError, match=r"^reward model score is nan for prompt '.+', response '.*'$"):
        ppo.iteration()
    assert ppo.updates == 0
    assert all(torch.equal(before[k], v) for k, v in policy.model.state_dict().items())
