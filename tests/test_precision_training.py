"""Precision modes inside real training runs, through the `rlhf` command."""
import json
import subprocess

import pytest

from cli_helpers import ROOT, rlhf_cmd, scalar_tags
from rlhf.cli import main


def run(*args):
    return subprocess.run(rlhf_cmd(*args), capture_output=True, text=True, cwd=ROOT, timeout=600)


@pytest.mark.parametrize("override", ["precision.rollout=int8", "precision.train=bf16-mixed"])
def test_cartpole_learns_in_precision_mode(tmp_path, override):
    run_dir = tmp_path / "run"
    proc = run("train", str(ROOT / "configs" / "cartpole.yaml"), "seed=0", override, "--run-dir", str(run_dir))
    assert proc.returncode == 0, proc.stderr
    if "rollout" in override:
        assert "precision/actor_learner_kl" in scalar_tags(run_dir)
    ev = run("eval", str(run_dir), "--episodes", "10", "--json")
    assert ev.returncode == 0, ev.stderr
    assert json.loads(ev.stdout)["mean_return"] >= 475


def test_model_size_table(capsys):
    assert main(["model-size", str(ROOT / "configs" / "cartpole.yaml")]) == 0
    out = capsys.readouterr().out
    assert "weights fp32" in out and "weights int8" in out and "4-bit" in out


def test_fp16_cnn_on_cpu_is_refused(capsys, tmp_path):
    code = main(["train", str(ROOT / "configs" / "deepracer.yaml"), "env.kwargs.observation=camera",
                 "precision.train=fp16-mixed", "device=cpu", "--run-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and "fp16-mixed" in err and "bf16-mixed" in err


def test_unknown_precision_mode_is_a_config_error(capsys, tmp_path):
    code = main(["train", str(ROOT / "configs" / "cartpole.yaml"), "precision.rollout=int4",
                 "--run-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and "precision.rollout" in err and "'int8'" in err
