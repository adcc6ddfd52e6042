"""Raw DeepRacer env throughput: environment steps per second (cars x batch steps), random actions.

    python benchmarks/deepracer_env.py            # full table
    python benchmarks/deepracer_env.py --quick    # shorter runs

Measures the native batched env (``gymnasium.make_vec(..., vectorization_mode="vector_entry_point")``)
for 1 and 64 cars with each sensor, the built-in vectorised reward versus a Python reward function,
and the single env through ``gymnasium.make``. One process, one core.

Random actions end episodes quickly, so rows with per-episode work (random tracks: a new track per
episode) read lower here than in training, where episodes last hundreds of steps.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("OMP_NUM_THREADS", "1")

import gymnasium as gym  # noqa: E402

import envs  # noqa: E402,F401


def python_reward(params: dict) -> float:
    """A typical user reward: the centre-line example written as plain Python."""
    d, w = params["distance_from_center"], params["track_width"]
    return 1.0 if d <= 0.1 * w else 0.5 if d <= 0.25 * w else 0.1 if d <= 0.5 * w else 1e-3


def bench_vector(num_envs: int, seconds: float, **kwargs) -> float:
    env = gym.make_vec("DeepRacer-v0", num_envs=num_envs, vectorization_mode="vector_entry_point", **kwargs)
    env.reset(seed=0)
    actions = [env.action_space.sample() for _ in range(64)]
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for a in actions[:16]:
            env.step(a)
        steps += 16
    elapsed = time.perf_counter() - start
    env.close()
    return steps * num_envs / elapsed


def bench_single(seconds: float, **kwargs) -> float:
    env = gym.make("DeepRacer-v0", **kwargs)
    env.reset(seed=0)
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(64):
            _, _, term, trunc, _ = env.step(env.action_space.sample())
            if term or trunc:
                env.reset()
        steps += 64
    return steps / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="0.5 s per measurement instead of 2 s")
    args = ap.parse_args()
    sec = 0.5 if args.quick else 2.0
    rows = [
        ("features, built-in reward", dict()),
        ("features, python reward", dict(reward_function=python_reward)),
        ("features, continuous", dict(action_space_type="continuous")),
        ("lidar (19 rays)", dict(observation="lidar")),
        ("lidar, random tracks", dict(observation="lidar", track="random")),
        ("camera 160x120", dict(observation="camera")),
    ]
    print(f"{'configuration':32s} {'1 car':>12s} {'64 cars':>12s}   (env steps/s)")
    for name, kw in rows:
        one = bench_vector(1, sec, **kw)
        many = bench_vector(64, sec, **kw)
        print(f"{name:32s} {one:12,.0f} {many:12,.0f}", flush=True)
    print(f"{'single env via gym.make':32s} {bench_single(sec):12,.0f} {'-':>12s}")


if __name__ == "__main__":
    main()
