"""The options of a DeepRacer race, in one place: the keyword arguments of ``gymnasium.make`` and
``gymnasium.make_vec`` for ``DeepRacer-v0`` are exactly its fields, so both envs accept the same words
and hand them down as one object."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .actions import DEFAULT_SPEED_RANGE, DEFAULT_STEERING_RANGE
from .builtin_tracks import DEFAULT_TRACK
from .guard import DEFAULT_TIMEOUT_S, check_timeout
from .rewards import RewardSpec
from .track_registry import TrackLike

DEFAULT_MAX_EPISODE_STEPS = 2000


@dataclass(frozen=True, kw_only=True)
class RaceSpec:
    """One race's settings, checked where they are used (action spec, simulator, sensor, reward loader),
    whose errors name the keyword a user passed.

    Args:
        track: built-in name ("oval", "circuit" (default), "technical"), "random" (a new generated track
            every episode), a DeepRacer ``.npy`` path, an (N, 6) array or a :class:`Track`.
        action_space_type: "discrete" (default) or "continuous".
        actions: discrete actions as [{"steering_angle": deg, "speed": m/s}, ...]; default the console's
            5 steering angles (-30..30) x 2 speeds (0.5, 1.0).
        model_metadata: path to a DeepRacer model_metadata.json; its action space overrides the above, and
            its ``sensor`` list chooses the observation unless ``observation`` is given (see
            :mod:`envs.deepracer.metadata` for what is honoured, warned about or refused).
        steering_range, speed_range: (low, high) of the continuous action space; a Box [-1, 1]^2 action
            [steering, speed] is scaled linearly onto them.
        observation: "features", "lidar" or "camera"; None (default): what the model_metadata sensor list
            asks for, else "features". An explicit value that differs from the sensor list wins, with a warning.
        lidar_rays, lidar_range, lidar_fov: lidar fan (default 19 rays, 2 m, 180 degrees).
        reward_function: callable ``reward_function(params)``, path to a .py defining it, or a built-in
            name ("progress_speed" (default), "follow_center_line", "stay_inside_borders",
            "prevent_zigzag"). A file runs unsandboxed, with the user's rights.
        reward_timeout_s: a reward function call (or a reward file's import) running longer than this fails
            the run with a message (main thread only; None: no limit). SIGINT/SIGTERM interrupt it at once.
        user_code: False = never import a reward file: use the default built-in reward instead (to evaluate
            someone else's run without running their code).
        hyperparameters: the DeepRacer hyperparameters.json the run was configured from; the env only
            keeps the path (the trainer reads its stop conditions, ``term_cond_*``).
        max_episode_steps: truncate (episode_status "time_up") after this many steps (15 per second).
            Note: ``gym.make`` keeps its own ``max_episode_steps`` argument for gymnasium's TimeLimit
            wrapper (truncated=True, status stays "in_progress"); ``make_vec`` and direct construction
            pass it here.
        training: True = each episode starts 5 % of a lap further round (DeepRacer training);
            False = evaluation, every episode starts on the start line.
        simtrace_path: write a DeepRacer simtrace CSV of every step there.
    """

    track: TrackLike = DEFAULT_TRACK
    action_space_type: str = "discrete"
    actions: Sequence[dict] | None = None
    model_metadata: str | Path | None = None
    steering_range: Sequence[float] = DEFAULT_STEERING_RANGE
    speed_range: Sequence[float] = DEFAULT_SPEED_RANGE
    observation: str | None = None
    lidar_rays: int = 19
    lidar_range: float = 2.0
    lidar_fov: float = 180.0
    reward_function: RewardSpec | None = None
    max_episode_steps: int = DEFAULT_MAX_EPISODE_STEPS
    training: bool = True
    simtrace_path: str | Path | None = None
    reward_timeout_s: float | None = DEFAULT_TIMEOUT_S
    user_code: bool = True
    hyperparameters: str | Path | None = None

    def __post_init__(self) -> None:
        check_timeout(self.reward_timeout_s)  # a built-in reward never meets the Guard that checks it too
