"""Mixture-of-Experts policy vs a dense policy with the same active parameters, on the main DeepRacer job.

    python benchmarks/moe.py [--steps 400000] [--episodes 20]

Each policy trains in its own process (``rlhf train``, one torch thread) from configs/deepracer_moe.yaml;
the dense one drops ``policy.moe`` and takes the hidden width whose parameter count is closest to the
MoE policy's active parameters per observation. Reported: whole-process wall time (import to exit),
training steps/s, peak resident memory of the training process, and the deterministic evaluation's lap
completion, with the experts' final loads for the MoE run.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CONFIG = ROOT / "configs" / "deepracer_moe.yaml"

# runs `rlhf train ...` in this process and prints its peak RSS (KiB on Linux) as the last stderr line
_WRAPPER = ("import atexit, resource, sys; from rlhf.cli import entry; "
            "atexit.register(lambda: print('maxrss_kib', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "
            "file=sys.stderr)); entry()")


def policy_parameters(overrides: list[str]) -> tuple[int, int]:
    from rlhf.build import build_policy
    from rlhf.config import load_config
    from rlhf.moe import active_parameters
    from rlhf.vec_env import make_vec_env

    cfg = load_config(CONFIG, overrides)
    envs = make_vec_env(cfg.env, num_envs=1)
    policy = build_policy(cfg, envs.single_observation_space, envs.single_action_space, "cpu")
    envs.close()
    return active_parameters(policy)


def dense_width_matching(active: int) -> int:
    return min(range(8, 513), key=lambda h: abs(policy_parameters(["policy.moe=null", f"policy.hidden_sizes=[{h},{h}]"])[0] - active))


def train_and_eval(name: str, overrides: list[str], steps: int, episodes: int) -> dict:
    run_dir = Path(tempfile.mkdtemp(prefix=f"moe-bench-{name}-"))
    cmd = [sys.executable, "-c", _WRAPPER, "train", str(CONFIG), *overrides, f"total_timesteps={steps}",
           "--run-dir", str(run_dir / "run")]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{name}: training failed:\n{done.stderr[-2000:]}")
    rss = int(done.stderr.strip().splitlines()[-1].split()[-1])
    ev = subprocess.run([sys.executable, "-m", "rlhf", "eval", str(run_dir / "run"), "--json", "--episodes", str(episodes)],
                        capture_output=True, text=True, cwd=ROOT)
    result = json.loads(ev.stdout) if ev.returncode == 0 else {}
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "run"), size_guidance={"scalars": 0})
    acc.Reload()
    tags = acc.Tags()["scalars"]
    fps = [e.value for e in acc.Scalars("time/fps")] if "time/fps" in tags else []
    loads = {t: round(acc.Scalars(f"moe/expert_load_{t}")[-1].value, 3) for t in ("min", "max")
             if f"moe/expert_load_{t}" in tags}
    return {"policy": name, "wall_s": wall, "steps_per_s": fps[-1] if fps else float("nan"), "peak_rss_mib": rss / 1024,
            "lap_completion": result.get("lap_completion_rate"), "mean_return": result.get("mean_return"),
            "expert_load": loads}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=400_000)
    parser.add_argument("--episodes", type=int, default=20)
    args = parser.parse_args()
    total, active = policy_parameters([])
    width = dense_width_matching(active)
    dense_params = policy_parameters(["policy.moe=null", f"policy.hidden_sizes=[{width},{width}]"])[0]
    print(f"MoE policy: {total:,} parameters, {active:,} active per observation; "
          f"dense [{width}, {width}]: {dense_params:,} parameters")
    rows = [train_and_eval("moe", [], args.steps, args.episodes),
            train_and_eval("dense", ["policy.moe=null", f"policy.hidden_sizes=[{width},{width}]"], args.steps,
                           args.episodes)]
    print("| policy | whole process s | steps/s | peak RSS MiB | lap completion | return | expert load |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        lap = "n/a" if r["lap_completion"] is None else f"{r['lap_completion']:.2f}"
        ret = "n/a" if r["mean_return"] is None else f"{r['mean_return']:.1f}"
        print(f"| {r['policy']} | {r['wall_s']:.1f} | {r['steps_per_s']:.0f} | {r['peak_rss_mib']:.0f} | {lap} | {ret} | "
              f"{r['expert_load'] or '-'} |")


if __name__ == "__main__":
    main()
