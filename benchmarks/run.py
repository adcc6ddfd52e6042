"""The side-by-side suite: our PPO and Stable-Baselines3's on the same configs, as whole processes.

    python benchmarks/run.py [--quick] [--seeds 0 1 2] [--tasks cartpole acrobot ...]

Each run is one ``rlhf train CONFIG [backend=sb3]`` process (one torch thread each, alternating the two
engines seed by seed), timed from interpreter start to exit: imports, env creation, training and the
final checkpoint. Then ``rlhf eval RUN --json`` (10 deterministic episodes) gives the final return.
Also measured: the peak resident memory of each training process, and the env-only time of each task
(the same vector env stepped with random actions for the same number of steps: the bound no trainer
can beat). Writes ``benchmarks/results.md`` and ``benchmarks/results.png`` (return against wall time,
seed 0). ``--quick`` runs one seed at a quarter of the steps (a smoke test of the suite, not a result).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"

# runs the `rlhf` CLI in this process, then prints its peak RSS (KiB on Linux) as the last stderr line
_WRAPPER = ("import resource, sys; from rlhf.cli import main; code = main(sys.argv[1:]); "
            "print('maxrss_kib', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr); "
            "sys.exit(code)")
_ENV_ONLY = """
import sys, time
import numpy as np
from rlhf.config import load_config
from rlhf.vec_env import make_vec_env
cfg = load_config(sys.argv[1], sys.argv[3:])
envs = make_vec_env(cfg.env)
envs.reset(seed=0)
envs.action_space.seed(0)
steps, t0 = 0, time.perf_counter()
while steps < int(sys.argv[2]):
    envs.step(envs.action_space.sample())
    steps += envs.num_envs
print(time.perf_counter() - t0)
"""


@dataclass
class Task:
    name: str
    config: str
    steps: int
    overrides: list[str] = field(default_factory=list)  # applied to both engines: settings SB3 can express


TASKS = {
    "cartpole": Task("CartPole-v1", "cartpole.yaml", 100_000),
    "acrobot": Task("Acrobot-v1", "acrobot.yaml", 200_000),
    "pendulum": Task("Pendulum-v1", "pendulum.yaml", 300_000, ["ppo.normalize_reward=false"]),
    "deepracer": Task("DeepRacer-v0", "deepracer.yaml", 400_000,
                      ["ppo.loss_type=mse", "ppo.num_episodes_between_training=null", "ppo.n_steps=256"]),
}
ENGINES = {"rlhf": [], "sb3": ["backend=sb3"]}


@dataclass
class Run:
    task: str
    engine: str
    seed: int
    wall_s: float
    rss_mib: float
    final_return: float
    lap_completion: float | None
    curve: list[tuple[float, float]]  # (seconds since process start, rollout/ep_rew_mean)


def train_and_eval(task: Task, engine: str, seed: int, steps: int, workdir: Path) -> Run:
    run_dir = workdir / f"{task.name}-{engine}-{seed}"
    cmd = [sys.executable, "-c", _WRAPPER, "train", str(CONFIGS / task.config), *task.overrides, *ENGINES[engine],
           f"seed={seed}", f"total_timesteps={steps}", "logging.progress_bar=false", "--run-dir", str(run_dir)]
    start = time.time()
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{task.name} {engine} seed {seed} failed:\n{done.stderr[-3000:]}")
    rss = int(done.stderr.strip().splitlines()[-1].split()[-1]) / 1024
    ev = subprocess.run([sys.executable, "-m", "rlhf", "eval", str(run_dir), "--json", "--episodes", "10"],
                        capture_output=True, text=True, cwd=ROOT)
    if ev.returncode != 0:
        raise SystemExit(f"eval of {run_dir} failed:\n{ev.stderr[-3000:]}")
    result = json.loads(ev.stdout)
    return Run(task.name, engine, seed, wall, rss, result["mean_return"], result.get("lap_completion_rate"),
               _curve(run_dir, start))


def _curve(run_dir: Path, start: float) -> list[tuple[float, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    if "rollout/ep_rew_mean" not in acc.Tags()["scalars"]:
        return []
    return [(e.wall_time - start, e.value) for e in acc.Scalars("rollout/ep_rew_mean")]


def env_only_seconds(task: Task, steps: int) -> float:
    out = subprocess.run([sys.executable, "-c", _ENV_ONLY, str(CONFIGS / task.config), str(steps), *task.overrides],
                         capture_output=True, text=True, cwd=ROOT, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def summarise(runs: list[Run], env_only: dict[str, float], steps: dict[str, int], seeds: list[int]) -> str:
    import torch

    lines = ["# Side-by-side: rlhf vs Stable-Baselines3", "",
             f"`python benchmarks/run.py --seeds {' '.join(map(str, seeds))}` — torch {torch.__version__}, one torch "
             "thread per process, whole processes (interpreter start to exit, final checkpoint included), "
             "final return = 10 deterministic evaluation episodes per seed.", "",
             "| task | steps | engine | whole process s (median) | SB3 / rlhf | final return (mean ± sd over seeds) "
             "| lap completion | peak RSS MiB | env-only s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for task in dict.fromkeys(r.task for r in runs):
        walls = {e: statistics.median(r.wall_s for r in runs if r.task == task and r.engine == e) for e in ENGINES}
        for engine in ENGINES:
            rs = [r for r in runs if r.task == task and r.engine == engine]
            rets = [r.final_return for r in rs]
            sd = statistics.stdev(rets) if len(rets) > 1 else 0.0
            laps = [r.lap_completion for r in rs if r.lap_completion is not None]
            lap = f"{statistics.mean(laps):.2f}" if laps else "-"
            ratio = f"{walls['sb3'] / walls['rlhf']:.2f}x" if engine == "rlhf" else "1.00x"
            lines.append(f"| {task} | {steps[task]:,} | {engine} | {walls[engine]:.1f} | {ratio} | "
                         f"{statistics.mean(rets):.1f} ± {sd:.1f} | {lap} | {max(r.rss_mib for r in rs):.0f} | "
                         f"{env_only[task]:.1f} |")
    return "\n".join(lines) + "\n"


def plot(runs: list[Run], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(r.task for r in runs))
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.5 * len(tasks), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for r in runs:
            if r.task == task and r.seed == min(x.seed for x in runs) and r.curve:
                xs, ys = zip(*r.curve)
                ax.plot(xs, ys, label=r.engine)
        ax.set_title(task)
        ax.set_xlabel("seconds since process start")
        ax.set_ylabel("rollout/ep_rew_mean")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one seed, a quarter of the steps")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--tasks", nargs="+", choices=list(TASKS), default=list(TASKS))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks")
    args = parser.parse_args()
    seeds = args.seeds[:1] if args.quick else args.seeds
    steps = {TASKS[t].name: TASKS[t].steps // (4 if args.quick else 1) for t in args.tasks}
    runs, env_only = [], {}
    with tempfile.TemporaryDirectory(prefix="rlhf-bench-") as tmp:
        for key in args.tasks:
            task = TASKS[key]
            env_only[task.name] = env_only_seconds(task, steps[task.name])
            for seed in seeds:
                for engine in ENGINES:
                    run = train_and_eval(task, engine, seed, steps[task.name], Path(tmp))
                    print(f"{task.name:<14} {engine:<5} seed {seed}: {run.wall_s:6.1f} s, return {run.final_return:8.1f}, "
                          f"peak RSS {run.rss_mib:.0f} MiB", flush=True)
                    runs.append(run)
    table = summarise(runs, env_only, steps, seeds)
    print(table)
    if not args.quick:
        (args.out / "results.md").write_text(table)
        plot(runs, args.out / "results.png")
        print(f"wrote {args.out / 'results.md'} and {args.out / 'results.png'}")


if __name__ == "__main__":
    main()
