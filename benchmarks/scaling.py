"""How training cost grows with the number of envs and the network width, ours against Stable-Baselines3.

    python benchmarks/scaling.py [--steps 30000]     # prints the table and writes benchmarks/scaling.md

CartPole-v1 with configs/cartpole.yaml's settings, one torch thread, in-loop steps/s (the ``train`` /
``learn`` call alone), one seed. Rows vary ``env.num_envs`` (1 to 256, with ``n_steps`` chosen so that
each update sees about 256 samples and minibatches stay 256) and then ``policy.hidden_sizes`` (64 to
512 units, 8 envs). SB3 runs the same config through ``backend=sb3``, so both engines read the same
hyperparameters.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def steps_per_second(overrides: list[str], steps: int, backend: str) -> float:
    from rlhf.cli import _trainer
    from rlhf.config import load_config

    cfg = load_config(ROOT / "configs" / "cartpole.yaml",
                      [*overrides, f"total_timesteps={steps}", f"backend={backend}", "logging.tensorboard=false",
                       "logging.progress_bar=false", "checkpoint.every=0", "env.vectorization=sync"])
    with tempfile.TemporaryDirectory() as tmp:
        trainer = _trainer(cfg)(cfg, Path(tmp) / "run")
        t0 = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - t0
    torch.set_num_threads(1)
    return steps / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=30_000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for n in (1, 8, 64, 256):
        rows.append((f"num_envs {n}", [f"env.num_envs={n}", f"ppo.n_steps={max(256 // n, 1)}"]))
    for width in (64, 128, 256, 512):
        rows.append((f"hidden [{width}, {width}]", [f"policy.hidden_sizes=[{width},{width}]"]))
    lines = [f"`python benchmarks/scaling.py --steps {args.steps}`: CartPole-v1, sync vector env for both, "
             f"torch {torch.__version__}, 1 thread, in-loop steps/s", "",
             "| setting | rlhf steps/s | SB3 steps/s | rlhf / SB3 |", "|---|---|---|---|"]
    for name, overrides in rows:
        ours = steps_per_second(overrides, args.steps, "rlhf")
        sb3 = steps_per_second(overrides, args.steps, "sb3")
        lines.append(f"| {name} | {ours:,.0f} | {sb3:,.0f} | {ours / sb3:.2f}x |")
        print(lines[-1], flush=True)
    (ROOT / "benchmarks" / "scaling.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
