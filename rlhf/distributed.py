"""Data-parallel training over ``torch.distributed``: ``torchrun --nproc_per_node=N -m rlhf train CONFIG``.

torchrun starts one process per rank and sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT``; ``init()`` joins the process group (gloo on CPU, nccl on CUDA). Every rank steps its own
envs from its own seeds and computes gradients on its own rollout; the pieces here make the ranks agree:

* ``GradientMean``: installed as ``Precision.grad_reduce``, it averages the gradients over the ranks after
  ``backward`` and before the norm clip (one ``all_reduce`` on ``FlatAdam``'s flat gradient), so every rank
  clips the same gradient and takes the same optimizer step: the parameters stay identical.
* ``Whiten`` / ``mean``: given to ``ppo_update`` through ``PPOSettings``; advantage normalisation uses
  the statistics of every rank's minibatch, and the target-KL early stop reads the mean KL, so all ranks
  stop at the same step.
* ``reduce_stats``: the logged statistics, averaged (counts summed) over the ranks.

The text pipeline (``rlhf.text.pipeline``) uses the same pieces for its PPO stage: each rank samples its own
prompts and generations, ``sum_over_ranks`` gives the adaptive KL controller and the step counter every rank's
samples, and ``gather_object`` puts every rank's random streams into rank 0's checkpoint.

In one process none of this is installed: the single-process path pays nothing.
"""
from __future__ import annotations

import atexit
import json
import math
import os
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from torch import Tensor, nn

if TYPE_CHECKING:
    from collections.abc import Iterator

    from rlhf.ppo.update import Batch

# logged statistics that add up over ranks (counts); every other one is averaged
SUMMED = ("time/episodes", "val/num_eos_tokens")


def requested() -> bool:
    """Started by torchrun with more than one process (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def refuse_unsupported(cfg) -> None:
    """Config choices a data-parallel run cannot honour (``ConfigError``), checked before the group starts."""
    from rlhf.errors import ConfigError

    if getattr(cfg, "backend", "rlhf") != "rlhf":
        raise ConfigError(f"backend = {cfg.backend!r}: data-parallel training (torchrun) runs the rlhf backend; "
                          "start other backends with rlhf train")
    if cfg.text is None and cfg.ppo.episodes_between_updates is not None:
        raise ConfigError("ppo.episodes_between_updates: data-parallel runs need rollouts of one size on every rank; "
                          "use ppo.n_steps")
    if cfg.text is None and cfg.ppo.n_steps is not None and cfg.ppo.n_steps < 2:
        # a 1-step rollout of envs that all just ended holds no step to train on (``EqualSplit``)
        raise ConfigError(f"ppo.n_steps = {cfg.ppo.n_steps}: data-parallel runs need at least 2 steps per rollout, so "
                          "that every rank has a step to train on; use 2 or more")


def init(device: str = "cpu") -> bool:
    """Join torchrun's process group when ``WORLD_SIZE`` > 1 (True), else do nothing (False).

    ``device``: the run's device setting; ``cuda`` (or ``auto`` with a GPU present) picks nccl and this
    rank's GPU (``LOCAL_RANK``), anything else gloo.
    """
    if not requested():
        return False
    if dist.is_initialized():
        return True
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if cuda and torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda and torch.cuda.is_available() else "gloo")
    atexit.register(close)
    torch.set_num_threads(1)  # N learners on N cores: more threads per rank only contend
    return True


def close(wait_for_all: bool = False) -> None:
    """Leave the process group. ``wait_for_all`` (after a run that finished on every rank) waits at a barrier
    first: a rank tearing its group down while another still checkpoints can abort in gloo's threads at
    exit. Not on error paths, where another rank may be blocked in a collective that will never complete."""
    if dist.is_available() and dist.is_initialized():
        if wait_for_all:
            try:
                dist.barrier()
            except Exception:  # a rank already gone: nothing left to wait for
                pass
        dist.destroy_process_group()


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    """Rank 0, the one that writes (TensorBoard, checkpoints, config, simtrace, console); True in one process."""
    return rank() == 0


def local_device(device: torch.device) -> torch.device:
    """This rank's GPU (``LOCAL_RANK``) for a CUDA run; other devices as they are."""
    if device.type == "cuda" and world_size() > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def _coll_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def all_reduce_mean(x: Tensor) -> Tensor:
    """The mean of ``x`` over the ranks (a new tensor; ``x`` is left alone)."""
    y = x.detach().to(_coll_device(), copy=True)
    dist.all_reduce(y)
    return (y / dist.get_world_size()).to(x.device)


def barrier() -> None:
    """Wait for every rank (after rank 0 wrote files the others read next); nothing in one process."""
    if world_size() > 1:
        dist.barrier()


def sum_over_ranks(*values: float) -> list[float]:
    """The sums of ``values`` over the ranks, in float64 and one ``all_reduce``."""
    t = torch.tensor(values, dtype=torch.float64, device=_coll_device())
    dist.all_reduce(t)
    return t.tolist()


def gather_object(value) -> list:
    """Every rank's picklable ``value``, in rank order, on every rank."""
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def peer_failed(exc: BaseException) -> bool:
    """Whether ``exc`` is a collective failing because another rank exited first (gloo and nccl raise a
    plain RuntimeError naming the closed connection): that rank printed the cause, this one need not."""
    if world_size() <= 1 or not isinstance(exc, RuntimeError):
        return False
    dist_error = getattr(dist, "DistError", None)
    text = str(exc)
    return (dist_error is not None and isinstance(exc, dist_error)) or any(
        s in text for s in ("closed by peer", "reset by peer", "remote worker"))


def any_rank(flag: bool) -> bool:
    """True on every rank when it is True on any (a stop request, say), so that all ranks leave together."""
    t = torch.tensor([float(flag)], device=_coll_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def broadcast_json(value=None):
    """Rank 0's JSON-able ``value`` on every rank (other ranks pass anything)."""
    data = json.dumps(value).encode() if is_main() else b""
    size = torch.tensor([len(data)], dtype=torch.int64, device=_coll_device())
    dist.broadcast(size, 0)
    buf = torch.zeros(int(size.item()), dtype=torch.uint8, device=_coll_device())
    if is_main():
        buf.copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
    dist.broadcast(buf, 0)
    return json.loads(bytes(buf.cpu().tolist()).decode())


@torch.no_grad()
def broadcast_module(module: nn.Module) -> None:
    """Rank 0's parameters and buffers on every rank (the same start, whatever each rank's RNG did)."""
    for t in [*module.parameters(), *module.buffers()]:
        y = t.detach().to(_coll_device(), copy=True)
        dist.broadcast(y, 0)
        t.copy_(y)


class GradientMean:
    """``Precision.grad_reduce``: average the gradients over the ranks before clipping, in one ``all_reduce``.

    With ``FlatAdam`` ``params`` is one flat tensor and its gradient is reduced in place. Otherwise the
    gradients are packed into one buffer with a has-gradient flag per parameter: a parameter no rank gave
    a gradient (an MoE expert no token reached) keeps ``grad = None``, as in one process; one that some
    rank did not reach gets that rank's share as zeros.
    """

    def __call__(self, params: list[nn.Parameter]) -> None:
        world = dist.get_world_size()
        if len(params) == 1 and params[0].grad is not None:
            g = params[0].grad
            dist.all_reduce(g)
            g.div_(world)
            return
        flat = torch.cat([*(p.grad.reshape(-1) if p.grad is not None else torch.zeros(p.numel(), dtype=p.dtype,
                                                                                        device=p.device)
                            for p in params),
                          torch.tensor([float(p.grad is not None) for p in params], dtype=params[0].dtype,
                                       device=params[0].device)])
        dist.all_reduce(flat)
        flat.div_(world)
        has = flat[-len(params):]
        offset = 0
        for p, h in zip(params, has.tolist()):
            n = p.numel()
            if h > 0:
                g = flat[offset:offset + n].view_as(p)
                if p.grad is None:
                    p.grad = g.clone()
                else:
                    p.grad.copy_(g)
            offset += n


class Whiten:
    """``PPOSettings.whiten`` across ranks: ``masked_whiten`` with the mean and (Bessel-corrected) std of the
    masked elements of every rank's ``x``, from one ``all_reduce`` of (count, sum, sum of squares) in float64.

    (``ppo_update`` reuses the result while an epoch is one minibatch, so each update reduces once.)
    """

    def __call__(self, x: Tensor, mask: Tensor | None = None, eps: float = 1e-8) -> Tensor:
        mean, std = self._reduce(x, mask)
        return (x - mean) / (std + eps)

    @staticmethod
    def _reduce(x: Tensor, mask: Tensor | None) -> tuple[float, float]:
        xd = x.detach().double()
        if mask is not None:
            keep = mask.bool()
            xd = torch.where(keep, xd, 0.0)
            n = keep.sum().double()
        else:
            n = torch.tensor(float(xd.numel()), dtype=torch.float64, device=x.device)
        total = torch.stack([n, xd.sum(), (xd * xd).sum()]).to(_coll_device())
        dist.all_reduce(total)
        n, s, ss = total.tolist()
        mean = s / max(n, 1.0)
        return mean, math.sqrt(max(ss - n * mean * mean, 0.0) / max(n - 1.0, 1.0))


class EqualSplit:
    """``PPOSettings.minibatches`` for data-parallel gym training: every rank's batch in ``count`` shuffled
    minibatches, however many rows it holds.

    Why: a rank's batch leaves out the step after each episode end (see ``rlhf.rollout``), so ranks hold
    different numbers of rows; cut into ``batch_size`` pieces they would take different numbers of gradient
    steps, and the gradient mean of one rank's step would meet another collective on the other rank. ``count``
    is the split of a full rollout (``n_steps * num_envs / batch_size``), the same on every rank; each piece
    holds at least 2 rows (rows are reused in a batch smaller than ``2 * count``), so every rank also whitens
    every piece.
    """

    def __init__(self, count: int) -> None:
        self.count = count

    def __call__(self, b: Batch, batch_size: int) -> Iterator[Batch]:
        if self.count == 1 and len(b) >= 2:
            yield b
            return
        order = torch.randperm(len(b))
        if len(order) < 2 * self.count:
            order = order.repeat(-(-2 * self.count // len(order)))[:2 * self.count]
        for piece in order.tensor_split(self.count):
            yield b.index(piece)


def whiten(x: Tensor, mask: Tensor | None = None, eps: float = 1e-8, shift_mean: bool = True) -> Tensor:
    """One cross-rank whitening, as ``Whiten`` computes it; ``shift_mean=False`` keeps the mean, as
    ``masked_whiten`` does."""
    mean, std = Whiten._reduce(x, mask)
    out = (x - mean) / (std + eps)
    return out if shift_mean else out + mean


def mean(x: Tensor) -> Tensor:
    """``PPOSettings.mean`` across ranks: the ranks' average of a scalar statistic (the approx KL)."""
    return all_reduce_mean(x)


def reduce_stats(stats: dict[str, float]) -> dict[str, float]:
    """The ranks' logged statistics: means over the ranks that have a finite value (an ``ep_rew_mean`` is
    NaN on a rank whose envs finished no episode yet), sums for ``SUMMED`` keys. A key some ranks lack (an
    env metric no episode produced yet) counts as missing there."""
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, sorted(stats))
    keys = sorted(set().union(*gathered))
    values = torch.tensor([float(stats.get(k, float("nan"))) for k in keys], dtype=torch.float64)
    finite = torch.isfinite(values)
    packed = torch.cat([torch.where(finite, values, 0.0), finite.double()]).to(_coll_device())
    dist.all_reduce(packed)
    sums, counts = packed[:len(keys)].tolist(), packed[len(keys):].tolist()
    return {k: float("nan") if c == 0 else s if k in SUMMED else s / c for k, s, c in zip(keys, sums, counts)}


@torch.no_grad()
def update_running_stats(rms: nn.Module, x: Tensor) -> None:
    """``RunningMeanStd.update`` with every rank's ``x``: one ``all_reduce`` of (count, sums, sums of squares)."""
    x = x.reshape(-1, *rms.mean.shape).double()
    d = rms.mean.numel()
    packed = torch.cat([torch.tensor([float(x.shape[0])], dtype=torch.float64, device=x.device),
                        x.sum(0).reshape(-1), (x * x).sum(0).reshape(-1)]).to(_coll_device())
    dist.all_reduce(packed)
    packed = packed.to(rms.mean.device)
    n = float(packed[0])
    mean = (packed[1:1 + d] / n).reshape(rms.mean.shape)
    var = (packed[1 + d:] / n).reshape(rms.mean.shape) - mean * mean
    rms.update_from_moments(mean, var.clamp_min(0.0), n)
