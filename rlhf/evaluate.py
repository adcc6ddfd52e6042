"""Evaluate a trained policy: run N episodes, report mean/std return and length (+ episode infos).

Evaluation is reproducible by default, as Stable-Baselines3's ``evaluate_policy``: the most likely action,
and the episodes fixed by a seed (the run's seed + 10 000 unless given). Sampled actions draw from torch
seeded the same way, so they repeat too, inside a forked random state that leaves the caller's alone.
"""
from __future__ import annotations

import math
import os
from datetime import datetime
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from rlhf.build import build_policy, resolve_device
from rlhf.checkpoint import checkpoint_problem, latest_valid, load_checkpoint, load_weights
from rlhf.config import Config, load_config
from rlhf.errors import ConfigError
from rlhf.integrations import for_env
from rlhf.rollout import Collector, make_rollout
from rlhf.vec_env import make_vec_env


def locate(target: str | Path) -> tuple[Path, Path]:
    """(run_dir, checkpoint) from a run directory (its newest usable checkpoint: unreadable newer ones are
    skipped with a warning) or a checkpoint file inside one; Stable-Baselines3 runs give their ``.zip``."""
    from rlhf.backends.sb3_checkpoints import locate_sb3

    found = locate_sb3(target)
    if found is not None:
        return found
    target = Path(target)
    if target.is_file():
        problem = checkpoint_problem(target, ("policy",))
        if problem:
            raise ConfigError(f"checkpoint {str(target)!r} {problem}")
        return target.parent.parent, target
    if not target.is_dir():
        raise ConfigError(f"{str(target)!r} is neither a run directory nor a checkpoint file")
    found = latest_valid(target, ("policy",))
    if found is None:
        raise ConfigError(f"{str(target)!r} holds no checkpoints (expected {target / 'checkpoints'}/step_*.pt)")
    return target, found[0]


SEED_OFFSET = 10_000  # evaluation episodes differ from the training run's first ones, but are fixed
# env kwargs that name user code the env would import, and output files one evaluation writes
USER_CODE_KWARGS = ("reward_function",)
OUTPUT_KWARGS = ("simtrace_path",)
NO_USER_CODE = "not available with --no-user-code (the run's reward function was not run)"
# animated formats Pillow writes: extension -> Pillow format name
VIDEO_FORMATS = {".gif": "GIF", ".webp": "WEBP", ".apng": "PNG", ".png": "PNG"}


def eval_seed(cfg: Config, seed: int | None) -> int:
    """The seed that fixes the evaluation episodes: ``seed``, or the run's seed + 10 000."""
    return cfg.seed + SEED_OFFSET if seed is None else seed


def load_policy(target: str | Path, overrides: list[str] | None = None, user_code: bool = True):
    """(config, policy, run_dir) restored from a run directory or checkpoint; overrides apply to the config.

    ``user_code=False`` swaps the run's reward file for the env's built-in (see ``without_user_code``)."""
    run_dir, ckpt = locate(target)
    cfg = load_config(run_dir / "config.yaml", overrides)
    if not user_code:
        cfg = without_user_code(cfg)[0]
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    device = resolve_device(cfg.device)
    # spaces only: the run's own files ({run_dir}/user/...) are read, its output files are not opened
    no_outputs = {k: None for k in OUTPUT_KWARGS if k in cfg.env.kwargs or k in cfg.env.eval_kwargs}
    if ckpt.suffix == ".zip":  # backend: sb3
        from rlhf.backends.sb3 import load_actor

        return cfg, load_actor(cfg, run_dir, ckpt, {**cfg.env.eval_kwargs, **no_outputs}, device), run_dir
    envs = make_vec_env(cfg.env, num_envs=1, extra_kwargs={**cfg.env.eval_kwargs, **no_outputs}, run_dir=run_dir)
    policy = build_policy(cfg, envs.single_observation_space, envs.single_action_space, device)
    envs.close()
    load_weights(policy, load_checkpoint(ckpt)["policy"], ckpt)
    policy.eval()
    return cfg, deployed(policy, cfg), run_dir


def without_user_code(cfg: Config) -> tuple[Config, list[str]]:
    """``cfg`` with every user ``.py`` file named in the env kwargs dropped, so the env falls back to its
    built-in; returns (config, the dropped keys). A run directory from elsewhere can then be evaluated with
    its checkpoint alone (weights are loaded with ``weights_only``): no file of its runs here."""
    if ":" in cfg.env.id:
        module = cfg.env.id.split(":", 1)[0]
        raise ConfigError(f"--no-user-code: env.id = {cfg.env.id!r} imports module {module!r} to register the env; "
                          "evaluate it without --no-user-code, or with env.id=<registered id>")
    dropped: list[str] = []
    sections = {}
    for name in ("kwargs", "eval_kwargs"):
        kwargs = dict(getattr(cfg.env, name))
        for key in USER_CODE_KWARGS:
            value = kwargs.get(key)
            if isinstance(value, str) and value.strip().endswith(".py"):
                del kwargs[key]
                dropped.append(f"env.{name}.{key}")
        sections[name] = kwargs
    env = cfg.env.model_copy(update=sections)
    return cfg.model_copy(update={"env": env}), dropped


def deployed(policy, cfg: Config):
    """The network that acts: the rollout copy (e.g. int8) if training used one, int8 after QAT."""
    from rlhf.precision import make_actor, quantize_model

    if cfg.precision.rollout != "fp32":
        return make_actor(policy, cfg.precision.rollout)
    if cfg.precision.qat:
        return quantize_model(policy, cfg.precision.qat)
    return policy


class FrameRecorder(gym.vector.VectorWrapper):
    """Keeps the first sub-env's rendered frame after the reset and after each step of its first episode.

    The frame after the reset is checked, so an env that renders no RGB frames fails before any episode."""

    def __init__(self, env, env_id: str) -> None:
        super().__init__(env)
        self.env_id = env_id
        self.frames: list[np.ndarray] = []
        self.recording = True

    def reset(self, **kwargs):
        out = self.env.reset(**kwargs)
        try:
            frame = _frame(self.env.render())
        except Exception as exc:  # noqa: BLE001 - e.g. gymnasium's DependencyNotInstalled (no pygame)
            first = (str(exc).strip().splitlines() or [""])[0]
            raise ConfigError(f"--video: env {self.env_id!r} cannot render RGB frames ({type(exc).__name__}: "
                              f"{first})") from None
        if frame.ndim != 3:
            raise ConfigError(f"--video: env {self.env_id!r} renders no RGB frames (it needs "
                              "render_mode='rgb_array')")
        self.frames.append(frame)
        return out

    def step(self, actions):
        out = self.env.step(actions)
        if self.recording:
            self.frames.append(_frame(self.env.render()))
            self.recording = not (out[2][0] or out[3][0])
        return out


def run_episodes(policy, cfg: Config, episodes: int, deterministic: bool = True, seed: int | None = None,
                 run_dir: str | Path | None = None, video: str | Path | None = None,
                 env_kwargs: dict | None = None) -> dict:
    """Play ``episodes`` full episodes in one env, through the training collector's stepping (one episode
    per collect, so memory stays one episode); summarise them.

    ``env_kwargs`` (default ``cfg.env.eval_kwargs``) are merged over ``cfg.env.kwargs``. ``seed`` (default
    ``eval_seed``) resets the env and, for sampled actions, seeds torch inside a forked random state, so the
    same call gives the same numbers and the caller's random stream is left as it was. With ``video``, the
    first episode is rendered (``render_mode="rgb_array"``) and saved as an animation.
    """
    if episodes < 1:
        raise ConfigError(f"--episodes {episodes}: evaluate at least 1 episode")
    seed = eval_seed(cfg, seed)
    extra = dict(cfg.env.eval_kwargs if env_kwargs is None else env_kwargs)
    if video is not None:
        extra["render_mode"] = "rgb_array"
    device = next(iter([*policy.parameters(), *policy.buffers()]), torch.empty(0)).device
    envs = make_vec_env(cfg.env, num_envs=1, extra_kwargs=extra, run_dir=run_dir)
    if video is not None:
        envs = FrameRecorder(envs, cfg.env.id)
    collector = Collector(envs, device, stats_window=episodes)
    rollout = make_rollout(envs, 512)
    try:
        with torch.random.fork_rng(devices=[] if device.type != "cuda" else None):
            torch.manual_seed(seed)
            collector.reset(seed=seed)
            for _ in range(episodes):
                collector.collect(policy, rollout, episodes=1, deterministic=deterministic)
    finally:
        envs.close()
    if video is not None:
        save_animation(envs.frames, video, fps=envs.metadata.get("render_fps", 30))
    returns, lengths, infos = list(collector.stats.returns), list(collector.stats.lengths), list(collector.stats.infos)
    result = {
        "mean_return": float(np.mean(returns)),
        "std_return": float(np.std(returns)),
        "mean_length": float(np.mean(lengths)),
        "episodes": len(returns),
        "seed": seed,
        "deterministic": deterministic,
    }
    hooks = for_env(cfg.env.id)
    if hooks is not None:
        result.update(hooks.eval_summary(infos))
    result["returns"] = returns
    result["lengths"] = lengths
    result["episode_infos"] = infos
    return result


def hide_returns(result: dict, reason: str = NO_USER_CODE) -> dict:
    """``result`` with the returns replaced by null and ``reason``: they came from a reward that is not the run's."""
    out = dict(result)
    reasons = dict(out.pop("null_reasons", {}))
    for key in ("mean_return", "std_return", "returns"):
        if key in out:
            out[key] = None
            reasons[key] = reason
    out["null_reasons"] = reasons
    return out


def json_ready(result: dict) -> dict:
    """``result`` as standard JSON allows (no NaN or Infinity): every null, including non-finite numbers
    made null, gets a reason under ``null_reasons``."""
    reasons = dict(result.get("null_reasons") or {})

    def clean(key: str, value):
        if isinstance(value, (float, np.floating)) and not math.isfinite(value):
            reasons.setdefault(key, f"not a finite number ({float(value)})")
            return None
        if isinstance(value, dict):
            return {k: clean(f"{key}.{k}", v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            items = [clean(key, v) for v in value]
            return items
        if isinstance(value, np.generic):
            return value.item()
        return value

    out = {k: clean(k, v) for k, v in result.items() if k != "null_reasons"}
    for key, value in out.items():
        if value is None:
            reasons.setdefault(key, "not measured")
    if reasons:
        out["null_reasons"] = reasons
    return out


# ----------------------------------------------------------------------------- naming an evaluation's outputs

def eval_name(cfg: Config, env_kwargs: dict, now: datetime | None = None) -> str:
    """``<track or env>-<YYYYmmdd-HHMMSS>``: names one evaluation's files, so the next one keeps them."""
    track = env_kwargs.get("track")
    what = Path(str(track)).stem if isinstance(track, (str, Path)) and str(track) else cfg.env.id.split(":")[-1]
    what = "".join(c if c.isalnum() or c in "-_." else "_" for c in what)
    return f"{what}-{(now or datetime.now()):%Y%m%d-%H%M%S}"


def stamped(path: str | Path, name: str) -> str:
    """``evaluation-simtrace.csv`` -> ``evaluation-<name>-simtrace.csv``: the name goes before the last
    dash-separated word of the file name (which tools glob for), or at its end."""
    path = Path(path)
    head, sep, last = path.stem.rpartition("-")
    stem = f"{head}-{name}-{last}" if sep else f"{path.stem}-{name}"
    return str(path.with_name(stem + path.suffix))


def output_kwargs(env_kwargs: dict, name: str) -> dict:
    """The env kwargs with each output file (``OUTPUT_KWARGS``) renamed for this evaluation."""
    return {k: stamped(v, name) if k in OUTPUT_KWARGS and isinstance(v, (str, Path)) and str(v) else v
            for k, v in env_kwargs.items()}


def default_video_path(run_dir: Path, name: str) -> Path:
    return Path(run_dir) / "videos" / f"evaluation-{name}.gif"


def check_video_path(path: str | Path) -> Path:
    """Refuse, before any episode runs, a video path Pillow cannot write as an animation or a folder that
    cannot be written."""
    from PIL import Image

    path = Path(path)
    Image.init()
    allowed = [ext for ext, fmt in VIDEO_FORMATS.items() if fmt in Image.SAVE_ALL]
    if path.is_dir():
        raise ConfigError(f"--video {str(path)!r}: is a folder; give a file name such as {str(path / 'lap.gif')!r}")
    if path.suffix.lower() not in allowed:
        raise ConfigError(f"--video {str(path)!r}: cannot write {path.suffix or 'a file without extension'} "
                          f"(allowed: {', '.join(allowed)})")
    check_writable_folder(path.parent, f"--video {str(path)!r}")
    return path


def check_writable_folder(folder: str | Path, what: str, hint: str = "") -> None:
    """Raise ConfigError unless ``folder`` exists as a writable folder or can be created."""
    folder = Path(folder).absolute()
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        raise ConfigError(f"{what}: {str(existing)!r} is a file, not a folder{hint}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{what}: folder {str(existing)!r} is not writable{hint}")


def _frame(rendered) -> np.ndarray:
    """Vector envs render one frame per sub-env (tuple) or one frame for the batch."""
    if isinstance(rendered, (tuple, list)):
        rendered = rendered[0]
    return np.asarray(rendered)


def save_animation(frames: list[np.ndarray], path: str | Path, fps: float = 30) -> Path:
    """Write ``frames`` as an animated GIF, WebP or PNG (by the extension), looping."""
    from PIL import Image

    path = check_video_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    images = [Image.fromarray(f.astype(np.uint8)) for f in frames]
    images[0].save(path, format=VIDEO_FORMATS[path.suffix.lower()], save_all=True, append_images=images[1:],
                   duration=int(1000 / fps), loop=0)
    return path


def name_outputs(cfg: Config, run_dir: Path, env_kwargs: dict, video: bool = False,
                 now: datetime | None = None) -> tuple[dict, Path | None]:
    """(env kwargs with this evaluation's output files, default video path or None): named by ``eval_name``,
    with ``-2``, ``-3``... when an evaluation in the same second already took the name."""
    base = eval_name(cfg, env_kwargs, now)
    for n in range(1, 10_000):
        name = base if n == 1 else f"{base}-{n}"
        kwargs = output_kwargs(env_kwargs, name)
        video_path = default_video_path(run_dir, name) if video else None
        paths = [Path(kwargs[k]) for k in OUTPUT_KWARGS if kwargs.get(k)] + ([video_path] if video_path else [])
        if not any(p.exists() for p in paths):
            return kwargs, video_path
    raise ConfigError(f"{str(run_dir)!r}: no free name for evaluation outputs {base}-N")


def check_outputs_writable(env_kwargs: dict) -> None:
    """Refuse, before any episode runs, an output file (``OUTPUT_KWARGS``) in a folder that cannot be written."""
    for key in OUTPUT_KWARGS:
        if env_kwargs.get(key):
            check_writable_folder(Path(env_kwargs[key]).parent, f"env.eval_kwargs.{key} = {str(env_kwargs[key])!r}",
                                  f"; evaluate without it with env.eval_kwargs.{key}=null")
