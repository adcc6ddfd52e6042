"""Precision modes side by side on CartPole-v1 (configs/cartpole.yaml): for each mode, policy forward
latency, update time, memory of the network that acts, and the final return.

    python benchmarks/precision.py [--steps 100000] [--seed 0] [--device cpu|cuda]

Forward latency is the median of 200 calls at batch 8 (a rollout step) and batch 256 (a minibatch).
Update time is the mean wall time of one PPO update (20 epochs over 256 samples) during training.
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rlhf.config import load_config  # noqa: E402
from rlhf.evaluate import run_episodes  # noqa: E402
from rlhf.precision import model_memory, quantize_model  # noqa: E402
from rlhf.trainer import Trainer  # noqa: E402

MODES = {
    "fp32": [],
    "bf16-mixed": ["precision.train=bf16-mixed"],
    "fp16-mixed": ["precision.train=fp16-mixed"],
    "rollout bf16": ["precision.rollout=bf16"],
    "rollout int8": ["precision.rollout=int8"],
    "rollout int8-outlier": ["precision.rollout=int8-outlier"],
    "rollout nf4": ["precision.rollout=nf4"],
    "qat int8": ["precision.qat=int8"],
}


def forward_ms(net, obs: torch.Tensor, autocast) -> float:
    times = []
    with torch.inference_mode(), autocast():
        for _ in range(20):
            net(obs)
        for _ in range(200):
            t0 = time.perf_counter()
            net(obs)
            if obs.is_cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    print(f"CartPole-v1, {args.steps} steps, seed {args.seed}, device {args.device}, torch {torch.__version__}")
    print("| mode | fwd b=8 (ms) | fwd b=256 (ms) | update (ms) | acting net bytes | final return |")
    print("|---|---|---|---|---|---|")
    for name, overrides in MODES.items():
        cfg = load_config(ROOT / "configs" / "cartpole.yaml",
                          [f"seed={args.seed}", f"total_timesteps={args.steps}", f"device={args.device}",
                           "logging.tensorboard=false", "logging.progress_bar=false", "checkpoint.every=0", *overrides])
        with tempfile.TemporaryDirectory() as tmp:
            trainer = Trainer(cfg, tmp)
            update_times = []
            while trainer.global_step < cfg.total_timesteps:
                update_times.append(trainer.iteration()["time/update_seconds"])
            trainer.envs.close()
        policy, actor = trainer.policy, trainer.actor
        # what would be deployed: the rollout copy, or for QAT the int8-quantized learner
        deployed = quantize_model(policy, "int8") if cfg.precision.qat else actor
        dev = torch.device(args.device)
        ctx = trainer.precision.autocast if deployed is policy else contextlib.nullcontext
        small, big = torch.randn(8, 4, device=dev), torch.randn(256, 4, device=dev)
        f8, f256 = forward_ms(deployed, small, ctx), forward_ms(deployed, big, ctx)
        mem = sum(model_memory(deployed).values())
        ret = run_episodes(deployed, cfg, 10, deterministic=True)["mean_return"]
        print(f"| {name} | {f8:.3f} | {f256:.3f} | {1000 * statistics.mean(update_times):.1f} | {mem} | {ret:.1f} |",
              flush=True)


if __name__ == "__main__":
    main()
