"""The compute bound of a gym PPO run: matmul FLOPs of its MLP actor-critic, and their time on this CPU.

    python benchmarks/flop_bound.py [CONFIG] [--steps N] [--json]     # default configs/cartpole.yaml

Counted from the config and the env's spaces, not typed in. Each ``nn.Linear`` (k inputs, n outputs) at
batch m costs 2*m*k*n FLOPs forward; backward costs the same for the weight gradient and again for the
input gradient, except in a layer that reads the observation (no gradient flows into it). So one PPO
gradient step is about three forward passes, less the first layers' input gradients. A run does:

- rollout: the actor alone at batch ``env.num_envs``, once per vector step;
- relabel: actor and critic over the rollout plus the bootstrap observation, once per iteration;
- update: ``ppo.epochs`` x minibatches gradient steps per iteration (fewer if ``ppo.target_kl`` stops
  an update early, so this is an upper bound on the work).

Bias, activations, the loss and Adam are not counted: they cost O(m*n) per layer, not O(m*k*n). The bound
times every matmul of the run at the throughput torch.mm / torch.addmm reach on this CPU at exactly that
shape (one thread, best of several repeats), so no trainer built on these kernels can run its
network arithmetic faster. The large-matrix throughput is printed for reference.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PEAK_SHAPE = 1024


@dataclass(frozen=True)
class Layer:
    k: int  # inputs
    n: int  # outputs
    reads_obs: bool  # no input gradient is computed for it


@dataclass
class Phase:
    name: str
    calls: int  # times the phase's matmuls run over the whole run
    # (kind, m, k, n) per call: fwd = x @ W.T + b, wgrad = g.T @ x, dgrad = g @ W
    matmuls: list[tuple[str, int, int, int]]
    flops_per_call: int = 0
    seconds_per_call: float = 0.0

    @property
    def flops(self) -> int:
        return self.flops_per_call * self.calls

    @property
    def seconds(self) -> float:
        return self.seconds_per_call * self.calls


def networks(obs_dim: int, n_out: int, hidden: list[int], shared: bool) -> tuple[list[Layer], list[Layer]]:
    """(layers the actor runs, layers actor and critic run together), as ``rlhf.policies.ActorCritic`` builds them."""
    sizes = [obs_dim, *hidden]
    trunk = [Layer(a, b, i == 0) for i, (a, b) in enumerate(zip(sizes, sizes[1:]))]
    head_in = sizes[-1]
    pi_head, vf_head = Layer(head_in, n_out, not hidden), Layer(head_in, 1, not hidden)
    actor = [*trunk, pi_head]
    return actor, (actor + [vf_head] if shared else actor + trunk + [vf_head])


def forward(layers: list[Layer], m: int) -> list[tuple[str, int, int, int]]:
    return [("fwd", m, layer.k, layer.n) for layer in layers]


def backward(layers: list[Layer], m: int) -> list[tuple[str, int, int, int]]:
    out = []
    for layer in layers:
        out.append(("wgrad", layer.n, m, layer.k))  # dW[n, k] = g[m, n].T @ x[m, k]
        if not layer.reads_obs:
            out.append(("dgrad", m, layer.n, layer.k))  # dx[m, k] = g[m, n] @ W[n, k]
    return out


def matmul_flops(m: int, k: int, n: int) -> int:
    return 2 * m * k * n


def run_phases(cfg, obs_dim: int, n_out: int, total_steps: int) -> tuple[list[Phase], dict]:
    """The matmuls of one training run of ``cfg`` (gym trainer, fixed-length rollouts)."""
    from rlhf.rollout import SCORE_CHUNK

    ppo = cfg.ppo
    if ppo.episodes_between_updates is not None:
        raise SystemExit("flop_bound: rollouts of a fixed number of episodes have no fixed size; set ppo.n_steps")
    actor, both = networks(obs_dim, n_out, list(cfg.policy.hidden_sizes), cfg.policy.shared)
    n_envs, t = cfg.env.num_envs, ppo.rollout_steps
    batch = t * n_envs
    iterations = math.ceil(total_steps / batch)
    sizes = [ppo.batch_size] * (batch // ppo.batch_size) + ([batch % ppo.batch_size] if batch % ppo.batch_size else [])
    scored = batch + n_envs  # the rollout and the bootstrap observation, in chunks of SCORE_CHUNK rows
    chunks = [SCORE_CHUNK] * (scored // SCORE_CHUNK) + ([scored % SCORE_CHUNK] if scored % SCORE_CHUNK else [])
    phases = [Phase("rollout: actor forward", iterations * t, forward(actor, n_envs)),
              Phase("relabel: actor + critic forward", iterations, [mm for c in chunks for mm in forward(both, c)])]
    for size in dict.fromkeys(sizes):
        phases.append(Phase(f"update: gradient step, minibatch {size}", iterations * ppo.epochs * sizes.count(size),
                            forward(both, size) + backward(both, size)))
    for p in phases:
        p.flops_per_call = sum(matmul_flops(m, k, n) for _, m, k, n in p.matmuls)
    step = sizes[0]
    info = {"iterations": iterations, "rollout_batch": batch, "minibatch": step, "epochs": ppo.epochs,
            "grad_steps": iterations * ppo.epochs * len(sizes), "obs_dim": obs_dim, "n_out": n_out,
            "hidden": list(cfg.policy.hidden_sizes), "shared": cfg.policy.shared,
            "actor_layers": [(x.k, x.n) for x in actor],
            "critic_layers": [(x.k, x.n) for x in both[len(actor):]] if not cfg.policy.shared else [],
            "step_forward_flops": sum(matmul_flops(m, k, n) for _, m, k, n in forward(both, step)),
            "step_backward_flops": sum(matmul_flops(m, k, n) for _, m, k, n in backward(both, step))}
    return phases, info


def time_matmul(kind: str, m: int, k: int, n: int, budget_s: float = 0.05, repeats: int = 5) -> float:
    """Best per-call seconds of the matmul ``kind`` at (m, k, n), fp32, with the layouts nn.Linear uses."""
    import torch

    g = torch.Generator().manual_seed(0)
    if kind == "fwd":  # F.linear: addmm(bias, x, W.T), W stored [n, k]
        x, w, b = torch.randn(m, k, generator=g), torch.randn(n, k, generator=g), torch.randn(n, generator=g)
        fn = lambda: torch.addmm(b, x, w.t())  # noqa: E731
    elif kind == "wgrad":  # here (m, k, n) = (layer out, batch, layer in): g.T @ x with g [batch, out]
        go, x = torch.randn(k, m, generator=g), torch.randn(k, n, generator=g)
        fn = lambda: torch.mm(go.t(), x)  # noqa: E731
    else:  # dgrad: g [batch, out] @ W [out, in]
        go, w = torch.randn(m, k, generator=g), torch.randn(k, n, generator=g)
        fn = lambda: torch.mm(go, w)  # noqa: E731
    for _ in range(10):
        fn()
    t0, calls = time.perf_counter(), 0
    while time.perf_counter() - t0 < budget_s / 5:
        fn()
        calls += 1
    calls = max(int(calls * 5), 1)  # about budget_s per repeat
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - t0) / calls)
    return best


def measure(config: Path, overrides: list[str], total_steps: int | None, quick: bool = False) -> dict:
    """Everything ``report`` prints, as a JSON-ready dict (runs with one torch thread)."""
    import gymnasium as gym
    import numpy as np
    import torch

    from rlhf.config import load_config
    from rlhf.vec_env import make_vec_env

    torch.set_num_threads(1)
    cfg = load_config(config, overrides)
    envs = make_vec_env(cfg.env, num_envs=1)
    obs_space, act_space = envs.single_observation_space, envs.single_action_space
    envs.close()
    if len(obs_space.shape) != 1:
        raise SystemExit(f"flop_bound: {cfg.env.id} has image observations; only MLP policies are counted")
    n_out = int(act_space.n) if isinstance(act_space, gym.spaces.Discrete) else int(np.prod(act_space.shape))
    total = total_steps or cfg.total_timesteps
    phases, info = run_phases(cfg, int(obs_space.shape[0]), n_out, total)
    budget = 0.02 if quick else 0.1
    shapes: dict[tuple[str, int, int, int], float] = {}
    for p in phases:
        for mm in p.matmuls:
            if mm not in shapes:
                shapes[mm] = time_matmul(*mm, budget_s=budget)
        p.seconds_per_call = sum(shapes[mm] for mm in p.matmuls)
    peak = time_matmul("fwd", PEAK_SHAPE, PEAK_SHAPE, PEAK_SHAPE, budget_s=max(budget, 0.2), repeats=3)
    return {"config": str(config), "env": cfg.env.id, "total_steps": total, "torch": torch.__version__,
            **info,
            "phases": [{"name": p.name, "calls": p.calls, "flops_per_call": p.flops_per_call, "flops": p.flops,
                        "seconds": p.seconds} for p in phases],
            "shapes": [{"kind": kind, "m": m, "k": k, "n": n, "seconds": s, "gflops": matmul_flops(m, k, n) / s / 1e9}
                       for (kind, m, k, n), s in shapes.items()],
            "peak_gflops": matmul_flops(PEAK_SHAPE, PEAK_SHAPE, PEAK_SHAPE) / peak / 1e9,
            "flops": sum(p.flops for p in phases), "bound_s": sum(p.seconds for p in phases)}


def report(b: dict) -> str:
    """Markdown: the networks, one gradient step's FLOPs, the run's matmul work and its time on this CPU."""
    layers = lambda ls: " -> ".join([str(ls[0][0])] + [str(n) for _, n in ls])  # noqa: E731
    nets = (f"actor {layers(b['actor_layers'])}" + (f", critic {layers(b['critic_layers'])}" if b["critic_layers"]
                                                    else " (shared trunk, value head on its last hidden layer)"))
    fwd, bwd = b["step_forward_flops"], b["step_backward_flops"]
    lines = [f"{b['env']}, {b['total_steps']:,} env steps: {nets}; {b['iterations']} iterations of "
             f"{b['rollout_batch']} samples, {b['epochs']} epochs of minibatch {b['minibatch']} = "
             f"{b['grad_steps']:,} gradient steps.", "",
             f"One gradient step (minibatch {b['minibatch']}): forward {fwd / 1e6:.2f} MFLOP + backward "
             f"{bwd / 1e6:.2f} MFLOP = {(fwd + bwd) / 1e6:.2f} MFLOP of matmuls.", "",
             "| phase | calls | MFLOP per call | GFLOP in the run | matmul time at measured throughput s |",
             "|---|---|---|---|---|"]
    for p in b["phases"]:
        lines.append(f"| {p['name']} | {p['calls']:,} | {p['flops_per_call'] / 1e6:.3f} | {p['flops'] / 1e9:.2f} "
                     f"| {p['seconds']:.2f} |")
    lines.append(f"| **total** | | | **{b['flops'] / 1e9:.2f}** | **{b['bound_s']:.2f}** |")
    lines += ["", f"fp32 matmul throughput, torch {b['torch']}, one thread, best of repeats "
              "(fwd = addmm(b, x, W.T), wgrad = g.T @ x, dgrad = g @ W; m x k times k x n):", "",
              "| kind | m x k x n | GFLOP/s |", "|---|---|---|"]
    for s in b["shapes"]:
        lines.append(f"| {s['kind']} | {s['m']} x {s['k']} x {s['n']} | {s['gflops']:.1f} |")
    big = f"{PEAK_SHAPE} x {PEAK_SHAPE} x {PEAK_SHAPE}"
    lines.append(f"| fwd | {big} (large, for reference) | {b['peak_gflops']:.1f} |")
    lines += ["", f"At the large-matrix rate the run's matmuls would take {b['flops'] / b['peak_gflops'] / 1e9:.2f} s; "
              f"at the rates these small shapes reach, {b['bound_s']:.2f} s (the compute bound of the training loop)."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("config", nargs="?", default=str(ROOT / "configs" / "cartpole.yaml"))
    parser.add_argument("overrides", nargs="*", help="dotted config overrides, as for `rlhf train`")
    parser.add_argument("--steps", type=int, help="env steps (default: the config's total_timesteps)")
    parser.add_argument("--quick", action="store_true", help="shorter timings")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of markdown")
    args = parser.parse_args()
    bound = measure(Path(args.config), args.overrides, args.steps, args.quick)
    print(json.dumps(bound) if args.json else report(bound))


if __name__ == "__main__":
    main()
