"""Stable-Baselines3's PPO trained from our config (``backend: sb3``): the same env and kwargs, the same
hyperparameters under SB3's names, seed, TensorBoard tags, run-directory layout, signals and ``rlhf eval``.

SB3 does all the learning (``PPO.learn``); this module translates and keeps the run directory:

- ``refusals`` names every setting SB3's PPO cannot express, with the reason and the fix;
- ``ppo_kwargs`` / ``policy_kwargs`` map our names to SB3's (``lin_X`` schedules become callables);
- ``make_env`` builds SB3's ``DummyVecEnv`` (``SubprocVecEnv`` for ``vectorization: async``) over
  ``gymnasium.make(env.id, **kwargs)`` with ``{run_dir}`` filled in;
- ``SB3Trainer`` holds the run-directory lock, writes ``config.yaml``, logs through SB3's logger into the run
  directory, saves ``checkpoints/step_<12 digits>.zip`` every ``checkpoint.every`` steps, stops cleanly on
  SIGINT/SIGTERM (after a checkpoint) and resumes from the newest checkpoint;
- ``load_policy`` gives ``rlhf eval`` the trained policy behind the interface ``rlhf.rollout.Collector``
  steps envs with, so evaluation runs the same episode runner as for our own runs.

Checkpoints are never unpickled: a model is rebuilt from ``config.yaml`` and SB3's ``set_parameters`` loads
the weights and optimizer state (``torch.load(weights_only=True)``); step counters come from the zip's JSON.
"""
from __future__ import annotations

import functools
import math
import os
import weakref
from collections import deque
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import configure
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.preprocessing import is_image_space
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv
from torch import nn

from rlhf.backends.sb3_checkpoints import counters, latest_valid_zip, list_zips, save_zip
from rlhf.build import resolve_device
from rlhf.checkpoint import FROZEN_ON_RESUME, latest_checkpoint, refuse_frozen_changes, write_config
from rlhf.config import Config, load_config
from rlhf.errors import ConfigError
from rlhf.integrations import for_env
from rlhf.run_dir import RunDirLock
from rlhf.schedules import parse_schedule, schedule_value
from rlhf.signals import StopFlag
from rlhf.vec_env import _ensure_registered, env_errors, env_kwargs

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "elu": nn.ELU, "gelu": nn.GELU, "silu": nn.SiLU}
OUTPUT_KWARGS = ("simtrace_path",)  # env kwargs naming a file each env writes: one file per env
FROZEN_ON_RESUME_SB3 = FROZEN_ON_RESUME  # "backend" included: an rlhf run cannot continue in SB3


# ----------------------------------------------------------------------------- what SB3 can and cannot express

def refusals(cfg: Config) -> list[str]:
    """One ``key = value: why; fix`` per setting SB3's PPO cannot express (empty when it can run ``cfg``)."""
    ppo, pol, prec = cfg.ppo, cfg.policy, cfg.precision
    out: list[str] = []

    def no(key: str, value, why: str, fix: str) -> None:
        out.append(f"{key} = {value!r}: {why}; pass {fix}")

    if ppo.loss_type == "huber":
        no("ppo.loss_type", "huber", "SB3's PPO has a mean-squared-error value loss only", "ppo.loss_type=mse")
    if ppo.policy_loss == "kl_penalty":
        no("ppo.policy_loss", "kl_penalty", "SB3's PPO has the clipped surrogate only", "ppo.policy_loss=clip")
    if ppo.episodes_between_updates is not None:
        no("ppo.episodes_between_updates", ppo.episodes_between_updates,
           "SB3's PPO collects a fixed number of steps per env, not whole episodes",
           "ppo.episodes_between_updates=null ppo.n_steps=N (steps per env per update)")
    if ppo.optimizer == "flat_adam":
        no("ppo.optimizer", "flat_adam", "the flat-buffer Adam is rlhf's own (SB3 uses torch Adam)", "ppo.optimizer=adam")
    if ppo.skip_nonfinite_updates:
        no("ppo.skip_nonfinite_updates", True, "SB3 has no skipping of non-finite updates",
           "ppo.skip_nonfinite_updates=false")
    if ppo.normalize_reward:
        no("ppo.normalize_reward", True, "SB3 scales rewards with VecNormalize, whose statistics its checkpoints "
           "do not hold", "ppo.normalize_reward=false")
    if pol.normalize_obs:
        no("policy.normalize_obs", True, "SB3 normalizes observations with VecNormalize, whose statistics its "
           "checkpoints do not hold", "policy.normalize_obs=false")
    if pol.moe is not None:
        no("policy.moe", pol.moe.model_dump(), "SB3's policies have no Mixture-of-Experts layers", "policy.moe=null")
    if pol.fused == "on":
        no("policy.fused", "on", "the fused MLP is rlhf's own", "policy.fused=auto")
    for key in ("train", "rollout"):
        if getattr(prec, key) != "fp32":
            no(f"precision.{key}", getattr(prec, key), "SB3 trains and acts in fp32 only", f"precision.{key}=fp32")
    if prec.qat is not None:
        no("precision.qat", prec.qat, "SB3 has no quantization-aware training", "precision.qat=null")
    if cfg.env.vectorization == "native":
        no("env.vectorization", "native", "SB3 steps single gymnasium envs (DummyVecEnv, SubprocVecEnv)",
           "env.vectorization=sync (or async)")
    if cfg.eval.every:
        no("eval.every", cfg.eval.every, "evaluation during training is not wired for sb3",
           "eval.every=0 and evaluate with rlhf eval RUN_DIR")
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        no("WORLD_SIZE", os.environ["WORLD_SIZE"], "data-parallel training (torchrun) covers backend=rlhf",
           "backend=rlhf, or start the sb3 run with rlhf train")
    if ppo.rollout_steps * cfg.env.num_envs < 2:
        no("ppo.n_steps", ppo.rollout_steps, "SB3 needs ppo.n_steps * env.num_envs > 1", "ppo.n_steps=2 or more")
    return out


def check(cfg: Config) -> None:
    """ConfigError (one line, every refused setting named) unless SB3's PPO can run ``cfg``."""
    if cfg.text is not None:
        raise ConfigError("backend = 'sb3': Stable-Baselines3 trains gym envs; text runs use backend=rlhf")
    problems = refusals(cfg)
    if problems:
        raise ConfigError("backend = 'sb3' cannot run this config: " + "; ".join(problems))


def _schedule(value: float | str):
    """A float stays a float; ``lin_X`` becomes SB3's callable of progress_remaining (X at 1, 0 at 0)."""
    initial, linear = parse_schedule(value)
    return functools.partial(schedule_value, value) if linear else initial


def ppo_kwargs(cfg: Config) -> dict:
    """``PPO(...)`` keyword arguments from ``cfg.ppo`` (and the seed)."""
    p = cfg.ppo
    return dict(
        n_steps=p.rollout_steps, batch_size=p.batch_size, n_epochs=p.epochs,
        learning_rate=_schedule(p.learning_rate), clip_range=_schedule(p.clip_range), clip_range_vf=p.clip_value,
        gamma=p.discount_factor, gae_lambda=p.gae_lambda, ent_coef=p.entropy_coef, vf_coef=p.vf_coef,
        max_grad_norm=math.inf if p.max_grad_norm is None else p.max_grad_norm,  # inf: measured, never clipped
        target_kl=p.target_kl, normalize_advantage=p.normalize_advantage, seed=cfg.seed,
    )


def policy_kwargs(cfg: Config, image: bool) -> dict:
    """``policy_kwargs`` from ``cfg.policy``: separate actor and critic MLPs of ``hidden_sizes``."""
    pol = cfg.policy
    kwargs = dict(net_arch=dict(pi=list(pol.hidden_sizes), vf=list(pol.hidden_sizes)),
                  activation_fn=ACTIVATIONS[pol.activation], ortho_init=pol.ortho_init,
                  log_std_init=pol.log_std_init, share_features_extractor=pol.shared)
    if image:
        kwargs["features_extractor_kwargs"] = {"features_dim": pol.cnn_features}
    return kwargs


def build_model(cfg: Config, env: VecEnv, device: torch.device | str = "cpu") -> PPO:
    """SB3's PPO for ``env`` from ``cfg`` (``CnnPolicy`` for image observations, else ``MlpPolicy``)."""
    image = is_image_space(env.observation_space, check_channels=False)
    if cfg.policy.shared and not image:
        raise ConfigError("backend = 'sb3' cannot run this config: policy.shared = True: SB3 shares only the "
                          "features extractor, which for vector observations has no weights (no shared MLP "
                          "trunk); pass policy.shared=false")
    return PPO("CnnPolicy" if image else "MlpPolicy", env, policy_kwargs=policy_kwargs(cfg, image),
               device=device, verbose=0, **ppo_kwargs(cfg))


# ----------------------------------------------------------------------------- envs

def _make_one(env_id: str, kwargs: dict) -> gym.Env:
    spec = _ensure_registered(env_id)  # also in a SubprocVecEnv worker: registers the project's envs there
    return Monitor(gym.make(spec.id, **kwargs))


def _own_outputs(kwargs: dict, rank: int) -> dict:
    """Env ``rank``'s kwargs: env 0 writes the configured output files, env i>0 its own copy named
    ``training-env<i>-simtrace.csv`` (separate single envs cannot share one open file the way a batched env's
    cars do; the name keeps the last dash-separated word that tools glob for, as ``rlhf.evaluate.stamped``)."""
    def own(path: str) -> str:
        p = Path(path)
        head, sep, last = p.stem.rpartition("-")
        return str(p.with_name(f"{head}-env{rank}-{last}{p.suffix}" if sep else f"{p.stem}-env{rank}{p.suffix}"))

    if rank == 0:
        return dict(kwargs)
    return {k: own(v) if k in OUTPUT_KWARGS and isinstance(v, str) and v else v for k, v in kwargs.items()}


def make_env(cfg: Config, run_dir: str | Path | None, num_envs: int | None = None,
             extra_kwargs: dict | None = None) -> VecEnv:
    """SB3's vector env over ``gymnasium.make(env.id, **kwargs)`` (each env wrapped in SB3's ``Monitor``)."""
    n = num_envs or cfg.env.num_envs
    kwargs = env_kwargs(cfg.env, extra_kwargs, run_dir)
    _ensure_registered(cfg.env.id)
    fns = [functools.partial(_make_one, cfg.env.id, _own_outputs(kwargs, i)) for i in range(n)]
    with env_errors(cfg.env.id, kwargs):
        return (SubprocVecEnv if cfg.env.vectorization == "async" else DummyVecEnv)(fns)


# ----------------------------------------------------------------------------- training

class SB3Trainer:
    """One SB3 run in one run directory, with our trainer's surface (``train``, ``close``, ``finished``,
    ``global_step``, ``stop_reason``) so ``rlhf train`` drives it the same way.

    A resumed run continues the weights, the Adam state and the step counter (so the learning-rate and
    clip-range schedules) from the newest checkpoint; episodes in progress restart, on seeds moved on by the
    step count. It changes nothing on disk until its first checkpoint, which also commits ``config.yaml``.
    """

    def __init__(self, cfg: Config, run_dir: str | Path, resume: bool = False) -> None:
        check(cfg)  # before the lock: a refused config leaves nothing behind
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.env: VecEnv | None = None
        self.stop_reason: str | None = None
        self.stop = StopFlag()
        self.last_stats: dict[str, float] = {}
        self.lock = RunDirLock(self.run_dir).acquire()
        weakref.finalize(self, self.lock.release)
        try:
            self._build(resume)
        except BaseException:
            self.close()
            raise

    def _build(self, resume: bool) -> None:
        cfg, run_dir = self.cfg, self.run_dir
        if not resume and (list_zips(run_dir) or latest_checkpoint(run_dir) is not None):
            raise ConfigError(f"run directory {str(run_dir)!r} already holds checkpoints: continue it with "
                              f"--resume {run_dir}, or choose another --run-dir")
        found = self._find_resume_checkpoint() if resume else None
        if cfg.torch_threads:
            torch.set_num_threads(cfg.torch_threads)
        self.device = resolve_device(cfg.device)
        self.hooks = for_env(cfg.env.id)
        if self.hooks is not None:  # the run's own copies of user files, as our trainer makes them
            cfg = self.cfg = self.hooks.prepare_run(cfg, run_dir)
        self.env = make_env(cfg, run_dir)
        self.model = build_model(cfg, self.env, self.device)
        self._config_pending = found is not None
        if found is not None:
            self._load(found)
        else:
            write_config(cfg, run_dir)

    def _find_resume_checkpoint(self) -> Path:
        saved = self.run_dir / "config.yaml"
        refuse_frozen_changes(load_config(saved).model_dump(mode="json"), self.cfg.model_dump(mode="json"),
                              FROZEN_ON_RESUME_SB3, self.run_dir)
        found = latest_valid_zip(self.run_dir)
        if found is None:
            raise ConfigError(f"--resume {str(self.run_dir)!r}: no checkpoint found in {self.run_dir / 'checkpoints'} "
                              "(step_*.zip)")
        return found

    def _load(self, path: Path) -> None:
        try:
            self.model.set_parameters(str(path), exact_match=True, device=self.device)
        except (RuntimeError, ValueError, KeyError) as exc:
            detail = " ".join(str(exc).split())[:300]
            raise ConfigError(f"--resume {str(self.run_dir)!r}: checkpoint {path.name} does not fit this config "
                              f"(was config.yaml edited?): {detail}") from None
        saved = counters(path)
        self.model.num_timesteps, self.model._n_updates = saved["num_timesteps"], saved["_n_updates"]
        self.model.set_random_seed((self.cfg.seed + self.model.num_timesteps) % 2**31)  # fresh episodes

    @property
    def global_step(self) -> int:
        return int(self.model.num_timesteps) if getattr(self, "model", None) is not None else 0

    @property
    def finished(self) -> bool:
        return self.global_step >= self.cfg.total_timesteps

    def close(self) -> None:
        if self.env is not None:
            self.env.close()
            self.env = None
        self.lock.release()

    def save(self) -> Path:
        if self._config_pending:
            write_config(self.cfg, self.run_dir)
            self._config_pending = False
        return save_zip(self.model, self.run_dir, self.global_step, self.cfg.checkpoint.keep)

    def train(self) -> dict[str, float]:
        """``PPO.learn`` up to ``total_timesteps``, then a final checkpoint (also after SIGINT/SIGTERM)."""
        cfg = self.cfg
        if self.finished:
            self.close()
            return self.last_stats
        formats = (["stdout"] if cfg.logging.progress_bar else []) + (["tensorboard"] if cfg.logging.tensorboard else [])
        logger = configure(str(self.run_dir), formats)
        self.model.set_logger(logger)
        try:
            with self.stop:
                self.model.learn(cfg.total_timesteps - self.global_step, callback=_RunCallback(self),
                                 log_interval=cfg.logging.interval, reset_num_timesteps=False)
                self.save()
        finally:
            logger.close()
            self.close()
        return self.last_stats


class _RunCallback(BaseCallback):
    """Checkpoints every ``checkpoint.every`` steps (after the update that crossed it), the env's episode
    metrics (``deepracer/...``) and stop rules, and a clean stop on SIGINT/SIGTERM."""

    def __init__(self, trainer: SB3Trainer) -> None:
        super().__init__()
        self.trainer = trainer
        every = trainer.cfg.checkpoint.every
        self.next_ckpt = (trainer.global_step // every + 1) * every if every else None
        self.infos: deque = deque(maxlen=100)  # final infos of recent episodes, as rollout/ep_rew_mean's window
        self.episodes = 0
        self.rollout_start = trainer.global_step
        hooks = trainer.hooks
        self.rules = hooks.stop_conditions(trainer.cfg.env.kwargs, trainer.run_dir) \
            if hooks is not None and hasattr(hooks, "stop_conditions") else {}

    def _on_rollout_start(self) -> None:  # the previous update is done: its weights are what a checkpoint holds
        self.rollout_start = self.num_timesteps
        if self.next_ckpt is not None and self.num_timesteps >= self.next_ckpt:
            self.trainer.save()
            every = self.trainer.cfg.checkpoint.every
            self.next_ckpt = (self.num_timesteps // every + 1) * every

    def _on_step(self) -> bool:
        for i in np.flatnonzero(self.locals["dones"]):
            info = self.locals["infos"][i]
            self.infos.append({k: v for k, v in info.items() if isinstance(v, (bool, int, float, str, np.number))})
            self.episodes += 1
        if self.trainer.stop.requested or self.trainer.stop_reason:
            # the rollout begun is dropped untrained: the step count (and checkpoint name) stays at the last update
            self.model.num_timesteps = self.rollout_start
            return False
        return True

    def _on_rollout_end(self) -> None:
        trainer, model = self.trainer, self.model
        returns = [float(ep["r"]) for ep in model.ep_info_buffer or []]
        trainer.last_stats = {"rollout/ep_rew_mean": float(np.mean(returns)) if returns else float("nan")}
        if trainer.hooks is None:
            return
        for key, value in trainer.hooks.episode_metrics(list(self.infos)).items():
            if math.isfinite(value):
                self.logger.record(key, value)
        if self.rules:
            reason = trainer.hooks.stop_reason(self.rules, self.episodes, returns)
            if reason is not None:  # this rollout is still trained on, as in our trainer
                trainer.stop_reason = reason
                print(f"stopping: {reason}")


# ----------------------------------------------------------------------------- evaluation

class SB3Actor:
    """An SB3 policy behind the calls ``rlhf.rollout.Collector`` makes (``sample_actions``, ``env_actions``)
    and the ones ``rlhf.evaluate.run_episodes`` reads its device from (``parameters``, ``buffers``)."""

    def __init__(self, policy) -> None:
        self.policy = policy

    def parameters(self):
        return self.policy.parameters()

    def buffers(self):
        return self.policy.buffers()

    def sample_actions(self, obs: torch.Tensor, deterministic: bool = False) -> np.ndarray:
        """SB3's ``predict``: its own preprocessing (image transpose, scaling) and clipping to the action space."""
        actions, _ = self.policy.predict(obs.cpu().numpy(), deterministic=deterministic)
        return actions

    def env_actions(self, actions: np.ndarray) -> np.ndarray:
        return actions


def load_actor(cfg: Config, run_dir: Path, ckpt: Path, env_kwargs: dict, device: torch.device) -> SB3Actor:
    """The acting policy of an SB3 run for ``rlhf eval``: the model rebuilt from ``cfg`` over one env made with
    ``env_kwargs``, then the checkpoint's weights (``weights_only``; nothing is unpickled)."""
    env = make_env(cfg, run_dir, num_envs=1, extra_kwargs=env_kwargs)
    try:
        with torch.random.fork_rng(devices=[]):  # building the model seeds torch: leave the caller's stream alone
            model = build_model(_acting_only(cfg), env, device)
        model.set_parameters(str(ckpt), exact_match=True, device=device)
    except (RuntimeError, ValueError, KeyError) as exc:
        detail = " ".join(str(exc).split())[:300]
        raise ConfigError(f"checkpoint {str(ckpt)!r} does not fit {run_dir / 'config.yaml'}: {detail}") from None
    finally:
        env.close()
    model.policy.set_training_mode(False)
    return SB3Actor(model.policy)


def _acting_only(cfg: Config) -> Config:
    """``cfg`` for a model that only acts (one env): a rollout buffer of one minibatch, not ``n_steps``."""
    return cfg.model_copy(update={"ppo": cfg.ppo.model_copy(update={"n_steps": cfg.ppo.batch_size})})


def print_model_size(cfg: Config) -> int:
    """``rlhf model-size`` of an SB3 config: the policy SB3 would train, in the same table as ours."""
    from rlhf.precision import format_model_size_table, model_size_table

    env = make_env(cfg, None, num_envs=1)
    try:
        model = build_model(_acting_only(cfg), env, "cpu")
    finally:
        env.close()
    print(f"Stable-Baselines3 {type(model.policy).__name__}")
    print(format_model_size_table(model_size_table(model.policy, optimizer="adam", train_mode="fp32")))
    return 0
