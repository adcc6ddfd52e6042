"""The gym Trainer's named steps on a tiny CartPole run (seconds, no CLI)."""
import numpy as np
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
    assert second["train/n_updates"] == first["train/n_updates"] + 2 * -(-valid // 16)  # cumulative, as SB3
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
    assert trainer.describe_paths() == "fused tanh MLP, FlatAdam, precision fp32, acting: numpy actor"
    trainer.envs.close()
    off = tiny(tmp_path / "b", "policy.fused=off", "ppo.optimizer=adam")
    assert off.describe_paths().startswith("layer-by-layer MLP (policy.fused is off")
    assert off.describe_paths().endswith("Adam, precision fp32, acting: the policy")
    off.envs.close()
    int8 = tiny(tmp_path / "c", "precision.rollout=int8")
    assert int8.describe_paths().endswith("acting: int8 copy")
    int8.envs.close()


def resumed(tmp_path, *overrides):
    from rlhf.config import load_config as load

    run = tmp_path / "run"
    return Trainer(load(run / "config.yaml", list(overrides)), run, resume=True)


def test_a_trainer_holds_its_run_directory_until_closed(tmp_path):
    from rlhf.errors import ConfigError

    trainer = tiny(tmp_path)
    with pytest.raises(ConfigError, match="is in use by process"):
        tiny(tmp_path)
    trainer.close()
    tiny(tmp_path).close()  # free again, and still no checkpoint to refuse it


def test_resume_falls_back_past_a_truncated_checkpoint_and_counts_updates_on(tmp_path, capsys):
    trainer = tiny(tmp_path)
    trainer.iteration()
    trainer.save()
    n_first = trainer.n_updates
    trainer.iteration()
    newest = trainer.save()
    trainer.close()
    newest.write_bytes(newest.read_bytes()[:500])
    config_before = (tmp_path / "run" / "config.yaml").read_bytes()

    again = resumed(tmp_path, "total_timesteps=96")
    assert again.global_step == 32 and again.updates == 1 and again.n_updates == n_first
    assert capsys.readouterr().err.strip() == ("rlhf: warning: skipping step_000000000064.pt (is truncated or not a "
                                               "checkpoint (RuntimeError)); using step_000000000032.pt")
    assert (tmp_path / "run" / "config.yaml").read_bytes() == config_before  # not before the first save
    stats = again.iteration()
    assert stats["train/n_updates"] == again.n_updates > n_first  # cumulative across the resume
    again.save()
    assert "total_timesteps: 96" in (tmp_path / "run" / "config.yaml").read_text()
    names = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert names == ["step_000000000032.pt", "step_000000000064.pt", "step_000000000064.pt.unreadable"]
    again.close()


@pytest.mark.parametrize("override", ["env.num_envs=3", "policy.hidden_sizes=[32]", "seed=5",
                                      "precision.train=bf16-mixed", "env.id=Acrobot-v1"])
def test_a_refused_resume_names_the_key_and_changes_nothing(tmp_path, override):
    from rlhf.errors import ConfigError

    trainer = tiny(tmp_path)
    trainer.iteration()
    trainer.save()
    trainer.close()
    run = tmp_path / "run"
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    with pytest.raises(ConfigError, match=f"{override.split('=')[0]} cannot change on a resumed run"):
        resumed(tmp_path, override)
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before  # lock gone, config identical


def test_a_finished_run_resumed_as_is_writes_nothing(tmp_path):
    trainer = tiny(tmp_path, "total_timesteps=32")
    trainer.train()
    run = tmp_path / "run"
    before = sorted(p.name for p in run.rglob("*"))
    again = resumed(tmp_path)
    assert again.finished
    again.train()
    assert sorted(p.name for p in run.rglob("*")) == before


def test_a_checkpoint_that_does_not_fit_an_edited_config_is_one_error(tmp_path):
    from rlhf.errors import ConfigError

    trainer = tiny(tmp_path)
    trainer.iteration()
    trainer.save()
    trainer.close()
    config = tmp_path / "run" / "config.yaml"
    config.write_text(config.read_text().replace("- 64\n  - 64", "- 32"))
    with pytest.raises(ConfigError, match=r"checkpoint step_000000000032\.pt does not fit this config \(was "
                                          r"config.yaml edited\?\): Error\(s\) in loading state_dict"):
        resumed(tmp_path)
    assert not (tmp_path / "run" / ".rlhf.lock").exists()


def test_the_numpy_actor_s_generator_resumes_and_a_checkpoint_without_it_still_loads(tmp_path):
    trainer = tiny(tmp_path)
    trainer.iteration()
    path = trainer.save()
    saved = torch.load(path, weights_only=True)
    assert "actor" in saved["rng"]
    trainer.actor.rng.random(5)  # moved on after the save
    trainer.close()
    again = resumed(tmp_path)
    assert again.actor.rng.bit_generator.state == saved["rng"]["actor"]["bit_generator"]
    again.close()
    del saved["rng"]["actor"]  # as written before rollouts acted in numpy
    torch.save(saved, path)
    older = resumed(tmp_path)
    fresh = np.random.default_rng((older.cfg.seed, 0, older.updates)).bit_generator.state
    assert older.actor.rng.bit_generator.state == fresh  # seeded by where the run is, as torch's is then
    older.iteration()
    older.close()
