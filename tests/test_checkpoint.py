"""Checkpoints you can always come back from: atomic files with a run's file mode, the newest usable one
found past unreadable ones, the keys a resumed run cannot change refused by name."""
import os
import stat

import pytest
import torch

from rlhf.checkpoint import (checkpoint_problem, latest_valid, list_checkpoints, load_checkpoint,
                             refuse_frozen_changes, save_checkpoint, save_file, set_aside, skipped_newer,
                             write_config)
from rlhf.config import load_config
from rlhf.errors import ConfigError


def two_checkpoints(run_dir):
    """step 100 and step 200, each holding its step in a tensor."""
    for step in (100, 200):
        save_checkpoint({"policy": {"w": torch.full((3,), float(step))}, "counters": {"global_step": step}},
                        run_dir, step)
    return list_checkpoints(run_dir)


def spoil(path, kind: str) -> None:
    if kind == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "random":
        path.write_bytes(os.urandom(2000))
    elif kind == "directory":
        path.unlink()
        path.mkdir()
    elif kind == "not a dict":
        torch.save([1, 2, 3], path)
    elif kind == "missing keys":
        torch.save({"counters": {}}, path)
    elif kind == "nan weights":
        torch.save({"policy": {"w": torch.tensor([1.0, float("nan"), 2.0])}, "counters": {"global_step": 200}}, path)


def test_saved_files_get_the_mode_of_other_run_files(tmp_path):
    old = os.umask(0o022)
    try:
        path = save_file({"x": torch.zeros(2)}, tmp_path / "a" / "b.pt")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in path.parent.iterdir()] == ["b.pt"]  # no temporary file left


@pytest.mark.parametrize("kind", ["truncated", "empty", "random", "directory", "not a dict", "missing keys",
                                  "nan weights"])
def test_newest_unusable_checkpoint_falls_back_with_one_warning(tmp_path, kind):
    older, newest = two_checkpoints(tmp_path)
    spoil(newest, kind)
    warnings = []
    path, state = latest_valid(tmp_path, ("policy", "counters"), load=True, warn=warnings.append)
    assert path == older and state["counters"]["global_step"] == 100
    assert torch.equal(state["policy"]["w"], torch.full((3,), 100.0))
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert warnings[0].startswith("rlhf: warning: skipping step_000000000200.pt (")
    assert warnings[0].endswith("; using step_000000000100.pt")
    # the quick check (memory-mapped, tensors not read) agrees
    assert latest_valid(tmp_path, ("policy", "counters"), warn=lambda m: None) == (older, None)
    assert skipped_newer(tmp_path, older) == [newest]


def test_a_usable_newest_checkpoint_warns_nothing(tmp_path):
    _, newest = two_checkpoints(tmp_path)
    warnings = []
    assert latest_valid(tmp_path, warn=warnings.append)[0] == newest and warnings == []
    assert latest_valid(tmp_path / "nothing") is None


def test_no_usable_checkpoint_is_one_line_naming_each(tmp_path):
    older, newest = two_checkpoints(tmp_path)
    spoil(older, "empty")
    spoil(newest, "truncated")
    with pytest.raises(ConfigError) as err:
        latest_valid(tmp_path, warn=lambda m: None)
    message = str(err.value)
    assert "\n" not in message and message.startswith("no usable checkpoint in ")
    assert "step_000000000200.pt (is truncated or not a checkpoint (" in message
    assert "step_000000000100.pt (is empty)" in message


def test_load_checkpoint_names_the_file_and_the_problem(tmp_path):
    path = tmp_path / "x.pt"
    path.write_bytes(os.urandom(100))
    with pytest.raises(ConfigError, match=r"checkpoint '.*x\.pt' is truncated or not a checkpoint"):
        load_checkpoint(path)
    torch.save({"policy": {}}, path)
    assert checkpoint_problem(path, ("policy", "optimizer")) == "lacks optimizer"


def test_pruning_skips_folders_and_set_aside_files_leave_the_list(tmp_path):
    older, newest = two_checkpoints(tmp_path)
    spoil(newest, "directory")
    moved = set_aside([newest])
    assert [p.name for p in moved] == ["step_000000000200.pt.unreadable"] and moved[0].is_dir()
    assert list_checkpoints(tmp_path) == [older]
    for step in (300, 400, 500):  # keep=3 over files only: no attempt to unlink a folder
        save_checkpoint({"policy": {}}, tmp_path, step)
    assert [p.name for p in list_checkpoints(tmp_path)] == [f"step_000000000{s}.pt" for s in (300, 400, 500)]
    assert moved[0].is_dir()


def test_frozen_keys_are_refused_by_name_and_others_pass(tmp_path):
    saved = load_config(data={"env": {"num_envs": 4}, "policy": {"hidden_sizes": [64, 64]}}).model_dump(mode="json")
    same_shape = load_config(data={"env": {"num_envs": 4}, "total_timesteps": 5000,
                                   "ppo": {"learning_rate": 1e-4}}).model_dump(mode="json")
    refuse_frozen_changes(saved, same_shape, ("env.num_envs", "policy.hidden_sizes"), tmp_path)
    wider = load_config(data={"env": {"num_envs": 4}, "policy": {"hidden_sizes": [128, 128]}}).model_dump(mode="json")
    with pytest.raises(ConfigError) as err:
        refuse_frozen_changes(saved, wider, ("env.num_envs", "policy.hidden_sizes"), tmp_path)
    assert str(err.value) == (f"--resume {str(tmp_path)!r}: policy.hidden_sizes cannot change on a resumed run (the "
                              "checkpoint was trained with [64, 64], got [128, 128]); start a new run with --run-dir "
                              "instead")


def test_write_config_replaces_the_file_whole(tmp_path):
    (tmp_path / "config.yaml").write_text("old")
    write_config(load_config(data={"seed": 7}), tmp_path)
    assert load_config(tmp_path / "config.yaml").seed == 7
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]


def test_a_refused_text_resume_changes_nothing(tmp_path):
    from rlhf.text.pipeline import TextTrainer

    run = tmp_path / "run"
    cfg = load_config(data={"text": {}, "stages": ["sft"]})
    TextTrainer(cfg, run).close()
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    resumed = load_config(run / "config.yaml", ["text.model.n_layer=2"])
    with pytest.raises(ConfigError, match="text.model.n_layer cannot change on a resumed run"):
        TextTrainer(resumed, run, resume=True)
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


def test_weights_of_another_architecture_are_one_line_naming_the_file(tmp_path):
    from rlhf.checkpoint import load_weights

    module = torch.nn.Linear(3, 2)
    load_weights(module, {"weight": torch.ones(2, 3), "bias": torch.zeros(2)}, tmp_path / "a.pt")
    assert torch.equal(module.weight, torch.ones(2, 3))
    for weights, words in (({"x": torch.zeros(3)}, "weights 2 missing (weight, bias); 1 unexpected (x)"),
                           ({"weight": torch.ones(4, 3), "bias": torch.zeros(2)},
                            "1 of another shape (weight (4, 3) vs (2, 3))")):
        with pytest.raises(ConfigError) as err:
            load_weights(module, weights, tmp_path / "a.pt")
        assert "a.pt' does not fit the policy" in str(err.value) and words in str(err.value)
        assert "\n" not in str(err.value)


def test_eval_of_a_checkpoint_of_another_policy_is_one_line(tmp_path):
    from rlhf.evaluate import load_policy
    from rlhf.trainer import Trainer

    cfg = load_config(data={"env": {"id": "CartPole-v1", "num_envs": 1}, "ppo": {"n_steps": 16, "batch_size": 16,
                      "epochs": 1}, "total_timesteps": 16, "logging": {"progress_bar": False, "tensorboard": False}})
    trainer = Trainer(cfg, tmp_path / "run")
    trainer.train()
    trainer.close()
    with pytest.raises(ConfigError, match="does not fit the policy its run's config.yaml describes"):
        load_policy(tmp_path / "run", ["policy.hidden_sizes=[8]"])
