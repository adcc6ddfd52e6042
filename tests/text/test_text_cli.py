"""The text pipeline end to end on a tiny model: train all stages, eval, sample, resume mid-PPO,
stage subsets, init_from and a reward callable, TensorBoard tags."""
import json
import subprocess

import pytest

from cli_helpers import ROOT, rlhf_cmd, scalar_tags, scalars, sigterm_while_hanging

TINY = ["text.model.n_layer=1", "text.model.n_head=2", "text.model.n_embd=32", "text.sft.steps=40",
        "text.sft.corpus_size=2000", "text.reward_model.pairs=48", "text.reward_model.val_pairs=24",
        "text.reward_model.responses_per_prompt=4", "text.reward_model.batch_size=12", "text.reward_model.steps=10",
        "text.updates=2", "text.prompts_per_update=8", "text.max_new_tokens=8",
        "text.eval_prompts=16", "text.sample_every=1", "text.snapshot_every=1", "ppo.batch_size=4", "ppo.epochs=2"]


def run(*args, check=True):
    proc = subprocess.run(rlhf_cmd(*args), capture_output=True, text=True, cwd=ROOT, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("text") / "run"
    run("train", "configs/text_rlhf.yaml", *TINY, "--run-dir", str(run_dir))
    return run_dir


def test_three_stages_write_one_run_directory_with_trl_tags(text_run):
    for relative in ("config.yaml", "tokenizer.json", "sft/model.pt", "reward_model/model.pt",
                     "ppo/snapshots/update_00000.pt", "ppo/snapshots/update_00002.pt"):
        assert (text_run / relative).is_file(), relative
    assert list((text_run / "checkpoints").glob("step_*.pt"))
    tags = scalar_tags(text_run)
    expected = {"objective/kl", "objective/scores", "objective/rlhf_reward", "objective/non_score_reward",
                "objective/entropy", "val/num_eos_tokens", "objective/gold_score", "objective/kl_coef", "rm/accuracy",
                "sft/loss", "sft/val_perplexity", "train/approx_kl", "train/clip_fraction", "train/value_loss",
                "train/policy_gradient_loss", "train/entropy_loss"}
    assert expected <= tags, expected - tags


def test_eval_and_sample(text_run):
    result = json.loads(run("eval", str(text_run), "--json").stdout)
    for key in ("gold_score", "sft_gold_score", "rm_score", "kl_to_ref", "win_rate_vs_sft", "rm_pairwise_accuracy",
                "gold_label_accuracy", "eos_rate", "mean_response_length"):
        assert isinstance(result[key], float), key
    assert 0.0 <= result["win_rate_vs_sft"] <= 1.0 and result["prompts"] == 16
    rows = json.loads(run("sample", str(text_run), "-n", "3", "--json").stdout)
    assert len(rows) == 3 and all(set(r) == {"prompt", "response"} for r in rows)
    rows = json.loads(run("sample", str(text_run), "--prompt", "review : the pasta", "-n", "2", "--stage", "sft",
                          "--json").stdout)
    assert [r["prompt"] for r in rows] == ["review : the pasta"] * 2
    bad = run("sample", str(text_run), "--prompt", "review : the spaceship", check=False)
    assert bad.returncode == 2 and "unknown words" in bad.stderr and "Traceback" not in bad.stderr


def test_resume_continues_ppo_from_its_checkpoint(text_run, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(text_run, copy)
    before = sorted((copy / "checkpoints").glob("step_*.pt"))
    run("train", "--resume", str(copy), "text.updates=4")
    after = sorted((copy / "checkpoints").glob("step_*.pt"))
    assert after[-1].name > before[-1].name
    assert (copy / "ppo/snapshots/update_00004.pt").is_file()
    assert not (copy / "ppo/snapshots/update_00005.pt").exists()
    n_updates = [v for _, v in scalars(copy, "train/n_updates")]  # gradient steps, cumulative across the resume
    assert n_updates[-1] == 4 * n_updates[0]


def test_stage_subset_with_init_from_and_a_reward_callable(text_run, tmp_path):
    reward = tmp_path / "reward.py"
    reward.write_text("def reward_function(prompt, response):\n    return float(len(response.split()))\n")
    out = tmp_path / "cb"
    run("train", "configs/text_rlhf.yaml", *TINY, "stages=[ppo]", f"text.init_from={text_run}",
        f"text.reward_function={reward}", "--run-dir", str(out))
    reward.unlink()  # the run keeps its own copy
    assert (out / "user/reward_function.py").is_file() and (out / "sft/model.pt").is_file()
    result = json.loads(run("eval", str(out), "--json").stdout)
    assert "reward_function_score" in result and "sft_reward_function_score" in result


def test_a_ppo_stage_run_alone_is_repeatable(text_run, tmp_path):
    """stages=[ppo] seeds its own start: the same command twice ends with the same weights (LoRA adapters'
    initial values and minibatch shuffles included)."""
    import torch

    finals = []
    for name in ("a", "b"):
        run("train", "configs/text_rlhf.yaml", *TINY, "stages=[ppo]", "text.lora.rank=4", f"text.init_from={text_run}",
            "--run-dir", str(tmp_path / name))
        newest = sorted((tmp_path / name / "checkpoints").glob("step_*.pt"))[-1]
        finals.append(torch.load(newest, map_location="cpu", weights_only=True)["policy"])
    assert finals[0].keys() == finals[1].keys()
    assert all(torch.equal(finals[0][k], finals[1][k]) for k in finals[0])


def test_bad_reward_callable_stops_with_the_pair(text_run, tmp_path):
    reward = tmp_path / "bad.py"
    reward.write_text("def reward_function(prompt, response):\n    return 'great'\n")
    proc = run("train", "configs/text_rlhf.yaml", *TINY, "stages=[ppo]", f"text.init_from={text_run}",
               f"text.reward_function={reward}", "--run-dir", str(tmp_path / "bad"), check=False)
    assert proc.returncode == 2 and "returned 'great' for prompt '" in proc.stderr and "review :" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_eval_and_sample_are_repeatable_and_seeded(text_run, capsys):
    from rlhf.cli import main

    def out(*args):
        capsys.readouterr()
        assert main(list(args)) == 0
        return capsys.readouterr().out

    reject = {"parse_constant": lambda c: pytest.fail(f"not standard JSON: {c}")}
    first = out("eval", str(text_run), "--json", "--prompts", "8")
    assert first == out("eval", str(text_run), "--json", "--prompts", "8")
    result = json.loads(first, **reject)
    assert result["seed"] == 0 and result["prompts"] == 8
    other = json.loads(out("eval", str(text_run), "--json", "--prompts", "8", "--seed", "1"), **reject)
    assert other["seed"] == 1 and other["kl_to_ref"] != result["kl_to_ref"]
    sample = ["sample", str(text_run), "-n", "3", "--seed", "4"]
    assert out(*sample) == out(*sample)
    for args, words in ((["eval", str(text_run), "--episodes", "0"], "--episodes 0"),
                        (["eval", str(text_run), "--episodes", "3"], "--episodes applies to gym runs"),
                        (["eval", str(text_run), "--prompts", "0"], "--prompts 0"),
                        (["eval", str(text_run), "--video"], "--video applies to gym runs"),
                        (["sample", str(text_run), "--prompt", " "], "0 words")):
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and words in err, err


def test_no_user_code_leaves_the_reward_file_unimported(text_run, tmp_path):
    from rlhf.text.evaluate import evaluate_text_run

    marker, reward = tmp_path / "IMPORTED", tmp_path / "reward.py"
    reward.write_text(f"import pathlib\npathlib.Path({str(marker)!r}).write_text('yes')\n"
                      "def reward_function(prompt, response):\n    return 1.5\n")
    overrides = [f"text.reward_function={reward}", "text.eval_prompts=4"]
    safe = evaluate_text_run(text_run, overrides, user_code=False)
    assert not marker.exists()
    assert safe["reward_function_score"] is None and safe["sft_reward_function_score"] is None
    assert "--no-user-code" in safe["null_reasons"]["reward_function_score"]
    full = evaluate_text_run(text_run, overrides)
    assert marker.exists() and full["reward_function_score"] == 1.5
    assert full["gold_score"] == safe["gold_score"] and full["kl_to_ref"] == safe["kl_to_ref"]


def test_eval_falls_back_past_a_truncated_ppo_checkpoint(text_run, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(text_run, copy)
    good = json.loads(run("eval", str(copy), "--json").stdout)
    newest = sorted((copy / "checkpoints").glob("step_*.pt"))[-1]
    newer = newest.with_name("step_999999999999.pt")
    newer.write_bytes(newest.read_bytes()[:100])
    proc = run("eval", str(copy), "--json")
    assert "skipping step_999999999999.pt" in proc.stderr and "Traceback" not in proc.stderr
    assert json.loads(proc.stdout) == good


def test_sigterm_during_a_hanging_reward_file_stops_with_a_checkpoint(text_run, tmp_path):
    import torch

    flag = tmp_path / "hang"
    reward = tmp_path / "reward.py"
    reward.write_text("import os, time\ndef reward_function(prompt, response):\n"
                      f"    while os.path.exists({str(flag)!r}):\n        time.sleep(0.05)\n    return 1.0\n")
    out = tmp_path / "run"
    code, err, seconds = sigterm_while_hanging(
        ["train", "configs/text_rlhf.yaml", *TINY, "stages=[ppo]", "text.updates=50", f"text.init_from={text_run}",
         f"text.reward_function={reward}", "--run-dir", str(out)], out, flag)
    assert code == 0 and seconds < 10, err
    assert "stopped; continue with --resume" in err and "Traceback" not in err
    newest = sorted((out / "checkpoints").glob("step_*.pt"))[-1]
    state = torch.load(newest, weights_only=True)
    assert all(torch.isfinite(t).all() for t in state["policy"].values()) and state["counters"]["updates"] >= 1
    flag.unlink()
    run("train", "--resume", str(out), "text.updates=3")  # the saved state resumes
