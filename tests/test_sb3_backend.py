"""backend: sb3 — Stable-Baselines3's PPO from our config: the mapping field by field, the refusals by name, and
train -> eval through the CLI on CartPole and DeepRacer."""
import json
import zipfile

import pytest
from torch import nn

from cli_helpers import ROOT, scalar_tags
from rlhf.backends.sb3 import SB3Trainer, build_model, check, make_env
from rlhf.backends.sb3_checkpoints import counters
from rlhf.cli import main
from rlhf.config import load_config
from rlhf.errors import ConfigError

CARTPOLE = str(ROOT / "configs" / "cartpole.yaml")
DEEPRACER = str(ROOT / "configs" / "deepracer.yaml")
QUIET = ["backend=sb3", "logging.progress_bar=false"]


def built(path: str, *overrides: str):
    cfg = load_config(path, ["backend=sb3", *overrides])
    env = make_env(cfg, None)
    try:
        return build_model(cfg, env, "cpu")
    finally:
        env.close()


def test_hyperparameters_map_field_by_field():
    model = built(CARTPOLE, "ppo.vf_coef=0.25", "ppo.max_grad_norm=0.7", "ppo.target_kl=0.03", "ppo.clip_value=0.3",
                  "ppo.normalize_advantage=false", "ppo.entropy_coef=0.005", "policy.hidden_sizes=[32,16]",
                  "policy.activation=relu", "policy.ortho_init=false", "seed=7")
    assert (model.n_steps, model.batch_size, model.n_epochs, model.n_envs) == (32, 256, 20, 8)
    assert (model.gamma, model.gae_lambda, model.ent_coef, model.vf_coef) == (0.98, 0.8, 0.005, 0.25)
    assert (model.max_grad_norm, model.target_kl, model.normalize_advantage, model.seed) == (0.7, 0.03, False, 7)
    assert model.clip_range(1.0) == pytest.approx(0.2) and model.clip_range(0.5) == pytest.approx(0.1)  # lin_0.2
    assert model.clip_range_vf(1.0) == 0.3 and model.clip_range_vf(0.5) == 0.3
    assert model.lr_schedule(1.0) == pytest.approx(1e-3) and model.lr_schedule(0.25) == pytest.approx(2.5e-4)
    pk = model.policy_kwargs
    assert pk["net_arch"] == {"pi": [32, 16], "vf": [32, 16]}
    assert pk["activation_fn"] is nn.ReLU and pk["ortho_init"] is False
    sizes = [m.out_features for m in model.policy.mlp_extractor.policy_net if isinstance(m, nn.Linear)]
    assert sizes == [32, 16]
    assert [type(m) for m in model.policy.mlp_extractor.value_net][1] is nn.ReLU


def test_console_words_and_defaults_map():
    """DeepRacer's console words (num_epochs, lr, beta_entropy) arrive under SB3's names; no grad-norm limit is inf."""
    model = built(DEEPRACER, "env.num_envs=2", "ppo.loss_type=mse", "ppo.num_episodes_between_training=null",
                  "ppo.n_steps=128", "ppo.max_grad_norm=null", "policy.log_std_init=-0.5")
    assert (model.n_steps, model.batch_size, model.n_epochs, model.n_envs) == (128, 256, 5, 2)
    assert (model.ent_coef, model.gamma, model.max_grad_norm) == (0.01, 0.99, float("inf"))
    assert model.lr_schedule(0.5) == pytest.approx(3e-4)  # a constant stays constant
    assert model.policy_kwargs["log_std_init"] == -0.5 and model.policy_kwargs["activation_fn"] is nn.Tanh


@pytest.mark.parametrize("override, named", [
    ("ppo.loss_type=huber", "ppo.loss_type = 'huber'"),
    ("ppo.policy_loss=kl_penalty", "ppo.policy_loss = 'kl_penalty'"),
    ("ppo.episodes_between_updates=8", "ppo.episodes_between_updates = 8"),
    ("precision.train=bf16-mixed", "precision.train = 'bf16-mixed'"),
    ("precision.rollout=int8", "precision.rollout = 'int8'"),
    ("precision.qat=int8", "precision.qat = 'int8'"),
    ("policy.moe.experts=4", "policy.moe = {"),
    ("policy.normalize_obs=true", "policy.normalize_obs = True"),
    ("ppo.normalize_reward=true", "ppo.normalize_reward = True"),
    ("ppo.optimizer=flat_adam", "ppo.optimizer = 'flat_adam'"),
    ("env.vectorization=native", "env.vectorization = 'native'"),
    ("eval.every=1000", "eval.every = 1000"),
])
def test_settings_sb3_cannot_express_are_refused_by_name(override, named):
    if override.startswith("ppo.episodes"):
        override_set = [override, "ppo.n_steps=null"]
    else:
        override_set = [override]
    with pytest.raises(ConfigError) as err:
        check(load_config(CARTPOLE, ["backend=sb3", *override_set]))
    message = str(err.value)
    assert named in message and "pass " in message and "\n" not in message


def test_shared_trunk_and_text_runs_are_refused():
    with pytest.raises(ConfigError, match=r"policy.shared = True: .*pass policy.shared=false"):
        built(CARTPOLE, "policy.shared=true")
    with pytest.raises(ConfigError, match="backend = 'sb3'.*text runs use backend=rlhf"):
        load_config(str(ROOT / "configs" / "text_rlhf.yaml"), ["backend=sb3"])


def test_deepracer_config_refused_in_one_line_naming_the_fix(tmp_path, capsys):
    run = tmp_path / "R"
    assert main(["train", DEEPRACER, "backend=sb3", "--run-dir", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "ppo.loss_type = 'huber'" in err and "pass ppo.loss_type=mse" in err
    assert not run.exists()


def test_cartpole_train_then_eval_via_cli(tmp_path, capsys):
    run = tmp_path / "R"
    assert main(["train", CARTPOLE, *QUIET, "total_timesteps=2048", "--run-dir", str(run)]) == 0
    assert load_config(run / "config.yaml").backend == "sb3"
    assert "rollout/ep_rew_mean" in scalar_tags(run) and "train/approx_kl" in scalar_tags(run)
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step_000000002048.zip"]
    assert not (run / ".rlhf.lock").exists()
    capsys.readouterr()
    outputs = []
    for _ in range(2):
        assert main(["eval", str(run), "--json"]) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1]
    result = json.loads(outputs[0])
    assert result["episodes"] == 10 and len(result["returns"]) == 10 and result["deterministic"] is True


def test_stop_checkpoints_the_last_update_and_resume_continues(tmp_path, monkeypatch):
    """A stop request (what SIGINT/SIGTERM set) ends the run at the last update with its checkpoint; --resume
    continues the step counter, weights and update count from there."""
    from stable_baselines3 import PPO

    run = tmp_path / "R"
    cfg = load_config(CARTPOLE, [*QUIET, "total_timesteps=1024"])
    trainer = SB3Trainer(cfg, run)
    gradient_phase = PPO.train

    def train_then_stop(model):
        gradient_phase(model)
        trainer.stop.requested = True  # as the signal handler does

    with monkeypatch.context() as patch:
        patch.setattr(PPO, "train", train_then_stop)
        trainer.train()
    ckpt = run / "checkpoints" / "step_000000000256.zip"  # one rollout: 32 steps x 8 envs
    assert [p.name for p in (run / "checkpoints").iterdir()] == [ckpt.name]
    assert counters(ckpt) == {"num_timesteps": 256, "_n_updates": 20}
    with zipfile.ZipFile(ckpt) as archive:
        assert {"data", "policy.pth", "policy.optimizer.pth"} <= set(archive.namelist())
    assert main(["train", "--resume", str(run), "total_timesteps=512", "logging.progress_bar=false"]) == 0
    final = run / "checkpoints" / "step_000000000512.zip"
    assert counters(final) == {"num_timesteps": 512, "_n_updates": 40}
    with pytest.raises(ConfigError, match="policy.hidden_sizes cannot change on a resumed run"):
        SB3Trainer(load_config(run / "config.yaml", ["policy.hidden_sizes=[8]"]), run, resume=True)


def test_deepracer_train_then_eval_reports_laps(tmp_path, capsys):
    run = tmp_path / "D"
    assert main(["train", DEEPRACER, *QUIET, "env.num_envs=2", "total_timesteps=1000", "ppo.loss_type=mse",
                 "ppo.num_episodes_between_training=null", "ppo.n_steps=128", "--run-dir", str(run)]) == 0
    assert (run / "checkpoints" / "step_000000001024.zip").is_file()
    assert {"training-simtrace.csv", "training-env1-simtrace.csv"} <= {p.name for p in (run / "simtrace").iterdir()}
    assert "deepracer/progress_mean" in scalar_tags(run)
    capsys.readouterr()
    assert main(["eval", str(run), "--json", "--episodes", "2"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["episodes"] == 2 and 0.0 <= result["lap_completion_rate"] <= 1.0
    assert len(list((run / "simtrace").glob("evaluation-*-trajectories.png"))) == 1
