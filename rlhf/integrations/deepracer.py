"""DeepRacer-v0 glue: lap metrics for TensorBoard and ``rlhf eval``, a run's own copies of the user's files,
the evaluation trajectory plot, the console's stop conditions, and ``rlhf deepracer replay`` (re-score
logged steps with another reward function)."""
from __future__ import annotations

import filecmp
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from rlhf.errors import ConfigError

LAP_COMPLETE = "lap_complete"
OFF_TRACK = "off_track"
USER_DIR = "user"  # inside a run directory: copies of every user file the run reads
RUN_DIR = "{run_dir}"
# env kwargs that may name a user's file, and how to tell a file from a built-in name
FILE_KWARGS = ("reward_function", "model_metadata", "track", "hyperparameters")
STOP_CONDITIONS = ("term_cond_max_episodes", "term_cond_avg_score")


def _statuses(infos: list[dict]) -> list[str]:
    return [str(i.get("episode_status", "")) for i in infos]


def episode_metrics(infos: list[dict]) -> dict[str, float]:
    """TensorBoard ``deepracer/...`` scalars over recent finished episodes."""
    if not infos:
        return {}
    status = _statuses(infos)
    laps = [float(i["lap_time"]) for i, s in zip(infos, status) if s == LAP_COMPLETE and "lap_time" in i]
    return {
        "deepracer/progress_mean": float(np.mean([float(i.get("progress", 0.0)) for i in infos])),
        "deepracer/lap_completion_rate": status.count(LAP_COMPLETE) / len(status),
        "deepracer/lap_time_mean": float(np.mean(laps)) if laps else float("nan"),
        "deepracer/off_track_rate": status.count(OFF_TRACK) / len(status),
    }


def eval_summary(infos: list[dict]) -> dict[str, float | None]:
    """Extra keys for ``rlhf eval --json``."""
    m = episode_metrics(infos)
    lap_time = m.get("deepracer/lap_time_mean", float("nan"))
    return {
        "lap_completion_rate": m.get("deepracer/lap_completion_rate", 0.0),
        "mean_progress": m.get("deepracer/progress_mean", 0.0),
        "mean_lap_time": None if np.isnan(lap_time) else lap_time,
        "off_track_rate": m.get("deepracer/off_track_rate", 0.0),
    }


# ----------------------------------------------------------------------------- a self-contained run

def is_user_file(key: str, value: Any) -> bool:
    """Does env kwarg ``key`` name a file of the user's (not a built-in, not already the run's copy)?"""
    if not isinstance(value, (str, Path)) or RUN_DIR in str(value):
        return False
    text = str(value)
    if key == "reward_function":
        return text.endswith(".py")
    if key == "track":
        from envs.deepracer import BUILTIN_TRACKS

        return text not in BUILTIN_TRACKS and text != "random"
    return bool(text)


def copy_into_run(source: Path, run_dir: Path, what: str) -> str:
    """Copy ``source`` to ``run_dir/user/`` (a new name if a different file already has its name) and return
    the path the config should hold, relative to ``{run_dir}`` so that the run folder can move."""
    if not source.is_file():
        raise ConfigError(f"{what} = {str(source)!r}: file not found")
    folder = run_dir / USER_DIR
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / source.name
    n = 1
    while target.exists() and not filecmp.cmp(source, target, shallow=False):
        n += 1
        target = folder / f"{source.stem}-{n}{source.suffix}"
    if not target.exists():
        tmp = target.with_name(target.name + ".tmp")
        shutil.copyfile(source, tmp)
        tmp.replace(target)
    return f"{RUN_DIR}/{USER_DIR}/{target.name}"


def _check_data_file(key: str, path: Path, what: str) -> None:
    """Read a track or model_metadata file before it is copied, so that errors name the user's file."""
    from envs.deepracer import Track, load_model_metadata

    try:
        if key == "track":
            Track(path)
        elif key == "model_metadata":
            load_model_metadata(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{what}: {exc}") from None


def prepare_run(cfg, run_dir: str | Path):
    """The config a run trains from: every user file named in ``env.kwargs`` / ``env.eval_kwargs`` (reward
    function, model_metadata.json, hyperparameters.json, a .npy track) copied into ``RUN/user/`` and the
    config pointed at the copies as ``{run_dir}/user/NAME``. ``rlhf eval``, ``replay`` and ``--resume`` then
    read the run's copies: editing or deleting the originals changes nothing."""
    run_dir = Path(run_dir)
    copied: dict[str, str] = {}
    sections = {}
    for name in ("kwargs", "eval_kwargs"):
        kwargs = dict(getattr(cfg.env, name))
        for key in FILE_KWARGS:
            value = kwargs.get(key)
            if is_user_file(key, value):
                source = str(Path(value).resolve())
                if source not in copied:
                    _check_data_file(key, Path(source), f"env.{name}.{key}")
                    copied[source] = copy_into_run(Path(source), run_dir, f"env.{name}.{key}")
                kwargs[key] = copied[source]
        sections[name] = kwargs
    if not copied:
        return cfg
    return cfg.model_copy(update={"env": cfg.env.model_copy(update=sections)})


# ----------------------------------------------------------------------------- the console's stop conditions

def stop_conditions(env_kwargs: dict, run_dir: str | Path | None = None) -> dict[str, float]:
    """``term_cond_max_episodes`` / ``term_cond_avg_score`` from the run's hyperparameters.json (if any)."""
    path = env_kwargs.get("hyperparameters")
    if not path:
        return {}
    path = Path(str(path).replace(RUN_DIR, str(run_dir)) if run_dir is not None else str(path))
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # the file was checked when the config was read
    return {k: float(data[k]) for k in STOP_CONDITIONS if isinstance(data, dict) and data.get(k) is not None}


def stop_reason(conditions: dict[str, float], episodes: int, recent_returns: list[float]) -> str | None:
    """Why training should stop now by the console's rules, or None. ``episodes``: finished so far;
    ``recent_returns``: the returns behind ``rollout/ep_rew_mean`` (the last 100 episodes)."""
    most = conditions.get("term_cond_max_episodes")
    if most is not None and episodes >= most:
        return f"term_cond_max_episodes = {most:g} reached ({episodes} episodes)"
    score = conditions.get("term_cond_avg_score")
    if score is not None and recent_returns and float(np.mean(recent_returns)) >= score:
        return (f"term_cond_avg_score = {score:g} reached (mean return {float(np.mean(recent_returns)):.4g} over "
                f"the last {len(recent_returns)} episodes)")
    return None


# ----------------------------------------------------------------------------- evaluation outputs

def before_eval(env_kwargs: dict) -> dict:
    """Nothing to prepare: each evaluation's simtrace path is its own (named by track and time by the
    caller), so no earlier log is removed or appended to. Returns the kwargs unchanged."""
    return env_kwargs


def after_eval(env_kwargs: dict, run_dir: Path) -> list[Path]:
    """Draw the evaluation laps over the track, coloured by speed, next to the evaluation simtrace and named
    like it (``...-simtrace.csv`` -> ``...-trajectories.png``); returns the files written."""
    from envs.deepracer import plot_trajectories, read_simtrace, trajectories

    csv = env_kwargs.get("simtrace_path")
    if not csv or not Path(csv).is_file():
        return []
    csv = Path(csv)
    try:
        rows = read_simtrace(csv)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if not rows:
        return [csv]
    track = env_kwargs.get("track", "circuit")
    if track == "random":
        return [csv]  # every episode had its own track: there is no one picture
    stem = csv.name.removesuffix(".csv").removesuffix("-simtrace")
    png = csv.with_name(f"{stem}-trajectories.png")
    plot_trajectories(track, trajectories(rows), png)
    return [csv, png]


# ----------------------------------------------------------------------------- replay

def _run_track(run_dir: Path) -> str:
    from rlhf.config import read_yaml

    track = read_yaml(run_dir / "config.yaml").get("env", {}).get("kwargs", {}).get("track", "circuit")
    return str(track).replace(RUN_DIR, str(run_dir))


def _newest_simtrace(run_dir: Path) -> Path:
    """The newest evaluation simtrace of a run, else its training simtrace."""
    folder = run_dir / "simtrace"
    csvs = sorted(folder.glob("*simtrace.csv"), key=lambda p: p.stat().st_mtime) if folder.is_dir() else []
    if not csvs:
        raise ConfigError(f"{str(run_dir)!r} holds no simtrace/*.csv (train or evaluate with simtrace_path set)")
    evaluations = [c for c in csvs if c.name.startswith("evaluation")]
    return (evaluations or csvs)[-1]


def replay(target: str | Path, reward: str, track: str | None = None) -> list[dict]:
    """Per-episode totals of a logged simtrace under its own reward and under ``reward``; refused when the
    log's track length does not match the track it would be scored on."""
    from envs.deepracer import replay as replay_csv

    target = Path(target)
    if target.is_dir():
        csv = _newest_simtrace(target)
        if track is None:
            track = _run_track(target)
    elif target.is_file():
        csv = target
    else:
        raise ConfigError(f"{str(target)!r} is neither a run directory nor a simtrace CSV")
    if track in (None, "random"):
        from envs.deepracer import read_simtrace

        try:  # a file that is no simtrace is the thing to fix first
            read_simtrace(csv)
        except (FileNotFoundError, ValueError) as exc:
            raise ConfigError(str(exc)) from None
        raise ConfigError("replay needs the track the laps were driven on: pass --track NAME|PATH.npy")
    try:
        return replay_csv(csv, reward, track)
    except (FileNotFoundError, ValueError) as exc:
        raise ConfigError(str(exc)) from None


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions the env raises for user mistakes (a bad reward function, a track or observation that is not
    a finite number): printed as one line without a traceback."""
    from envs.deepracer import NonFiniteValueError, RewardFunctionError

    return (RewardFunctionError, NonFiniteValueError)
