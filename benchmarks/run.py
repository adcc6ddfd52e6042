"""The side-by-side suite: our PPO and Stable-Baselines3's on the same configs, as whole processes.

    python benchmarks/run.py [--quick] [--seeds 0 1 2] [--tasks cartpole acrobot pendulum deepracer text]
                             [--out DIR]

Each gym run is one ``rlhf train CONFIG [overrides]`` process (one torch thread each), timed from
interpreter start to exit: imports, env creation, training and the final checkpoint. Three engines per
task, alternating seed by seed (the order rotates with the seed):

- ``rlhf``: ours with ``env.vectorization=auto`` (the env's native batched VectorEnv where it has one,
  else gymnasium's SyncVectorEnv; the table names the env each engine stepped);
- ``rlhf-sync``: ours with ``env.vectorization=sync``, one env at a time as SB3's DummyVecEnv steps them,
  so the gain from the env and the gain from the learner can be told apart;
- ``sb3``: Stable-Baselines3's PPO (``backend=sb3``) over its DummyVecEnv.

Then ``rlhf eval RUN --json`` (10 deterministic episodes) gives the final return. Also measured: the peak
resident memory of each training process, the env-only time of each engine's vector env (stepped alone
with pre-drawn random actions for the same number of steps: the bound no trainer over that env can beat),
and the start-up time (interpreter + the imports of ``rlhf train``, run as the command runs them).

``text``: ``rlhf train configs/text_rlhf.yaml`` (SFT -> reward model -> PPO) as a whole process per seed,
then ``rlhf eval RUN --json`` (win rate against the SFT policy, gold score); PPO samples/s and tokens/s
of that run from its own iteration timings; and generation tokens/s plus PPO samples/s from
``benchmarks/text_rlhf.py``. SB3 has no text pipeline; the TRL comparison is ``benchmarks/trl_rloo.py``.

With ``cartpole``: one PPO gradient step's FLOPs, the run's matmul work timed at this CPU's throughput at
those shapes (``benchmarks/flop_bound.py``), set against the measured whole process.

Writes ``results.md`` and ``results.png`` (return against wall time, first seed) into ``--out``
(default ``benchmarks/``). ``--quick`` runs one seed at a quarter of the steps and a shrunken text
pipeline: a smoke test of the suite, not a result; it writes nothing unless ``--out`` names a directory
(not ``benchmarks/``).
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
CONFIGS = ROOT / "configs"

# runs the `rlhf` CLI in this process, then prints its peak RSS (KiB on Linux) as the last stderr line
_WRAPPER = ("import atexit, resource, sys; from rlhf.cli import entry; "
            "atexit.register(lambda: print('maxrss_kib', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "
            "file=sys.stderr)); entry()")
# steps one engine's vector env alone with pre-drawn random actions; prints {"seconds", "env"}
_ENV_ONLY = """
import json, sys, time
import numpy as np
from rlhf.config import load_config
config, steps, kind, overrides = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
if kind == "sb3":
    from rlhf.backends.sb3 import make_env
    envs = make_env(load_config(config, overrides), None)
    envs.seed(0)
    envs.reset()
    envs.action_space.seed(0)
    actions = [np.stack([envs.action_space.sample() for _ in range(envs.num_envs)]) for _ in range(64)]
else:
    from rlhf.vec_env import make_vec_env
    envs = make_vec_env(load_config(config, [*overrides, "env.vectorization=" + kind]).env)
    envs.reset(seed=0)
    envs.action_space.seed(0)
    actions = [envs.action_space.sample() for _ in range(64)]
n, done, t0 = envs.num_envs, 0, time.perf_counter()
while done < steps:
    envs.step(actions[(done // n) % 64])
    done += n
print(json.dumps({"seconds": time.perf_counter() - t0, "env": type(envs).__name__}))
"""
# what a process imports before it trains (measured as whole `python -c` processes)
# the `rlhf` command imports with the garbage collector off and freezes what the imports made (rlhf.cli.entry)
STARTUP = {"python": "pass", "import torch": "import torch",
           "rlhf train (ours)": "import gc; gc.disable(); import rlhf.cli, rlhf.config, rlhf.trainer; gc.freeze()",
           "rlhf train backend=sb3": "import gc; gc.disable(); import rlhf.cli, rlhf.config, rlhf.backends.sb3; "
                                     "gc.freeze()"}


@dataclass
class Task:
    name: str
    config: str
    steps: int
    overrides: list[str] = field(default_factory=list)  # applied to every engine: settings SB3 can express


TASKS = {
    "cartpole": Task("CartPole-v1", "cartpole.yaml", 100_000),
    "acrobot": Task("Acrobot-v1", "acrobot.yaml", 200_000),
    "pendulum": Task("Pendulum-v1", "pendulum.yaml", 300_000, ["ppo.normalize_reward=false"]),
    "deepracer": Task("DeepRacer-v0", "deepracer.yaml", 400_000,
                      ["ppo.loss_type=mse", "ppo.num_episodes_between_training=null", "ppo.n_steps=256"]),
}
ENGINES = {"rlhf": ["env.vectorization=auto"], "rlhf-sync": ["env.vectorization=sync"], "sb3": ["backend=sb3"]}
ENGINE_ENV = {"rlhf": "auto", "rlhf-sync": "sync", "sb3": "sb3"}  # the env-only measurement bounding each engine
COLORS = {"rlhf": "tab:blue", "rlhf-sync": "tab:cyan", "sb3": "tab:orange"}

TEXT_CONFIG = "text_rlhf.yaml"
# --quick: the same model, far fewer SFT / reward-model steps and PPO updates (about a minute)
TEXT_QUICK = ["text.sft.steps=100", "text.reward_model.pairs=2240", "text.reward_model.val_pairs=500",
              "text.reward_model.steps=30", "text.updates=4"]
TEXT_EVAL_PROMPTS_QUICK = 64


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


@dataclass
class TextRun:
    seed: int
    wall_s: float
    rss_mib: float
    ppo_start_s: float  # SFT and reward-model stages (and start-up) done
    ppo_s: float  # sum of the PPO iterations' own timings
    ppo_samples: int
    ppo_tokens: int
    eval: dict


def rlhf_train(config: Path, overrides: list[str], run_dir: Path, what: str) -> tuple[float, float, float]:
    """(wall seconds, peak RSS MiB, epoch time of the start) of one ``rlhf train`` process."""
    cmd = [sys.executable, "-c", _WRAPPER, "train", str(config), *overrides, "logging.progress_bar=false",
           "--run-dir", str(run_dir)]
    start = time.time()
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{what} failed:\n{done.stderr[-3000:]}")
    return wall, int(done.stderr.strip().splitlines()[-1].split()[-1]) / 1024, start


def rlhf_eval(run_dir: Path, *args: str) -> dict:
    ev = subprocess.run([sys.executable, "-m", "rlhf", "eval", str(run_dir), "--json", *args],
                        capture_output=True, text=True, cwd=ROOT)
    if ev.returncode != 0:
        raise SystemExit(f"eval of {run_dir} failed:\n{ev.stderr[-3000:]}")
    return json.loads(ev.stdout)


def train_and_eval(task: Task, engine: str, seed: int, steps: int, workdir: Path) -> Run:
    run_dir = workdir / f"{task.name}-{engine}-{seed}"
    wall, rss, start = rlhf_train(CONFIGS / task.config,
                                  [*task.overrides, *ENGINES[engine], f"seed={seed}", f"total_timesteps={steps}"],
                                  run_dir, f"{task.name} {engine} seed {seed}")
    result = rlhf_eval(run_dir, "--episodes", "10")
    curve = [(e.wall_time - start, e.value) for e in _events(run_dir, "rollout/ep_rew_mean")]
    return Run(task.name, engine, seed, wall, rss, result["mean_return"], result.get("lap_completion_rate"), curve)


def _events(run_dir: Path, tag: str) -> list:
    """The TensorBoard scalar events (wall_time, step, value) of ``tag`` in the run; [] if never logged."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return acc.Scalars(tag) if tag in acc.Tags()["scalars"] else []


def env_only(task: Task, steps: int, kind: str) -> tuple[float, str]:
    """(seconds, vector env class) of ``steps`` random-action steps of the env kind ``kind`` (auto|sync|sb3)."""
    out = subprocess.run([sys.executable, "-c", _ENV_ONLY, str(CONFIGS / task.config), str(steps), kind,
                          *task.overrides], capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        raise SystemExit(f"env-only {task.name} ({kind}) failed:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return result["seconds"], result["env"]


def startup_seconds(repeats: int) -> dict[str, float]:
    """Median wall time of ``python -c CODE`` per entry of STARTUP (after one untimed warm-up run each)."""
    out = {}
    for name, code in STARTUP.items():
        times = []
        for i in range(repeats + 1):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True)
            if i:
                times.append(time.perf_counter() - t0)
        out[name] = statistics.median(times)
    return out


# ----------------------------------------------------------------------------- text pipeline

def text_run(seed: int, quick: bool, workdir: Path) -> TextRun:
    from rlhf.config import load_config

    overrides = [*(TEXT_QUICK if quick else []), f"seed={seed}"]
    run_dir = workdir / f"text-{seed}"
    wall, rss, start = rlhf_train(CONFIGS / TEXT_CONFIG, overrides, run_dir, f"text seed {seed}")
    result = rlhf_eval(run_dir, *(["--prompts", str(TEXT_EVAL_PROMPTS_QUICK)] if quick else []))
    iterations = _events(run_dir, "time/iteration_seconds")  # one per PPO update; step = response tokens so far
    if not iterations:
        raise SystemExit(f"text seed {seed}: no time/iteration_seconds in {run_dir}")
    t = load_config(CONFIGS / TEXT_CONFIG, overrides).text
    return TextRun(seed, wall, rss, ppo_start_s=iterations[0].wall_time - iterations[0].value - start,
                   ppo_s=sum(e.value for e in iterations),
                   ppo_samples=len(iterations) * t.prompts_per_update * t.num_generations,
                   ppo_tokens=int(iterations[-1].step), eval=result)


def text_throughput(quick: bool) -> dict:
    """Generation tokens/s (KV cache and full forward) and PPO samples/s printed by benchmarks/text_rlhf.py."""
    out = subprocess.run([sys.executable, str(BENCH / "text_rlhf.py"), "--updates", "2" if quick else "10"],
                         capture_output=True, text=True, cwd=ROOT)
    patterns = {"setup": r"^text RLHF, .*?, 1 thread, (.*)$",
                "cached": r"^\| KV cache \| ([\d,.]+) \|",
                "uncached": r"^\| no cache [^|]*\| ([\d,.]+) \|",
                "ppo": r"^PPO \((.*)\): ([\d.]+) samples/s"}
    found = {key: re.search(pattern, out.stdout, re.M) for key, pattern in patterns.items()}
    if out.returncode != 0 or not all(found.values()):
        raise SystemExit("benchmarks/text_rlhf.py failed or printed an unexpected format:\n"
                         f"{out.stdout}\n{out.stderr[-3000:]}")
    number = lambda s: float(s.replace(",", ""))  # noqa: E731
    return {"setup": found["setup"][1], "cached": number(found["cached"][1]),
            "uncached": number(found["uncached"][1]), "ppo_setup": found["ppo"][1],
            "ppo_samples_s": number(found["ppo"][2])}


# ----------------------------------------------------------------------------- CartPole's compute bound

def flop_bound(task: Task, steps: int, quick: bool) -> dict:
    cmd = [sys.executable, str(BENCH / "flop_bound.py"), str(CONFIGS / task.config), *task.overrides,
           "--steps", str(steps), "--json", *(["--quick"] if quick else [])]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        raise SystemExit(f"benchmarks/flop_bound.py failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout)


def bound_section(bound: dict, runs: list[Run], env_s: dict, startup: dict[str, float]) -> str:
    import flop_bound

    lines = [f"## {bound['env']}: distance from the compute bound", "",
             "Computed by `benchmarks/flop_bound.py` from the config and the env's spaces (matmuls only; bias, "
             "activations, loss and Adam are O(batch x width) and left out, so this is a lower bound). Each "
             "shape's throughput is timed as torch calls from Python, so per-call dispatch is inside the bound, "
             "as it is inside any trainer built on these kernels.", "",
             flop_bound.report(bound), "",
             "Start-up: whole `python -c CODE` processes (median; the imports a `rlhf train` process makes before "
             "it builds anything):", "",
             "| start-up | CODE | s |", "|---|---|---|"]
    lines += [f"| {name} | `{STARTUP[name]}` | {s:.2f} |" for name, s in startup.items()]
    lines += ["", "| engine | whole process s (median) | start-up s | env-only s | matmul bound s | floor s "
              "(sum) | whole / floor | above the floor s |", "|---|---|---|---|---|---|---|---|"]
    for engine in ENGINES:
        walls = [r.wall_s for r in runs if r.task == bound["env"] and r.engine == engine]
        if not walls:
            continue
        wall = statistics.median(walls)
        start = startup["rlhf train backend=sb3" if engine == "sb3" else "rlhf train (ours)"]
        env = env_s[(bound["env"], ENGINE_ENV[engine])][0]
        floor = start + env + bound["bound_s"]
        lines.append(f"| {engine} | {wall:.1f} | {start:.2f} | {env:.2f} | {bound['bound_s']:.2f} | {floor:.2f} | "
                     f"{wall / floor:.1f}x | {wall - floor:.1f} |")
    ours = [r.wall_s for r in runs if r.task == bound["env"] and r.engine == "rlhf"]
    if ours:
        wall = statistics.median(ours)
        start = startup["rlhf train (ours)"]
        loop = wall - start
        lines += ["", f"Our whole process takes {wall:.1f} s: {start:.2f} s of start-up before any training, "
                  f"{loop:.1f} s after it, of which {env_s[(bound['env'], 'auto')][0]:.2f} s is the env and "
                  f"{bound['bound_s']:.2f} s the matmuls at this CPU's rates for these shapes; the remaining "
                  f"{loop - env_s[(bound['env'], 'auto')][0] - bound['bound_s']:.1f} s "
                  "is Python, autograd, the optimizer, env creation, logging and the checkpoint around them. Over "
                  f"the time after start-up the run's {bound['flops'] / 1e9:.1f} GFLOP of matmuls average "
                  f"{bound['flops'] / 1e9 / loop:.1f} GFLOP/s, against {bound['peak_gflops']:.0f} GFLOP/s for a "
                  "large matmul on one thread. SB3 does at least the same matmul work (its rollout also runs the "
                  "critic at every step), so the same bound holds for it."]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- report

def _versions() -> str:
    from importlib.metadata import version

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), None) if Path("/proc/cpuinfo").exists() else None
    import platform

    return (f"torch {version('torch')}, stable-baselines3 {version('stable-baselines3')}, gymnasium "
            f"{version('gymnasium')}, Python {platform.python_version()}, CPU {cpu or platform.processor() or '?'}")


def _mean_sd(xs: list[float], fmt: str = ".1f") -> str:
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{statistics.mean(xs):{fmt}} ± {sd:{fmt}}"


def gym_table(runs: list[Run], env_s: dict, steps: dict[str, int]) -> list[str]:
    lines = ["## Gym tasks", "",
             "Engines: `rlhf` = ours with `env.vectorization=auto` (the env's native batched VectorEnv where it has "
             "one), `rlhf-sync` = ours over gymnasium's SyncVectorEnv (one env at a time, like SB3's DummyVecEnv), "
             "`sb3` = Stable-Baselines3's PPO (`backend=sb3`) over DummyVecEnv. *SB3 / this* = SB3's median whole "
             "process time over this engine's. *env-only* = this engine's vector env stepped alone for the same "
             "steps with pre-drawn random actions: the bound no trainer over that env can beat, up to how often "
             "episodes end and reset under random play rather than under the learning policy.", "",
             "| task | steps | engine | vector env | whole process s (median) | SB3 / this | final return (mean ± sd "
             "over seeds) | lap completion | peak RSS MiB | env-only s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for task in dict.fromkeys(r.task for r in runs):
        walls = {e: statistics.median(r.wall_s for r in runs if r.task == task and r.engine == e) for e in ENGINES}
        for engine in ENGINES:
            rs = [r for r in runs if r.task == task and r.engine == engine]
            laps = [r.lap_completion for r in rs if r.lap_completion is not None]
            env_seconds, env_name = env_s[(task, ENGINE_ENV[engine])]
            lines.append(f"| {task} | {steps[task]:,} | {engine} | {env_name} | {walls[engine]:.1f} | "
                         f"{walls['sb3'] / walls[engine]:.2f}x | {_mean_sd([r.final_return for r in rs])} | "
                         f"{f'{statistics.mean(laps):.2f}' if laps else '-'} | {max(r.rss_mib for r in rs):.0f} | "
                         f"{env_seconds:.1f} |")
    return lines


def text_table(text_runs: list[TextRun], tp: dict | None, quick: bool) -> list[str]:
    cmd = " ".join(["rlhf train configs/text_rlhf.yaml", *(TEXT_QUICK if quick else [])])
    prompts = text_runs[0].eval.get("prompts") if text_runs else None
    lines = ["## Text RLHF (ours; SB3 has no text pipeline)", ""]
    if text_runs:
        rs = text_runs
        lines += [f"`{cmd} seed=S` (SFT -> reward model -> PPO) as a whole process per seed, then `rlhf eval RUN "
                  f"--json` on {prompts} held-out prompts. PPO samples/s and response tokens/s are over the PPO "
                  "stage's own iteration timings (generate, score, update), with the run's trained SFT policy.", "",
                  "| seeds | whole process s (median) | until PPO starts s (SFT, reward model) | PPO stage s | "
                  "PPO samples/s | PPO response tokens/s | peak RSS MiB | win rate vs SFT | gold score PPO | "
                  "gold score SFT | KL to SFT |", "|---|---|---|---|---|---|---|---|---|---|---|",
                  f"| {', '.join(str(r.seed) for r in rs)} | {statistics.median(r.wall_s for r in rs):.1f} | "
                  f"{statistics.median(r.ppo_start_s for r in rs):.1f} | "
                  f"{statistics.median(r.ppo_s for r in rs):.1f} | "
                  f"{statistics.median(r.ppo_samples / r.ppo_s for r in rs):.1f} | "
                  f"{statistics.median(r.ppo_tokens / r.ppo_s for r in rs):,.0f} | {max(r.rss_mib for r in rs):.0f} | "
                  f"{_mean_sd([r.eval['win_rate_vs_sft'] for r in rs], '.3f')} | "
                  f"{_mean_sd([r.eval['gold_score'] for r in rs], '.2f')} | "
                  f"{_mean_sd([r.eval['sft_gold_score'] for r in rs], '.2f')} | "
                  f"{_mean_sd([r.eval['kl_to_ref'] for r in rs], '.2f')} |", ""]
    if tp:
        lines += [f"`python benchmarks/text_rlhf.py --updates {2 if quick else 10}`: {tp['setup']}; a fresh model "
                  "stands in for the SFT policy and rarely emits EOS, so every response runs the full length (the "
                  "worst case for both generation paths).", "",
                  "| measurement | rate |", "|---|---|",
                  f"| generation, KV cache | {tp['cached']:,.0f} tokens/s |",
                  f"| generation, full forward per token | {tp['uncached']:,.0f} tokens/s |",
                  f"| PPO ({tp['ppo_setup']}) | {tp['ppo_samples_s']:.1f} samples/s |", ""]
    lines.append("The side-by-side with TRL (RLOO) is a separate script, `benchmarks/trl_rloo.py`; this suite does "
                 "not run it.")
    return lines


def summarise(command: str, quick: bool, runs: list[Run], env_s: dict, steps: dict[str, int],
              text_runs: list[TextRun], tp: dict | None, bound: dict | None, startup: dict | None) -> str:
    lines = ["# Side-by-side: rlhf vs Stable-Baselines3", "",
             f"`{command}` — {_versions()}; one torch thread per process, whole processes (interpreter start to "
             "exit, final checkpoint included), final return = 10 deterministic evaluation episodes per seed.", ""]
    if quick:
        lines += ["**`--quick`: one seed, a quarter of the steps, a shrunken text pipeline. A smoke test of the "
                  "suite, not a result.**", ""]
    if runs:
        lines += [*gym_table(runs, env_s, steps), ""]
    if text_runs or tp:
        lines += [*text_table(text_runs, tp, quick), ""]
    if bound is not None and startup is not None:
        lines += [bound_section(bound, runs, env_s, startup), ""]
    return "\n".join(lines)


def plot(runs: list[Run], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(r.task for r in runs))
    first_seed = min(r.seed for r in runs)
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.5 * len(tasks), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for engine in ENGINES:
            for r in runs:
                if r.task == task and r.engine == engine and r.seed == first_seed and r.curve:
                    xs, ys = zip(*r.curve)
                    ax.plot(xs, ys, label=engine, color=COLORS[engine])
        ax.set_title(f"{task} (seed {first_seed})")
        ax.set_xlabel("seconds since process start")
        ax.set_ylabel("rollout/ep_rew_mean")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one seed, a quarter of the steps, a small text run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--tasks", nargs="+", choices=[*TASKS, "text"], default=[*TASKS, "text"])
    parser.add_argument("--out", type=Path, help="where results.md and results.png go (default benchmarks/; "
                        "--quick writes only when this is given)")
    args = parser.parse_args()
    out = args.out if args.quick else (args.out or BENCH)
    if args.quick and out is not None and out.resolve() == BENCH.resolve():
        parser.error("--quick results are a smoke test: give --out another directory than benchmarks/")
    seeds = args.seeds[:1] if args.quick else args.seeds
    gym_keys = [k for k in args.tasks if k in TASKS]
    steps = {TASKS[k].name: TASKS[k].steps // (4 if args.quick else 1) for k in gym_keys}
    command = " ".join(["python benchmarks/run.py", *(["--quick"] if args.quick else []),
                        "--seeds", *map(str, seeds),
                        *(["--tasks", *args.tasks] if set(args.tasks) != {*TASKS, "text"} else [])])
    runs: list[Run] = []
    env_s: dict[tuple[str, str], tuple[float, str]] = {}
    text_runs: list[TextRun] = []
    tp = bound = startup = None
    with tempfile.TemporaryDirectory(prefix="rlhf-bench-") as tmp:
        if gym_keys:
            startup = startup_seconds(2 if args.quick else 5)
            print("start-up: " + ", ".join(f"{k} {v:.2f} s" for k, v in startup.items()), flush=True)
        for key in gym_keys:
            task = TASKS[key]
            for kind in dict.fromkeys(ENGINE_ENV.values()):
                env_s[(task.name, kind)] = env_only(task, steps[task.name], kind)
                print(f"{task.name:<14} env-only {kind:<5}: {env_s[(task.name, kind)][0]:6.1f} s "
                      f"({env_s[(task.name, kind)][1]})", flush=True)
            engines = list(ENGINES)
            for i, seed in enumerate(seeds):
                for engine in engines[i % len(engines):] + engines[:i % len(engines)]:
                    run = train_and_eval(task, engine, seed, steps[task.name], Path(tmp))
                    print(f"{task.name:<14} {engine:<9} seed {seed}: {run.wall_s:6.1f} s, return "
                          f"{run.final_return:8.1f}, peak RSS {run.rss_mib:.0f} MiB", flush=True)
                    runs.append(run)
        if "cartpole" in gym_keys:
            bound = flop_bound(TASKS["cartpole"], steps["CartPole-v1"], args.quick)
            print(f"CartPole-v1 matmul bound: {bound['flops'] / 1e9:.1f} GFLOP, {bound['bound_s']:.2f} s", flush=True)
        if "text" in args.tasks:
            tp = text_throughput(args.quick)
            print(f"text generation {tp['cached']:,.0f} tokens/s (KV cache), PPO {tp['ppo_samples_s']:.1f} samples/s "
                  "(benchmarks/text_rlhf.py)", flush=True)
            for seed in seeds:
                tr = text_run(seed, args.quick, Path(tmp))
                print(f"text seed {seed}: {tr.wall_s:6.1f} s (PPO from {tr.ppo_start_s:.1f} s), win rate vs SFT "
                      f"{tr.eval['win_rate_vs_sft']:.3f}, gold {tr.eval['gold_score']:.2f} (SFT "
                      f"{tr.eval['sft_gold_score']:.2f}), peak RSS {tr.rss_mib:.0f} MiB", flush=True)
                text_runs.append(tr)
    report = summarise(command, args.quick, runs, env_s, steps, text_runs, tp, bound, startup)
    print(report)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.md").write_text(report)
        written = [out / "results.md"]
        if runs:
            plot(runs, out / "results.png")
            written.append(out / "results.png")
        print("wrote " + " and ".join(map(str, written)))


if __name__ == "__main__":
    main()
