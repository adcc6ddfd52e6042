"""CartPole-v1: Stable-Baselines3's PPO and ours, same hyperparameters and seeds, in one run.

    python benchmarks/cartpole_vs_sb3.py [--seeds 0 1 2] [--steps 100000]

Both use one torch thread and rl-zoo's tuned settings (configs/cartpole.yaml). Steps/s is measured
over the whole ``learn``/``train`` call (collection + updates); final return is the mean of 10
evaluation episodes with the most likely action. Ours runs with gymnasium's numpy-batched CartPole
(``vectorization: native``, our default for envs that have one) and with ``sync`` like SB3's
DummyVecEnv, so the gain from the env and from the learner can be told apart. The collect and update
columns are milliseconds per iteration (32 x 8 env steps, then 20 epochs over them) inside that run.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


class PhaseTimer:
    """Wraps bound methods to add up the wall time spent in each phase of a run."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.iterations = 0

    def wrap(self, name: str, fn, counts_iterations: bool = False):
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0
                self.iterations += counts_iterations
        return timed

    def ms_per_iteration(self, name: str) -> float:
        return 1e3 * self.seconds[name] / max(self.iterations, 1)


def run_sb3(seed: int, steps: int) -> tuple[float, float, PhaseTimer]:
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.evaluation import evaluate_policy
    from stable_baselines3.common.utils import get_linear_fn

    env = make_vec_env("CartPole-v1", n_envs=8, seed=seed)
    model = PPO("MlpPolicy", env, n_steps=32, batch_size=256, n_epochs=20, gamma=0.98, gae_lambda=0.8,
                ent_coef=0.0, learning_rate=get_linear_fn(1e-3, 0.0, 1.0), clip_range=get_linear_fn(0.2, 0.0, 1.0),
                seed=seed, device="cpu", verbose=0)
    timer = PhaseTimer()
    model.collect_rollouts = timer.wrap("collect", model.collect_rollouts)
    model.train = timer.wrap("update", model.train, counts_iterations=True)
    t0 = time.perf_counter()
    model.learn(steps)
    fps = model.num_timesteps / (time.perf_counter() - t0)
    mean, _ = evaluate_policy(model, make_vec_env("CartPole-v1", n_envs=1, seed=seed + 10_000), n_eval_episodes=10)
    return fps, float(mean), timer


def run_ours(seed: int, steps: int, vectorization: str) -> tuple[float, float, PhaseTimer]:
    from rlhf.config import load_config
    from rlhf.evaluate import run_episodes
    from rlhf.trainer import Trainer

    cfg = load_config(ROOT / "configs" / "cartpole.yaml",
                      [f"seed={seed}", f"total_timesteps={steps}", f"env.vectorization={vectorization}",
                       "logging.tensorboard=false", "logging.progress_bar=false", "checkpoint.every=0"])
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, tmp)
        timer = PhaseTimer()  # collect = stepping + scoring + GAE (as in SB3's collect_rollouts); update = the rest
        trainer.collect = timer.wrap("collect", trainer.collect)
        trainer.relabel = timer.wrap("collect", trainer.relabel)
        trainer.iteration = timer.wrap("iteration", trainer.iteration, counts_iterations=True)
        t0 = time.perf_counter()
        trainer.train()
        fps = trainer.global_step / (time.perf_counter() - t0)
        timer.seconds["update"] = timer.seconds["iteration"] - timer.seconds["collect"]
    result = run_episodes(trainer.policy, cfg, episodes=10, deterministic=True)
    return fps, result["mean_return"], timer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=100_000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = {"stable-baselines3": [], "rlhf (native)": [], "rlhf (sync)": []}
    for seed in args.seeds:
        rows["stable-baselines3"].append(run_sb3(seed, args.steps))
        rows["rlhf (native)"].append(run_ours(seed, args.steps, "native"))
        rows["rlhf (sync)"].append(run_ours(seed, args.steps, "sync"))
        torch.set_num_threads(1)
    base = statistics.mean(f for f, _, _ in rows["stable-baselines3"])
    print(f"CartPole-v1, {args.steps} steps, seeds {args.seeds}, torch {torch.__version__}, 1 thread")
    print(f"| {'library':<18} | {'steps/s':>8} | {'vs SB3':>6} | {'collect ms/it':>13} | {'update ms/it':>12} "
          f"| {'final return per seed':<28} |")
    print(f"|{'-' * 20}|{'-' * 10}|{'-' * 8}|{'-' * 15}|{'-' * 14}|{'-' * 30}|")
    for name, results in rows.items():
        fps = statistics.mean(f for f, _, _ in results)
        collect, update = (statistics.mean(t.ms_per_iteration(phase) for _, _, t in results)
                           for phase in ("collect", "update"))
        rets = ", ".join(f"{r:.0f}" for _, r, _ in results)
        print(f"| {name:<18} | {fps:>8.0f} | {fps / base:>5.2f}x | {collect:>13.1f} | {update:>12.1f} | {rets:<28} |")


if __name__ == "__main__":
    main()
