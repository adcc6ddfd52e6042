"""DeepRacer-v0 glue: lap metrics for TensorBoard and ``rlhf eval``, the evaluation trajectory plot,
and ``rlhf deepracer replay`` (re-score logged steps with another reward function)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from rlhf.errors import ConfigError

LAP_COMPLETE = "lap_complete"
OFF_TRACK = "off_track"


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


def before_eval(env_kwargs: dict) -> None:
    """Each evaluation writes a fresh simtrace (training simtraces are appended to on resume)."""
    csv = env_kwargs.get("simtrace_path")
    if csv:
        Path(csv).unlink(missing_ok=True)


def after_eval(env_kwargs: dict, run_dir: Path) -> list[Path]:
    """Draw the evaluation laps over the track, coloured by speed, next to the evaluation simtrace."""
    from envs.deepracer import plot_trajectories, read_simtrace, trajectories

    csv = env_kwargs.get("simtrace_path")
    if not csv or not Path(csv).is_file():
        return []
    rows = read_simtrace(csv)
    if not rows:
        return []
    track = env_kwargs.get("track", "circuit")
    if track == "random":
        return []  # every episode had its own track: there is no one picture
    png = Path(csv).with_name("evaluation-trajectories.png")
    plot_trajectories(track, trajectories(rows), png)
    return [png]


def replay(target: str | Path, reward: str, track: str | None = None) -> list[dict]:
    """Per-episode totals of a logged simtrace under its own reward and under ``reward``."""
    from envs.deepracer import RewardFunctionError, replay as replay_csv

    target = Path(target)
    if target.is_dir():
        folder = target / "simtrace"
        csvs = sorted(folder.glob("*-simtrace.csv")) if folder.is_dir() else []
        if not csvs:
            raise ConfigError(f"{str(target)!r} holds no simtrace/*.csv (train or evaluate with simtrace_path set)")
        csv = next((c for c in csvs if c.name.startswith("evaluation")), csvs[0])
        if track is None:
            from rlhf.config import read_yaml

            track = read_yaml(target / "config.yaml").get("env", {}).get("kwargs", {}).get("track", "circuit")
    elif target.is_file():
        csv = target
    else:
        raise ConfigError(f"{str(target)!r} is neither a run directory nor a simtrace CSV")
    if track in (None, "random"):
        raise ConfigError("replay needs the track the laps were driven on: pass --track NAME|PATH.npy")
    try:
        return replay_csv(csv, reward, track)
    except (FileNotFoundError, RewardFunctionError) as exc:
        raise ConfigError(str(exc)) from None


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions the env raises for user mistakes (a bad reward function): printed without traceback."""
    from envs.deepracer import RewardFunctionError

    return (RewardFunctionError,)
