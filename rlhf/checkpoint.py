"""Atomic checkpoints, safe loading, and the rules for resuming a run.

Saving writes to a temporary file in the same folder, then renames it over the target: a run killed
mid-write leaves either the previous checkpoint or the new one, never a torn file. Loading uses
``weights_only=True``: a checkpoint cannot run code. A newest checkpoint that cannot be read anyway
(truncated by a full disk, emptied, overwritten, a folder named like one) is skipped with a one-line
warning for the newest one that can; when none can, the error names each file and what is wrong with it.
"""
from __future__ import annotations

import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Callable, Iterable

import torch

from rlhf.errors import ConfigError

_NAME = re.compile(r"step_(\d+)\.pt$")
UNREADABLE_SUFFIX = ".unreadable"

# What a resumed run cannot change: the checkpoint's tensors, optimizer state, env state or random
# streams were made for these values. Everything else (total_timesteps, learning rate, logging, ...) may.
FROZEN_ON_RESUME = (
    "seed",                                    # the run's random streams (and the text task's vocabulary)
    "backend",                                 # which engine wrote the checkpoints
    "env.id", "env.num_envs", "env.vectorization",  # the saved env and collector state
    "policy.hidden_sizes", "policy.activation", "policy.shared", "policy.normalize_obs", "policy.cnn_features",
    "policy.moe",                              # the network's layers
    "ppo.optimizer", "ppo.normalize_reward",   # optimizer state layout, reward-scaler state
    "precision.train", "precision.qat",        # loss-scaler state, quantization-aware modules
)
FROZEN_ON_RESUME_TEXT = (
    "seed", "text.model.n_layer", "text.model.n_head", "text.model.n_embd", "text.model.block_size",
    "text.model.moe", "text.advantage", "text.lora", "ppo.optimizer", "precision.train", "precision.qat",
)


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def _file_mode() -> int:
    """What ``open(path, "w")`` would give (0644 under the usual umask); ``mkstemp`` gives 0600."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_atomically(target: str | Path, write: Callable[[str], None]) -> Path:
    """``write(temporary path)`` beside ``target``, fsync, mode 0644 (as ``open`` would give), then rename over
    ``target``: a run killed mid-write leaves the old file or the new one, never a torn one."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp_", suffix=target.suffix)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, _file_mode())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def save_file(state: dict, target: str | Path) -> Path:
    """``torch.save`` written atomically (``write_atomically``)."""
    return write_atomically(target, lambda tmp: torch.save(state, tmp))


def keep_newest(paths: list[Path], keep: int) -> None:
    """Delete all but the last ``keep`` files of ``paths`` (oldest first); folders named like them stay."""
    for old in [p for p in paths if p.is_file()][:-keep]:
        old.unlink(missing_ok=True)


def save_checkpoint(state: dict, run_dir: str | Path, step: int, keep: int = 3) -> Path:
    """Write ``checkpoints/step_<step>.pt`` atomically and delete all but the newest ``keep`` files."""
    target = save_file(state, checkpoint_dir(run_dir) / f"step_{step:012d}.pt")
    keep_newest(list_checkpoints(run_dir), keep)
    return target


def list_checkpoints(run_dir: str | Path, name: re.Pattern = _NAME) -> list[Path]:
    """Paths named like checkpoints (``name``: ``step_<n>.pt`` by default) in a run, oldest first (readable or
    not: see ``latest_valid``)."""
    folder = checkpoint_dir(run_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := name.search(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest path named like a checkpoint, without reading it (``latest_valid`` reads)."""
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def load_checkpoint(path: str | Path, required: Iterable[str] = ()) -> dict:
    """The checkpoint's dict; a file that is not one raises ConfigError naming it and what is wrong."""
    state, problem = _read(Path(path), tuple(required), mmap=False)
    if problem:
        raise ConfigError(f"checkpoint {str(path)!r} {problem}")
    return state


def checkpoint_problem(path: str | Path, required: Iterable[str] = ()) -> str | None:
    """Why ``path`` is not a usable checkpoint (None when it is). Memory-maps: tensors are not read."""
    return _read(Path(path), tuple(required), mmap=True)[1]


def _read(path: Path, required: tuple[str, ...], mmap: bool) -> tuple[dict | None, str | None]:
    if path.is_dir():
        return None, "is a directory"
    try:
        if path.stat().st_size == 0:
            return None, "is empty"
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:  # torch raises OSError, EOFError, RuntimeError, UnpicklingError, ... for a bad file
        return None, f"is truncated or not a checkpoint ({type(exc).__name__})"
    if not isinstance(state, dict):
        return None, f"holds a {type(state).__name__}, not a checkpoint dict"
    missing = [k for k in required if k not in state]
    if missing:
        return None, f"lacks {', '.join(missing)}"
    weights = state.get("policy")
    if isinstance(weights, dict):  # a checkpoint written here never holds NaN/inf: one that does was altered
        bad = next((k for k, t in weights.items() if isinstance(t, torch.Tensor) and t.is_floating_point()
                    and not torch.isfinite(t).all()), None)
        if bad is not None:
            return None, f"holds NaN/inf in policy weight {bad!r}"
    return state, None


def load_weights(module: torch.nn.Module, weights: dict, path: str | Path) -> None:
    """``module.load_state_dict(weights)``; weights of another architecture raise ConfigError in one line."""
    own = module.state_dict()
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    shapes = [f"{k} {tuple(weights[k].shape)} vs {tuple(t.shape)}" for k, t in own.items()
              if isinstance(weights.get(k), torch.Tensor) and weights[k].shape != t.shape]
    if missing or unexpected or shapes:
        what = [f"{len(v)} {name} ({', '.join(v[:3])}{', ...' if len(v) > 3 else ''})"
                for name, v in (("missing", missing), ("unexpected", unexpected), ("of another shape", shapes)) if v]
        raise ConfigError(f"checkpoint {str(path)!r} does not fit the policy its run's config.yaml describes: "
                          f"weights {'; '.join(what)}")
    module.load_state_dict(weights)


def latest_valid(run_dir: str | Path, required: Iterable[str] = ("policy",), load: bool = False,
                 warn: Callable[[str], None] | None = None) -> tuple[Path, dict | None] | None:
    """The newest checkpoint that can be read and holds ``required`` keys, newest first.

    Returns ``(path, state)`` (state only with ``load=True``; each file is read once), or None when the
    run has no checkpoint at all. Skipped files are reported through ``warn`` in one line (default: to
    stderr); when every file is unusable, raises ConfigError naming them.
    """
    required = tuple(required)
    skipped: list[tuple[Path, str]] = []
    candidates = list_checkpoints(run_dir)
    for path in reversed(candidates):
        state, problem = _read(path, required, mmap=not load)
        if problem is None:
            if skipped:
                (warn or _stderr)(f"rlhf: warning: skipping {_describe(skipped)}; using {path.name}")
            return path, state if load else None
        skipped.append((path, problem))
    if skipped:
        raise ConfigError(f"no usable checkpoint in {str(checkpoint_dir(run_dir))!r}: {_describe(skipped)}")
    return None


def skipped_newer(run_dir: str | Path, chosen: Path) -> list[Path]:
    """Paths named like checkpoints that sort after ``chosen``: the unusable ones ``latest_valid`` skipped."""
    found = list_checkpoints(run_dir)
    return found[found.index(chosen) + 1:] if chosen in found else []


def set_aside(paths: Iterable[Path]) -> list[Path]:
    """Rename unusable checkpoints to ``*.pt.unreadable``: kept for inspection, never again taken for the
    newest one, never overwritten by a save at the same step, never counted by ``keep``."""
    moved = []
    for path in paths:
        target = path.with_name(path.name + UNREADABLE_SUFFIX)
        n = 1
        while target.exists():
            n += 1
            target = path.with_name(f"{path.name}{UNREADABLE_SUFFIX}.{n}")
        os.replace(path, target)
        moved.append(target)
    return moved


def _describe(skipped: list[tuple[Path, str]]) -> str:
    return ", ".join(f"{p.name} ({why})" for p, why in skipped)


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


# ----------------------------------------------------------------------------- resume rules

def _dotted(data: dict, key: str):
    for part in key.split("."):
        if not isinstance(data, dict) or part not in data:
            return None
        data = data[part]
    return data


def refuse_frozen_changes(saved: dict, new: dict, keys: Iterable[str], run_dir: str | Path) -> None:
    """ConfigError naming the first of ``keys`` whose value differs between the run's saved config and the
    resumed one (both as ``Config.model_dump(mode="json")``)."""
    for key in keys:
        old, value = _dotted(saved, key), _dotted(new, key)
        if old != value:
            raise ConfigError(f"--resume {str(run_dir)!r}: {key} cannot change on a resumed run (the checkpoint "
                              f"was trained with {old!r}, got {value!r}); start a new run with --run-dir instead")


def write_config(cfg, run_dir: str | Path) -> Path:
    """``config.yaml`` replaced atomically: a run killed mid-write keeps the previous one."""
    from rlhf.config import save_config

    target = Path(run_dir) / "config.yaml"
    tmp = target.with_name(f".tmp_{os.getpid()}_config.yaml")
    try:
        save_config(cfg, tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target
