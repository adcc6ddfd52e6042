"""Stable-Baselines3 checkpoints in a run directory: ``RUN/checkpoints/step_<12 digits>.zip``.

They are SB3's own ``model.save`` files, written atomically (temporary name, fsync, rename) and rotated
by ``checkpoint.keep``. Nothing here unpickles: a checkpoint is judged by its zip entries, and its step
counters are read from the JSON ``data`` entry as plain numbers. Importing this module does not import
Stable-Baselines3 (``rlhf eval`` asks it which kind of run a directory holds).
"""
from __future__ import annotations

import json
import re
import sys
import zipfile
from pathlib import Path

from rlhf.checkpoint import checkpoint_dir, keep_newest, list_checkpoints, write_atomically
from rlhf.errors import ConfigError

_NAME = re.compile(r"step_(\d+)\.zip$")
REQUIRED_ENTRIES = ("data", "policy.pth")  # what SB3's set_parameters and our counters read


def list_zips(run_dir: str | Path) -> list[Path]:
    """Paths named like SB3 checkpoints in a run, oldest first (readable or not)."""
    return list_checkpoints(run_dir, _NAME)


def counters(path: str | Path) -> dict:
    """``num_timesteps`` and ``_n_updates`` saved in an SB3 zip, read from its JSON without unpickling."""
    with zipfile.ZipFile(path) as archive:
        data = json.loads(archive.read("data").decode())
    out = {k: data.get(k) for k in ("num_timesteps", "_n_updates")}
    if not all(isinstance(v, int) and v >= 0 for v in out.values()):
        raise ValueError(f"step counters missing from data ({out})")
    return out


def zip_problem(path: str | Path) -> str | None:
    """Why ``path`` is not a usable SB3 checkpoint (None when it is)."""
    path = Path(path)
    if path.is_dir():
        return "is a directory"
    try:
        if path.stat().st_size == 0:
            return "is empty"
        with zipfile.ZipFile(path) as archive:
            missing = [n for n in REQUIRED_ENTRIES if n not in archive.namelist()]
        if missing:
            return f"lacks {', '.join(missing)}"
        counters(path)
    except (OSError, zipfile.BadZipFile, ValueError, UnicodeDecodeError, KeyError) as exc:
        return f"is truncated or not a Stable-Baselines3 checkpoint ({type(exc).__name__})"
    return None


def latest_valid_zip(run_dir: str | Path) -> Path | None:
    """The newest usable SB3 checkpoint (unusable newer ones skipped with a one-line warning); None when the
    run has none; ConfigError naming each file when none is usable."""
    skipped: list[str] = []
    for path in reversed(list_zips(run_dir)):
        problem = zip_problem(path)
        if problem is None:
            if skipped:
                print(f"rlhf: warning: skipping {', '.join(skipped)}; using {path.name}", file=sys.stderr)
            return path
        skipped.append(f"{path.name} ({problem})")
    if skipped:
        raise ConfigError(f"no usable checkpoint in {str(checkpoint_dir(run_dir))!r}: {', '.join(skipped)}")
    return None


def save_zip(model, run_dir: str | Path, step: int, keep: int) -> Path:
    """``model.save`` to ``checkpoints/step_<step>.zip`` atomically; keep the newest ``keep`` checkpoints."""
    target = write_atomically(checkpoint_dir(run_dir) / f"step_{step:012d}.zip", model.save)
    keep_newest(list_zips(run_dir), keep)
    return target


def is_sb3_run(run_dir: str | Path) -> bool:
    """Does ``run_dir``'s config.yaml say ``backend: sb3``?"""
    from rlhf.config import read_yaml

    config = Path(run_dir) / "config.yaml"
    return config.is_file() and read_yaml(config).get("backend") == "sb3"


def locate_sb3(target: str | Path) -> tuple[Path, Path] | None:
    """(run_dir, checkpoint) when ``target`` is an SB3 run directory or one of its ``.zip`` checkpoints; None
    for anything else (the caller's own rules apply)."""
    target = Path(target)
    if target.is_file() and target.suffix == ".zip":
        problem = zip_problem(target)
        if problem:
            raise ConfigError(f"checkpoint {str(target)!r} {problem}")
        return target.parent.parent, target
    if not (target.is_dir() and is_sb3_run(target)):
        return None
    found = latest_valid_zip(target)
    if found is None:
        raise ConfigError(f"{str(target)!r} holds no checkpoints (expected {checkpoint_dir(target)}/step_*.zip)")
    return target, found
