"""Atomic checkpoints: write to a temporary file in the same folder, then rename over the target.

A run killed mid-write leaves either the previous checkpoint or the new one, never a torn file.
Loading uses ``weights_only=True``: a checkpoint cannot run code.
"""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import torch

_NAME = re.compile(r"step_(\d+)\.pt$")


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def save_file(state: dict, target: str | Path) -> Path:
    """``torch.save`` to a temporary file beside ``target``, fsync, then rename over it."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp_", suffix=".pt")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def save_checkpoint(state: dict, run_dir: str | Path, step: int, keep: int = 3) -> Path:
    """Write ``checkpoints/step_<step>.pt`` atomically and delete all but the newest ``keep``."""
    target = save_file(state, checkpoint_dir(run_dir) / f"step_{step:012d}.pt")
    for old in list_checkpoints(run_dir)[:-keep]:
        old.unlink(missing_ok=True)
    return target


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Checkpoints of a run, oldest first."""
    folder = checkpoint_dir(run_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.search(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def load_checkpoint(path: str | Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)
