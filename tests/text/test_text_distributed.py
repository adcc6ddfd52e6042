"""Data-parallel text pipeline: 2 processes on gloo, started by torchrun as users start them."""
import json
import subprocess

import pytest
import torch

from cli_helpers import ROOT, TORCHRUN, TORCHRUN_ENV, rlhf_cmd

MODEL = ["text.model.n_layer=1", "text.model.n_head=2", "text.model.n_embd=32"]
SUPERVISED = ["text.sft.steps=40", "text.sft.corpus_size=2000", "text.reward_model.pairs=48",
              "text.reward_model.val_pairs=24", "text.reward_model.responses_per_prompt=4",
              "text.reward_model.batch_size=12", "text.reward_model.steps=10"]
PPO = ["text.updates=2", "text.prompts_per_update=8", "text.max_new_tokens=8", "text.eval_prompts=16",
       "text.snapshot_every=1", "ppo.batch_size=4", "ppo.epochs=2"]
TINY = [*MODEL, *SUPERVISED, *PPO]

WORKER = r'''
import json, sys
from pathlib import Path

from rlhf import distributed
from rlhf.config import load_config
from rlhf.text import pipeline
from rlhf.testing import parameter_digest as digest


out, root, tiny = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
assert distributed.init("cpu")
r = distributed.rank()
built, make = [], pipeline.build_text_ppo


def capture(*args, reduce=True, **kwargs):  # the PPO stage's TextPPO, its first weights and each rank's prompts
    ppo = make(*args, **kwargs)
    if not reduce:
        ppo.precision.grad_reduce = None
    record = {"start": digest(ppo.policy.model), "prompts": [], "ppo": ppo,
              "whiten": type(ppo.settings.whiten).__name__}
    iteration = ppo.iteration

    def recorded():
        stats, ro = iteration()
        record["prompts"].append(ro.prompts)
        return stats, ro
    ppo.iteration = recorded
    built.append(record)
    return ppo


res = {}
runs = (("full", "configs/text_rlhf.yaml", [], True),
        ("unreduced", "configs/text_rlhf.yaml", ["stages=[ppo]"], False),
        ("qlora", "configs/text_rlhf_lora.yaml", ["stages=[ppo]", "text.lora.quantize_base=nf4"], True))
for name, config, extra, reduce in runs:
    pipeline.build_text_ppo = lambda *a, **k: capture(*a, reduce=reduce, **k)
    init = [] if name == "full" else [f"text.init_from={out / 'full'}"]
    cfg = load_config(root / config, [*tiny, *extra, *init])
    pipeline.TextTrainer(cfg, out / name).train()
    rec = built[-1]
    ppo = rec.pop("ppo")
    res[name] = {**rec, "end": digest(ppo.policy.model), "kl_coef": ppo.kl_coef, "global_step": ppo.global_step,
                 "updates": ppo.updates}
(out / f"rank{r}.json").write_text(json.dumps(res))
'''


def run(cmd, timeout=300, check=True):  # generous: a loaded 2-core machine runs two ranks plus the launcher
    proc = subprocess.run(cmd, cwd=ROOT, env=TORCHRUN_ENV, capture_output=True, text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def train(*args, check=True):
    return run([*TORCHRUN, "-m", "rlhf", "train", *args], check=check)


def newest(run_dir):
    return torch.load(sorted((run_dir / "checkpoints").glob("step_*.pt"))[-1], weights_only=True)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """SFT and reward model of the tiny config, trained in one process (the PPO runs below start from them)."""
    run_dir = tmp_path_factory.mktemp("text_dp") / "base"
    run(rlhf_cmd("train", "configs/text_rlhf.yaml", *MODEL, *SUPERVISED, "stages=[sft,reward_model]",
                 "--run-dir", str(run_dir)))
    return run_dir


def test_ranks_keep_identical_weights_through_every_stage_and_differ_without_the_gradient_mean(tmp_path):
    (tmp_path / "worker.py").write_text(WORKER)
    run([*TORCHRUN, str(tmp_path / "worker.py"), str(tmp_path), str(ROOT), *TINY])
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    for name in ("full", "qlora"):
        a, b = r0[name], r1[name]
        assert a["start"] == b["start"] and a["end"] == b["end"], name  # one start, the same steps on both ranks
        assert a["start"] != a["end"], name  # the updates changed the policy (the adapters, for QLoRA)
        assert a["whiten"] == "Whiten", name  # advantage statistics over both ranks' tokens
        assert a["kl_coef"] == b["kl_coef"] != 0.1, name  # the adaptive controller saw the same (cross-rank) KL
        assert a["global_step"] == b["global_step"] and a["updates"] == b["updates"] == 2, name
        assert a["prompts"] != b["prompts"], name  # each rank its own prompts and samples
    assert r0["unreduced"]["start"] == r1["unreduced"]["start"]
    assert r0["unreduced"]["end"] != r1["unreduced"]["end"]  # without the gradient mean the ranks drift apart
    full = tmp_path / "full"
    assert sorted(p.name for p in full.iterdir() if not p.name.startswith("events")) == \
        ["checkpoints", "config.yaml", "ppo", "reward_model", "sft", "tokenizer.json"]
    assert len(list(full.glob("events.out.tfevents.*"))) == 1  # rank 0's, and no lock left
    assert newest(full)["counters"]["global_step"] == r0["full"]["global_step"]
    assert len(newest(full)["rng"]["ranks"]) == 2  # each rank's random streams, for --resume


def test_torchrun_cli_run_evaluates_and_resumes_as_if_uninterrupted(base, tmp_path, capsys):
    from rlhf.cli import main

    run_dir, straight = tmp_path / "run", tmp_path / "straight"
    proc = train("configs/text_rlhf.yaml", *TINY, "stages=[ppo]", f"text.init_from={base}", "--run-dir", str(run_dir))
    assert proc.stderr.count("run directory:") == 1 and proc.stderr.count("finished: stages ppo") == 1
    assert "8 responses x 2 ranks" in proc.stderr
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1
    assert len(list((run_dir / "ppo" / "snapshots").iterdir())) == 3  # updates 0, 1, 2
    assert main(["eval", str(run_dir), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["prompts"] == 16 and 0.0 <= result["win_rate_vs_sft"] <= 1.0

    train("--resume", str(run_dir), "text.updates=3")
    train("configs/text_rlhf.yaml", *TINY, "stages=[ppo]", "text.updates=3", f"text.init_from={base}",
          "--run-dir", str(straight))
    resumed, reference = newest(run_dir), newest(straight)
    assert resumed["counters"] == reference["counters"] and resumed["counters"]["updates"] == 3
    for key, t in reference["policy"].items():  # each rank's streams restored: the same samples, the same weights
        assert torch.equal(resumed["policy"][key], t), key
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 2  # one per invocation, rank 0's


def test_a_signal_on_one_rank_stops_every_rank_with_a_checkpoint(base, tmp_path):
    flag, reward, run_dir = tmp_path / "flag", tmp_path / "reward.py", tmp_path / "run"
    flag.touch()
    reward.write_text(  # rank 1 signals itself during update 2's reward calls (8 per update), once
        "import os, signal\ncalls = 0\ndef reward_function(prompt, response):\n    global calls\n    calls += 1\n"
        f"    if os.environ['RANK'] == '1' and calls == 10 and os.path.exists({str(flag)!r}):\n"
        f"        os.unlink({str(flag)!r})\n        os.kill(os.getpid(), signal.SIGTERM)\n"
        "    return float(len(response.split()))\n")
    proc = train("configs/text_rlhf.yaml", *TINY, "stages=[ppo]", "text.updates=4", f"text.init_from={base}",
                 f"text.reward_function={reward}", "--run-dir", str(run_dir))
    assert not flag.exists() and proc.stderr.count("stopped; continue with --resume") == 1  # rank 0 reports
    assert "Traceback" not in proc.stderr
    assert newest(run_dir)["counters"]["updates"] == 1  # saved by rank 0, which got no signal
    train("--resume", str(run_dir))
    assert newest(run_dir)["counters"]["updates"] == 4


def test_a_reward_error_on_one_rank_stops_every_rank_in_one_line_each(base, tmp_path):
    """Rank 1's reward function raises during update 2 while reward whitening (a collective) is on: rank 1
    names the error, rank 0 stops at the same point instead of waiting in the whitening's all_reduce, and
    neither prints a traceback. The checkpoint of update 1 stays the newest."""
    reward, run_dir = tmp_path / "reward.py", tmp_path / "run"
    reward.write_text(
        "import os\ncalls = 0\ndef reward_function(prompt, response):\n    global calls\n    calls += 1\n"
        "    if os.environ['RANK'] == '1' and calls == 10:\n        raise ValueError('judge unavailable')\n"
        "    return float(len(response.split()))\n")
    proc = train("configs/text_rlhf.yaml", *TINY, "stages=[ppo]", "text.updates=4", "text.whiten_rewards=true",
                 f"text.init_from={base}", f"text.reward_function={reward}", "--run-dir", str(run_dir), check=False)
    assert proc.returncode != 0
    assert "judge unavailable" in proc.stderr
    assert "another data-parallel rank stopped with an error" in proc.stderr
    ranks = proc.stderr.split("torch/distributed/elastic")[0]  # what follows is torchrun's own failure report
    assert "Traceback" not in ranks and "gloo" not in ranks, ranks[-3000:]
    assert newest(run_dir)["counters"]["updates"] == 1
