"""Data-parallel PPO (rlhf.distributed): 2 processes on gloo, started by torchrun as users start them."""
import json
import subprocess

import pytest

from cli_helpers import ROOT, TORCHRUN, TORCHRUN_ENV

WORKER = r'''
import json, sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from rlhf import distributed
from rlhf.config import load_config
from rlhf.ppo.advantages import masked_whiten
from rlhf.trainer import Trainer
from rlhf.testing import parameter_digest as digest


out = Path(sys.argv[1])
assert distributed.init("cpu")
r = distributed.rank()
res = {"world": distributed.world_size()}

g = torch.Generator().manual_seed(0)
full, mask = torch.randn(2, 10, generator=g) * 3 + 1, torch.rand(2, 10, generator=g) > 0.3
res["whiten_err"] = float((distributed.whiten(full[r], mask[r]) - masked_whiten(full, mask)[r]).abs().max())
w = distributed.Whiten()  # what ppo_update calls: the same tensor twice, then another
mine, other = (full[r], mask[r]), ((full * 2)[r], ~mask[r])
cases = ((mine, (full, mask)), (mine, (full, mask)), (other, (full * 2, ~mask)))  # a hit, then a new tensor
res["whiten_cached_err"] = max(float((w(*args) - masked_whiten(*whole)[r]).abs().max()) for args, whole in cases)
res["whiten_err_nomask"] = float((distributed.whiten(full[r]) - masked_whiten(full.reshape(-1)).reshape(2, 10)[r])
                                 .abs().max())

ps = [torch.nn.Parameter(torch.zeros(3)) for _ in range(3)]
ps[0].grad = torch.full((3,), float(r + 1))
ps[1].grad = torch.ones(3) if r == 0 else None  # reached on rank 0 only
distributed.GradientMean()(ps)  # ps[2]: reached on no rank
res["grads"] = [None if p.grad is None else p.grad.tolist() for p in ps]
res["stats"] = distributed.reduce_stats({"a": float(r), "rollout/ep_rew_mean": 10.0 if r == 0 else float("nan"),
                                         "time/episodes": 3.0, **({"only_rank0": 1.0} if r == 0 else {})})

base = {"env": {"id": "CartPole-v1", "num_envs": 2},
        "ppo": {"n_steps": 16, "batch_size": 16, "epochs": 2, "learning_rate": 0.003},
        "total_timesteps": 256, "checkpoint": {"every": 0}, "logging": {"progress_bar": False}}
for name, overrides in (("flat", ["policy.normalize_obs=true"]),
                        ("adam", ["ppo.optimizer=adam", "ppo.target_kl=0.002", "ppo.epochs=8"])):
    trainer = Trainer(load_config(data=base, overrides=overrides), out / name)
    first_obs, start = trainer.collector.obs.tolist(), digest(trainer.policy)
    trainer.train()
    res[name] = {"start": start, "end": digest(trainer.policy), "first_obs": first_obs,
                 "n_updates": trainer.n_updates, "global_step": trainer.global_step,
                 "optimizer": type(trainer.optimizer).__name__,
                 "early_stops": trainer.last_stats["train/early_stop"]}


class Short(gym.Env):
    """Episodes of 1 step on rank 0 and 50 on rank 1: rank 0's batch holds about half the rows of rank 1's."""
    observation_space, action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32), gym.spaces.Discrete(2)

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self.np_random.uniform(-1, 1, 2).astype(np.float32), {}

    def step(self, action):
        self.t += 1
        return self.np_random.uniform(-1, 1, 2).astype(np.float32), float(action), self.t >= (1 if r == 0 else 50), False, {}


gym.register("ShortOnRank0-v0", entry_point=Short)
trainer = Trainer(load_config(data={**base, "env": {"id": "ShortOnRank0-v0", "num_envs": 2},
                                    "ppo": {"n_steps": 8, "batch_size": 4, "epochs": 2}}), out / "uneven")
rows = len(trainer.relabel(trainer.collect())[0])
start = digest(trainer.policy)
trainer.train()
res["uneven"] = {"rows": rows, "start": start, "end": digest(trainer.policy), "n_updates": trainer.n_updates}
(out / f"rank{r}.json").write_text(json.dumps(res))
'''


def run(cmd, cwd, timeout=300):  # generous: a loaded 2-core machine runs two ranks plus the launcher
    proc = subprocess.run(cmd, cwd=cwd, env=TORCHRUN_ENV, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_two_ranks_agree_on_gradients_advantages_statistics_and_parameters(tmp_path):
    (tmp_path / "worker.py").write_text(WORKER)
    run([*TORCHRUN, str(tmp_path / "worker.py"), str(tmp_path)], cwd=tmp_path)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["world"] == 2
    assert max(r[k] for r in (r0, r1) for k in ("whiten_err", "whiten_err_nomask", "whiten_cached_err")) < 1e-5
    assert r0["grads"] == r1["grads"] == [[1.5] * 3, [0.5] * 3, None]
    assert r0["stats"] == r1["stats"] == {"a": 0.5, "rollout/ep_rew_mean": 10.0, "time/episodes": 6.0,
                                          "only_rank0": 1.0}
    for name, optimizer in (("flat", "FlatAdam"), ("adam", "Adam")):
        a, b = r0[name], r1[name]
        assert a["optimizer"] == optimizer
        assert a["start"] == b["start"] and a["end"] == b["end"], name  # obs statistics included (flat)
        assert a["start"] != a["end"], name  # the updates changed the policy
        assert a["first_obs"] != b["first_obs"]  # each rank its own env seeds
        assert a["global_step"] == b["global_step"] == 256  # total_timesteps counts every rank's steps
        assert a["n_updates"] == b["n_updates"]
    assert r0["adam"]["n_updates"] < 4 * 8 * 2  # the target-KL stop fired (on both ranks at once)
    # ranks whose batches differ in size (episode ends) still take the same steps, in as many minibatches
    a, b = r0["uneven"], r1["uneven"]
    assert a["rows"] < 10 < 14 < b["rows"]
    # 7 iterations (the first collect above counts as one), 4 minibatches x 2 epochs each
    assert a["start"] == b["start"] != a["end"] == b["end"] and a["n_updates"] == b["n_updates"] == 7 * 4 * 2
    written = sorted(p.name.split(".")[0] for p in (tmp_path / "flat").iterdir())
    assert written == ["checkpoints", "config", "events"]  # one event file, no lock left


def test_torchrun_cli_writes_one_run_directory_that_evaluates_and_resumes(tmp_path, capsys):
    from rlhf.cli import main

    run_dir = tmp_path / "run"
    small = ["env.num_envs=4", "ppo.n_steps=32", "ppo.batch_size=128", "ppo.epochs=4", "checkpoint.every=512"]
    proc = run([*TORCHRUN, "-m", "rlhf", "train", str(ROOT / "configs/cartpole.yaml"), "total_timesteps=1024",
                *small, "--run-dir", str(run_dir)], cwd=tmp_path)
    assert proc.stderr.count("run directory:") == 1 and proc.stderr.count("finished at step 1024") == 1
    assert "2 data-parallel ranks" in proc.stderr
    assert sorted(p.name for p in run_dir.iterdir() if not p.name.startswith("events")) == ["checkpoints",
                                                                                          "config.yaml"]
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step_000000000512.pt",
                                                                          "step_000000001024.pt"]
    assert main(["eval", str(run_dir), "--episodes", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["episodes"] == 2 and result["mean_return"] > 0

    proc = run([*TORCHRUN, "-m", "rlhf", "train", "--resume", str(run_dir), "total_timesteps=1536"], cwd=tmp_path)
    assert proc.stderr.count("finished at step 1536") == 1
    assert (run_dir / "checkpoints" / "step_000000001536.pt").is_file()
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 2  # one per invocation, rank 0's


@pytest.mark.parametrize("args, message", [
    (["configs/cartpole.yaml", "ppo.n_steps=null", "ppo.episodes_between_updates=4"], "ppo.episodes_between_updates"),
    (["configs/cartpole.yaml", "ppo.n_steps=1", "ppo.batch_size=8"], "ppo.n_steps = 1"),
])
def test_what_data_parallel_runs_cannot_honour_is_refused_before_the_group_starts(tmp_path, monkeypatch, capsys,
                                                                                 args, message):
    from rlhf.cli import main

    monkeypatch.chdir(ROOT)
    for key, value in (("WORLD_SIZE", "2"), ("RANK", "0"), ("LOCAL_RANK", "0")):
        monkeypatch.setenv(key, value)  # no rank 1 exists: joining the group would wait for it
    assert main(["train", *args, "--run-dir", str(tmp_path / "r")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("rows, count", [(1, 1), (2, 1), (5, 1), (3, 2), (4, 3), (9, 2)])
def test_equal_split_gives_every_rank_count_pieces_of_at_least_two_rows(rows, count):
    """Every rank takes ``count`` steps and whitens every piece, whatever its number of rows."""
    import torch

    from rlhf.distributed import EqualSplit
    from rlhf.ppo.update import Batch

    f = torch.arange(float(rows))
    pieces = list(EqualSplit(count)(Batch(f[:, None], f.long(), f, f, f, f), batch_size=8))
    assert len(pieces) == count and all(len(p) >= 2 for p in pieces)
    seen = torch.cat([p.logp for p in pieces])
    assert set(seen.tolist()) == set(f.tolist())  # every row is trained on
