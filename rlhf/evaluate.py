"""Evaluate a trained policy: run N episodes, report mean/std return and length (+ episode infos)."""
from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from rlhf.build import build_policy, resolve_device
from rlhf.checkpoint import latest_checkpoint, load_checkpoint
from rlhf.config import Config, load_config
from rlhf.errors import ConfigError
from rlhf.integrations import for_env
from rlhf.rollout import Collector, make_rollout
from rlhf.vec_env import make_vec_env


def locate(target: str | Path) -> tuple[Path, Path]:
    """(run_dir, checkpoint) from a run directory or a checkpoint file inside one."""
    target = Path(target)
    if target.is_file():
        return target.parent.parent, target
    if not target.is_dir():
        raise ConfigError(f"{str(target)!r} is neither a run directory nor a checkpoint file")
    ckpt = latest_checkpoint(target)
    if ckpt is None:
        raise ConfigError(f"{str(target)!r} holds no checkpoints (expected {target / 'checkpoints'}/step_*.pt)")
    return target, ckpt


def load_policy(target: str | Path, overrides: list[str] | None = None):
    """(config, policy) restored from a run directory or checkpoint; overrides apply to the config."""
    run_dir, ckpt = locate(target)
    cfg = load_config(run_dir / "config.yaml", overrides)
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    device = resolve_device(cfg.device)
    envs = make_vec_env(cfg.env, num_envs=1, extra_kwargs=cfg.env.eval_kwargs)  # spaces only
    policy = build_policy(cfg, envs.single_observation_space, envs.single_action_space, device)
    envs.close()
    policy.load_state_dict(load_checkpoint(ckpt)["policy"])
    policy.eval()
    return cfg, deployed(policy, cfg), run_dir


def deployed(policy, cfg: Config):
    """The network that acts: the rollout copy (e.g. int8) if training used one, int8 after QAT."""
    from rlhf.precision import make_actor, quantize_model

    if cfg.precision.rollout != "fp32":
        return make_actor(policy, cfg.precision.rollout)
    if cfg.precision.qat:
        return quantize_model(policy, cfg.precision.qat)
    return policy


class FrameRecorder(gym.vector.VectorWrapper):
    """Keeps the first sub-env's rendered frame after the reset and after each step of its first episode."""

    def __init__(self, env) -> None:
        super().__init__(env)
        self.frames: list[np.ndarray] = []
        self.recording = True

    def reset(self, **kwargs):
        out = self.env.reset(**kwargs)
        self.frames.append(_frame(self.env.render()))
        return out

    def step(self, actions):
        out = self.env.step(actions)
        if self.recording:
            self.frames.append(_frame(self.env.render()))
            self.recording = not (out[2][0] or out[3][0])
        return out


def run_episodes(policy, cfg: Config, episodes: int, deterministic: bool = True, seed: int | None = None,
                 run_dir: str | Path | None = None, video: str | Path | None = None) -> dict:
    """Play ``episodes`` full episodes in one env with ``eval_kwargs`` applied, through the training
    collector's stepping (one episode per collect, so memory stays one episode); summarise them.

    With ``video``, the first episode is rendered (``render_mode="rgb_array"``) and saved as a GIF.
    """
    extra = dict(cfg.env.eval_kwargs)
    if video is not None:
        extra["render_mode"] = "rgb_array"
    envs = make_vec_env(cfg.env, num_envs=1, extra_kwargs=extra, run_dir=run_dir)
    if video is not None:
        envs = FrameRecorder(envs)
    device = next(iter([*policy.parameters(), *policy.buffers()]), torch.empty(0)).device
    collector = Collector(envs, device, stats_window=episodes)
    rollout = make_rollout(envs, 512)
    try:
        collector.reset(seed=cfg.seed + 10_000 if seed is None else seed)
        for _ in range(episodes):
            collector.collect(policy, rollout, episodes=1, deterministic=deterministic)
    finally:
        envs.close()
    if video is not None:
        save_gif(envs.frames, video, fps=envs.metadata.get("render_fps", 30))
    returns, lengths, infos = list(collector.stats.returns), list(collector.stats.lengths), list(collector.stats.infos)
    result = {
        "mean_return": float(np.mean(returns)),
        "std_return": float(np.std(returns)),
        "mean_length": float(np.mean(lengths)),
        "episodes": len(returns),
    }
    hooks = for_env(cfg.env.id)
    if hooks is not None:
        result.update(hooks.eval_summary(infos))
    result["returns"] = returns
    result["episode_infos"] = infos
    return result


def _frame(rendered) -> np.ndarray:
    """Vector envs render one frame per sub-env (tuple) or one frame for the batch."""
    if isinstance(rendered, (tuple, list)):
        rendered = rendered[0]
    return np.asarray(rendered)


def save_gif(frames: list[np.ndarray], path: str | Path, fps: float = 30) -> Path:
    from PIL import Image

    if not frames or frames[0] is None or frames[0].ndim != 3:
        raise ConfigError("--video: this env renders no RGB frames (it needs render_mode='rgb_array')")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    images = [Image.fromarray(f.astype(np.uint8)) for f in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    return path
