"""Evaluate a trained policy: run N episodes, report mean/std return and length (+ episode infos)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from rlhf.checkpoint import latest_checkpoint, load_checkpoint
from rlhf.config import Config, load_config
from rlhf.errors import ConfigError
from rlhf.trainer import build_policy, resolve_device
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
    envs = make_vec_env(cfg.env, num_envs=1, extra_kwargs=cfg.env.eval_kwargs)
    policy = build_policy(cfg, envs.single_observation_space, envs.single_action_space, device)
    envs.close()
    policy.load_state_dict(load_checkpoint(ckpt)["policy"])
    policy.eval()
    return cfg, policy


@torch.inference_mode()
def run_episodes(policy, cfg: Config, episodes: int, deterministic: bool = True, seed: int | None = None,
                 on_step=None) -> dict:
    """Play ``episodes`` full episodes in one env with ``eval_kwargs`` applied; summarise them."""
    envs = make_vec_env(cfg.env, num_envs=1, extra_kwargs=cfg.env.eval_kwargs)
    device = next(iter([*policy.parameters(), *policy.buffers()]), torch.empty(0)).device
    obs, _ = envs.reset(seed=cfg.seed + 10_000 if seed is None else seed)
    returns, lengths, infos = [], [], []
    ep_ret, ep_len = 0.0, 0
    try:
        while len(returns) < episodes:
            actions, _, _ = policy.act(torch.as_tensor(obs, device=device), deterministic=deterministic)
            env_actions = policy.env_actions(actions)
            next_obs, reward, terminated, truncated, info = envs.step(env_actions)
            ep_ret += float(reward[0])
            ep_len += 1
            if on_step is not None:
                on_step(obs, env_actions, reward, terminated | truncated, info, envs)
            if terminated[0] or truncated[0]:
                returns.append(ep_ret)
                lengths.append(ep_len)
                infos.append({k: (v[0].item() if hasattr(v[0], "item") else v[0]) for k, v in info.items()
                              if not k.startswith("_") and isinstance(v, np.ndarray) and info.get("_" + k, [True])[0]})
                ep_ret, ep_len = 0.0, 0
                # NEXT_STEP autoreset (checked in make_vec_env): the next step only resets the env.
                next_obs, *_ = envs.step(env_actions)
            obs = next_obs
    finally:
        envs.close()
    return {
        "mean_return": float(np.mean(returns)),
        "std_return": float(np.std(returns)),
        "mean_length": float(np.mean(lengths)),
        "episodes": len(returns),
        "returns": returns,
        "episode_infos": infos,
    }
