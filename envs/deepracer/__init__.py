"""A DeepRacer-like racing environment for gymnasium.

``import envs`` registers ``DeepRacer-v0``; ``gymnasium.make("DeepRacer-v0", **kwargs)`` gives the single
env and ``gymnasium.make_vec("DeepRacer-v0", num_envs=N, vectorization_mode="vector_entry_point",
**kwargs)`` the native batched one. The keyword arguments are the fields of :class:`RaceSpec`.
"""
from __future__ import annotations

from .actions import DEFAULT_DISCRETE_ACTIONS, ActionSpec, load_model_metadata
from .builtin_tracks import BUILTIN_TRACKS, DEFAULT_TRACK, builtin_track
from .env import DeepRacerEnv
from .finite import NonFiniteValueError
from .guard import UserCodeInterrupted
from .random_track import generate_random_track
from .render import plot_trajectories, render_frame, save_gif, save_png
from .metadata import MetadataWarning
from .rewards import (BUILTIN_REWARDS, DEFAULT_REWARD, NonFiniteRewardError, RewardFunctionError, follow_center_line,
                      load_reward_function, prevent_zigzag, progress_speed, stay_inside_borders)
from .sim import STATUS_NAMES
from .simtrace import COLUMNS as SIMTRACE_COLUMNS
from .simtrace import SimTraceWriter, read_simtrace, replay, trajectories
from .spec import RaceSpec
from .track import Track, TrackStack
from .track_registry import as_track
from .vector_env import DeepRacerVectorEnv

ENV_ID = "DeepRacer-v0"


def register() -> None:
    """Register ``DeepRacer-v0`` with gymnasium (idempotent)."""
    import gymnasium

    if ENV_ID not in gymnasium.registry:
        gymnasium.register(id=ENV_ID, entry_point="envs.deepracer.env:DeepRacerEnv",
                           vector_entry_point="envs.deepracer.vector_env:DeepRacerVectorEnv",
                           disable_env_checker=True)


__all__ = [
    "ENV_ID", "register", "DeepRacerEnv", "DeepRacerVectorEnv", "RaceSpec", "Track", "TrackStack", "as_track",
    "BUILTIN_TRACKS", "DEFAULT_TRACK", "builtin_track", "generate_random_track", "ActionSpec",
    "DEFAULT_DISCRETE_ACTIONS", "load_model_metadata", "MetadataWarning", "RewardFunctionError",
    "NonFiniteRewardError", "NonFiniteValueError", "UserCodeInterrupted", "load_reward_function",
    "BUILTIN_REWARDS", "DEFAULT_REWARD", "follow_center_line", "stay_inside_borders", "prevent_zigzag",
    "progress_speed", "STATUS_NAMES", "SimTraceWriter", "SIMTRACE_COLUMNS", "read_simtrace", "replay",
    "trajectories", "render_frame", "save_gif", "save_png", "plot_trajectories",
]
