"""Where a PPO iteration's time goes on this CPU: one gradient step's phases against its matmul time.

    python benchmarks/step_profile.py [CONFIG] [overrides ...] [--steps N]   # default configs/cartpole.yaml

Trains a few iterations of CONFIG (one torch thread) to get a real batch and warm caches, then measures,
as CPU time of this thread (other processes on the machine barely move it):

- one gradient step, phase by phase, run exactly as ``ppo_update`` runs it: advantage whitening, the
  policy's ``evaluate_actions``, ``ppo_loss``, and ``Precision.step`` (zero-grad, backward, grad-norm
  clip, Adam);
- the same step's top-level operator calls and autograd nodes (torch profiler), and the time its
  matmuls alone take at the shapes it runs (``benchmarks/flop_bound.py``): the rest is per-call
  overhead of eager PyTorch, which no change to the arithmetic removes;
- one iteration: collection (per vector step), relabel (scoring + GAE) and the update.
"""
from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def mean_seconds(fn, n: int) -> float:
    """Mean thread CPU seconds per call of ``fn`` over ``n`` calls."""
    t0 = time.thread_time()
    for _ in range(n):
        fn()
    return (time.thread_time() - t0) / n


def step_phases(policy, optimizer, precision, batch, settings, n: int) -> dict[str, float]:
    """Mean seconds of each phase of ``ppo_update``'s gradient step on the whole ``batch`` (whitening counted
    at its share of a step: once per update when one minibatch holds the batch)."""
    from rlhf.ppo.update import auxiliary_loss, ppo_loss

    acc: dict[str, float] = collections.defaultdict(float)
    # ppo_update normalises a whole-batch minibatch's advantages once per update, not once per epoch
    share = 1.0 / settings.epochs if len(batch) <= settings.batch_size else 1.0
    for _ in range(n):
        t = time.thread_time()
        adv = settings.whiten(batch.advantages, batch.mask)
        t, acc["advantage whitening"] = time.thread_time(), acc["advantage whitening"] + share * (time.thread_time() - t)
        logp, entropy, values = policy.evaluate_actions(batch.obs, batch.actions)
        t, acc["forward (evaluate_actions)"] = time.thread_time(), acc["forward (evaluate_actions)"] + time.thread_time() - t
        loss, _ = ppo_loss(logp, entropy, values, batch, adv, settings, auxiliary_loss(policy))
        t, acc["loss (ppo_loss)"] = time.thread_time(), acc["loss (ppo_loss)"] + time.thread_time() - t
        precision.step(loss, optimizer, max_grad_norm=settings.max_grad_norm)
        acc["backward + clip + Adam (Precision.step)"] += time.thread_time() - t
    return {k: v / n for k, v in acc.items()}


def op_counts(policy, optimizer, precision, batch, settings) -> tuple[float, float]:
    """(operator calls, autograd nodes) per gradient step of whole updates (what an update does once, such
    as its statistics, at its share of a step), from the torch profiler. An operator call is an ``aten::``
    op not called by another one: the ops inside the fused MLP's node and inside backward nodes count."""
    from torch.profiler import ProfilerActivity, profile

    from rlhf.ppo.update import ppo_update

    steps = 0
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(2):
            steps += int(ppo_update(policy, optimizer, batch, settings, precision)["train/n_updates"])
    events = prof.events()
    nodes = sum(e.name.startswith("autograd::engine::evaluate_function") for e in events)
    ops = sum(e.name.startswith("aten::") and not (e.cpu_parent and e.cpu_parent.name.startswith("aten::"))
              for e in events)
    return ops / steps, nodes / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("config", nargs="?", default=str(ROOT / "configs" / "cartpole.yaml"))
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--steps", type=int, default=2000, help="gradient steps to average over")
    args = parser.parse_args()

    from benchmarks.flop_bound import measure
    from rlhf.build import ppo_settings
    from rlhf.config import load_config
    from rlhf.trainer import Trainer

    torch.set_num_threads(1)
    overrides = [*args.overrides, "logging.tensorboard=false", "logging.progress_bar=false", "checkpoint.every=0"]
    cfg = load_config(args.config, overrides)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, tmp)
        for _ in range(20):
            trainer.iteration()
        iters = 60
        collect = mean_seconds(trainer.collect, iters)
        last = trainer.collect()
        relabel = mean_seconds(lambda: trainer.relabel(last), iters)
        batch, _ = trainer.relabel(last)
        update = mean_seconds(lambda: trainer.update(batch, 0.5), iters // 3)
        if len(batch) > cfg.ppo.batch_size:
            batch = batch.index(torch.arange(cfg.ppo.batch_size))
        settings = ppo_settings(cfg.ppo, 0.5, trainer.kl_coef)
        trainer.policy.train()
        args_ = (trainer.policy, trainer.optimizer, trainer.precision, batch, settings)
        step_phases(*args_, 100)  # warm-up
        phases = step_phases(*args_, args.steps)
        ops, nodes = op_counts(*args_)
        print(f"learner: {trainer.describe_paths()}")
        trainer.close()
    bound = measure(Path(args.config), args.overrides, None, quick=True)
    step_mm = next(p for p in bound["phases"] if p["name"].startswith("update"))
    mm_us = 1e6 * step_mm["seconds"] / step_mm["calls"]
    total = sum(phases.values())
    rollout = cfg.ppo.rollout_steps
    print(f"\n{cfg.env.id}: one gradient step on a minibatch of {len(batch)} (thread CPU time, mean of {args.steps})\n")
    print("| phase | us | share |\n|---|---|---|")
    for name, s in phases.items():
        print(f"| {name} | {1e6 * s:.0f} | {s / total:.0%} |")
    print(f"| **step** | **{1e6 * total:.0f}** | |")
    print(f"\nIts matmuls alone: {mm_us:.0f} us ({step_mm['flops_per_call'] / 1e6:.2f} MFLOP at the throughput these "
          f"shapes reach); the other {1e6 * total - mm_us:.0f} us are {ops:.0f} operator calls and {nodes:.0f} "
          f"autograd nodes, about {(1e6 * total - mm_us) / (ops + nodes):.1f} us each.")
    print(f"\nOne iteration: collect {1e3 * collect:.2f} ms ({1e6 * collect / rollout:.0f} us per vector step of "
          f"{cfg.env.num_envs} envs), relabel {1e3 * relabel:.2f} ms, update {1e3 * update:.2f} ms "
          f"({cfg.ppo.epochs} epochs).")


if __name__ == "__main__":
    main()
