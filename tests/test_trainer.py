"""The gym Trainer's named steps on a tiny CartPole run (seconds, no CLI)."""
import pytest
import torch

from rlhf.config import load_config
from rlhf.trainer import Trainer


def tiny(tmp_path, *overrides):
    cfg = load_config(data={"env": {"id": "CartPole-v1", "num_envs": 2},
                            "ppo": {"n_steps": 16, "batch_size": 16, "epochs": 2, "learning_rate": "lin_0.001"},
                            "total_timesteps": 64, "checkpoint": {"every": 0}, "logging": {"progress_bar": False}},
                      overrides=list(overrides))
    return Trainer(cfg, tmp_path / "run")


def test_two_iterations_count_steps_schedule_the_learning_rate_and_checkpoint(tmp_path):
    trainer = tiny(tmp_path)
    first = trainer.iteration()
    second = trainer.iteration()
    assert trainer.global_step == 64 and trainer.updates == 2
    # 2 envs x 16 steps, minus the autoreset steps, in minibatches of 16, for 2 epochs
    valid = int(trainer.rollout.valid.sum())
    assert second["train/n_updates"] == 2 * -(-valid // 16)
    assert first["train/learning_rate"] == pytest.approx(1e-3)
    assert second["train/learning_rate"] == pytest.approx(1e-3 * (1 - 32 / 64))
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(5e-4)
    assert {"rollout/ep_rew_mean", "time/collect_seconds", "train/approx_kl", "train/explained_variance"} <= set(second)
    path = trainer.save()
    assert path.name == "step_000000000064.pt" and path.parent == tmp_path / "run" / "checkpoints"
    trainer.envs.close()


def test_relabel_gives_the_learner_log_probs_when_a_quantized_copy_acts(tmp_path):
    trainer = tiny(tmp_path, "precision.rollout=int8")
    assert trainer.actor is not trainer.policy
    last_obs = trainer.collect()
    batch, extra = trainer.relabel(last_obs)
    with torch.no_grad():
        logp, _, values = trainer.policy.evaluate_actions(batch.obs, batch.actions)
    assert torch.allclose(logp, batch.logp, atol=1e-6) and torch.allclose(values, batch.values, atol=1e-6)
    assert 0.0 <= abs(extra["precision/actor_learner_kl"]) < 0.01  # int8 copy of the same weights: tiny KL
    trainer.envs.close()


def test_describe_paths_names_the_fast_paths(tmp_path):
    trainer = tiny(tmp_path)
    assert trainer.describe_paths() == "fused tanh MLP, FlatAdam, precision fp32"
    trainer.envs.close()
    off = tiny(tmp_path / "b", "policy.fused=off", "ppo.optimizer=adam")
    assert off.describe_paths().startswith("layer-by-layer MLP (policy.fused is off")
    assert "Adam, precision fp32" in off.describe_paths()
    off.envs.close()
