"""Build a gymnasium VectorEnv from the ``env`` config section, with user-facing errors."""
from __future__ import annotations

import contextlib
import dataclasses
import importlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gymnasium as gym
from gymnasium.vector import AutoresetMode

from rlhf.config import EnvConfig
from rlhf.errors import ConfigError


def _ensure_registered(env_id: str) -> gym.envs.registration.EnvSpec:
    """Find the spec, importing the project's own ``envs`` package (which registers its ids) if needed."""
    if ":" in env_id:
        module, env_id = env_id.split(":", 1)
        try:
            importlib.import_module(module)
        except Exception as exc:  # ModuleNotFoundError, or the module's own import failing
            raise ConfigError(f"env.id = {module + ':' + env_id!r}: importing module {module!r} raised "
                              f"{type(exc).__name__}: {exc}") from None
    if env_id not in gym.registry:
        try:
            importlib.import_module("envs")
        except ImportError:
            pass
    if env_id not in gym.registry:
        import difflib

        close = difflib.get_close_matches(env_id, list(gym.registry), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ConfigError(f"env.id = {env_id!r}: not a registered gymnasium environment{hint}")
    return gym.registry[env_id]


def fill_run_dir(kwargs: dict[str, Any], run_dir: str | Path | None) -> dict[str, Any]:
    """Replace ``{run_dir}`` in string kwargs, so configs can point env outputs (logs) into the run."""
    if run_dir is None:
        return kwargs
    return {k: v.replace("{run_dir}", str(run_dir)) if isinstance(v, str) else v for k, v in kwargs.items()}


def env_kwargs(cfg: EnvConfig, extra_kwargs: dict[str, Any] | None, run_dir: str | Path | None) -> dict[str, Any]:
    """The env's kwargs with ``{run_dir}`` filled in; without a run directory, kwargs that need one are dropped."""
    kwargs = fill_run_dir({**cfg.kwargs, **(extra_kwargs or {})}, run_dir)
    if run_dir is None:
        kwargs = {k: v for k, v in kwargs.items() if not (isinstance(v, str) and "{run_dir}" in v)}
    return kwargs


@contextlib.contextmanager
def env_errors(env_id: str, kwargs: dict[str, Any]) -> Iterator[None]:
    """Exceptions from an env's constructor as one-line ConfigErrors naming the env (no traceback)."""
    try:
        yield
    except ConfigError:
        raise
    except TypeError as exc:
        raise ConfigError(f"env.kwargs = {kwargs!r}: {env_id!r} rejected them ({exc})") from None
    except (ValueError, FileNotFoundError) as exc:
        raise ConfigError(f"env {env_id!r} with kwargs {kwargs!r}: {exc}") from None
    except (MemoryError, OSError):
        raise
    except Exception as exc:  # the env's own constructor
        raise ConfigError(f"env {env_id!r}: creating it raised {type(exc).__name__}: {exc}") from None


# Our numpy-batched envs for gymnasium ids registered without a ``vector_entry_point``.
NATIVE_ENTRY_POINTS = {
    "Acrobot-v1": "envs.classic_control:AcrobotVectorEnv",
    "Pendulum-v1": "envs.classic_control:PendulumVectorEnv",
}


def _with_native(spec: gym.envs.registration.EnvSpec) -> gym.envs.registration.EnvSpec:
    """``spec``, with our batched entry point filled in where gymnasium has none."""
    if spec.vector_entry_point is None and spec.id in NATIVE_ENTRY_POINTS:
        return dataclasses.replace(spec, vector_entry_point=NATIVE_ENTRY_POINTS[spec.id])
    return spec


def make_vec_env(cfg: EnvConfig, num_envs: int | None = None, extra_kwargs: dict[str, Any] | None = None,
                 run_dir: str | Path | None = None):
    """``gymnasium.make_vec`` with our vectorisation names; ``auto`` picks the env's native batch if any."""
    spec = _with_native(_ensure_registered(cfg.id))
    mode = cfg.vectorization
    if mode == "auto":
        mode = "native" if spec.vector_entry_point is not None else "sync"
    if mode == "native" and spec.vector_entry_point is None:
        raise ConfigError(f"env.vectorization = 'native': {cfg.id!r} has no batched implementation "
                          "(allowed: sync, async)")
    kwargs = env_kwargs(cfg, extra_kwargs, run_dir)
    gym_mode = "vector_entry_point" if mode == "native" else mode
    with env_errors(cfg.id, kwargs):
        envs = gym.make_vec(spec, num_envs=num_envs or cfg.num_envs, vectorization_mode=gym_mode, **kwargs)
    mode = envs.metadata.get("autoreset_mode", AutoresetMode.NEXT_STEP)
    if mode != AutoresetMode.NEXT_STEP:
        raise ConfigError(f"env {cfg.id!r} uses autoreset mode {mode}; rollouts expect NEXT_STEP (gymnasium's default)")
    return envs
