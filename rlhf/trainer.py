"""The gym training loop: collect -> GAE -> PPO update -> log -> checkpoint, resumable bit for bit."""
from __future__ import annotations

import contextlib
import signal
import time
from pathlib import Path

import numpy as np
import torch

from rlhf.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from rlhf.config import Config, save_config
from rlhf.env_state import get_env_state, set_env_state
from rlhf.errors import ConfigError
from rlhf.integrations import for_env
from rlhf.logger import Logger
from rlhf.optim import make_optimizer
from rlhf.policies import ActorCritic
from rlhf.ppo.update import adapt_kl_coef, ppo_update
from rlhf.precision import Precision
from rlhf.rollout import Collector, RewardScaler, Rollout
from rlhf.schedules import schedule_value
from rlhf.vec_env import make_vec_env


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device = 'cuda': no CUDA device is available (allowed here: auto, cpu)")
    return torch.device(name)


def build_policy(cfg: Config, obs_space, action_space, device: torch.device) -> ActorCritic:
    policy = ActorCritic(obs_space, action_space, cfg.policy)
    if cfg.precision.qat:
        from rlhf.precision import prepare_qat

        policy = prepare_qat(policy, cfg.precision.qat)
    return policy.to(device)


class StopFlag:
    """Turns SIGINT/SIGTERM into a request to checkpoint and exit at the next update boundary."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = {}

    def __enter__(self) -> "StopFlag":
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:  # second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class Trainer:
    """Owns the env, networks, optimizer and counters of one run directory."""

    def __init__(self, cfg: Config, run_dir: str | Path, resume: bool = False) -> None:
        self.cfg, self.run_dir = cfg, Path(run_dir)
        if not resume and latest_checkpoint(self.run_dir) is not None:
            raise ConfigError(f"run directory {str(self.run_dir)!r} already holds checkpoints: continue it with "
                              f"--resume {self.run_dir}, or choose another --run-dir")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if cfg.torch_threads:
            torch.set_num_threads(cfg.torch_threads)
        torch.manual_seed(cfg.seed)
        self.device = resolve_device(cfg.device)
        self.envs = make_vec_env(cfg.env, run_dir=self.run_dir)
        self.hooks = for_env(cfg.env.id)
        obs_space, act_space = self.envs.single_observation_space, self.envs.single_action_space
        self.policy = build_policy(cfg, obs_space, act_space, self.device)
        self.optimizer = make_optimizer(self.policy, schedule_value(cfg.ppo.learning_rate, 1.0))
        try:
            self.precision = Precision(cfg.precision.train, self.device, model=self.policy)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        self.actor = self._make_actor()
        scaler = RewardScaler(self.envs.num_envs, cfg.ppo.discount_factor) if cfg.ppo.normalize_reward else None
        self.collector = Collector(self.envs, self.device, scaler)
        obs_dtype = torch.uint8 if obs_space.dtype == np.uint8 else torch.float32
        act_shape, act_dtype = ((), torch.int64) if not self.policy.continuous else (act_space.shape, torch.float32)
        capacity = cfg.ppo.rollout_steps if cfg.ppo.episodes_between_updates is None else 256
        self.rollout = Rollout(self.envs.num_envs, obs_space.shape, obs_dtype, act_shape, act_dtype, capacity)
        self.global_step, self.updates, self.kl_coef = 0, 0, cfg.ppo.kl_coef
        self.last_stats: dict[str, float] = {}
        if resume:
            self._load(latest_checkpoint(self.run_dir))
        else:
            self.collector.reset(seed=cfg.seed)
        save_config(cfg, self.run_dir / "config.yaml")

    # ------------------------------------------------------------------ actor copy for rollouts
    def _make_actor(self):
        if self.cfg.precision.rollout == "fp32":
            return self.policy
        from rlhf.precision import make_actor

        return make_actor(self.policy, self.cfg.precision.rollout)

    def _refresh_actor(self) -> None:
        if self.actor is not self.policy:
            from rlhf.precision import refresh_actor

            self.actor = refresh_actor(self.actor, self.policy)

    # ------------------------------------------------------------------ the loop
    def train(self) -> dict[str, float]:
        cfg = self.cfg
        logger = Logger(self.run_dir, cfg.logging, cfg.total_timesteps, start_step=self.global_step)
        if self.updates == 0:
            logger.text("config", "```yaml\n" + (self.run_dir / "config.yaml").read_text() + "\n```")
            logger.hparams(_flat_hparams(cfg), ("rollout/ep_rew_mean", "train/value_loss"))
        next_ckpt = self._next_checkpoint_step()
        try:
            with StopFlag() as stop:
                while self.global_step < cfg.total_timesteps and not stop.requested:
                    stats = self.iteration()
                    if self.updates % cfg.logging.interval == 0:
                        stats["time/fps"] = logger.fps(self.global_step)
                        logger.log(stats, self.global_step)
                    if cfg.checkpoint.every and self.global_step >= next_ckpt:
                        self.save()
                        next_ckpt = self._next_checkpoint_step()
                self.save()
        finally:
            logger.close()
            self.envs.close()
        return self.last_stats

    def _next_checkpoint_step(self) -> int:
        every = self.cfg.checkpoint.every
        return (self.global_step // every + 1) * every if every else self.cfg.total_timesteps

    def iteration(self) -> dict[str, float]:
        """One collect + update cycle. Returns the stats logged for it."""
        cfg, ppo = self.cfg, self.cfg.ppo
        t0 = time.perf_counter()
        progress_remaining = max(1.0 - self.global_step / cfg.total_timesteps, 0.0)
        lr = schedule_value(ppo.learning_rate, progress_remaining)
        clip_range = schedule_value(ppo.clip_range, progress_remaining)
        for group in self.optimizer.param_groups:
            group["lr"] = lr

        self.policy.eval()
        n_steps = ppo.rollout_steps if ppo.episodes_between_updates is None else None
        # the learner collects in its own training precision, so stored log-probs match the update's
        mode = self.precision.autocast() if self.actor is self.policy else contextlib.nullcontext()
        with mode:
            last_value = self.collector.collect(self.actor, self.rollout, n_steps, ppo.episodes_between_updates)
        self.global_step += self.rollout.t * self.envs.num_envs
        extra: dict[str, float] = {}
        if self.actor is not self.policy:
            last_value, extra = self._off_policy_correction()
        batch = self.rollout.batch(last_value, ppo.discount_factor, ppo.gae_lambda)
        t_collect = time.perf_counter() - t0

        self.policy.train()
        stats = ppo_update(self.policy, self.optimizer, batch, ppo, self.precision, clip_range, self.kl_coef)
        if ppo.policy_loss == "kl_penalty":
            extra["train/kl_coef"] = self.kl_coef
            self.kl_coef = adapt_kl_coef(self.kl_coef, stats["train/approx_kl"], ppo.kl_target)
        if self.policy.obs_rms is not None:
            # updated after the PPO step, so log-probs at collection and at update used the same statistics
            self.policy.obs_rms.update(batch.obs)
        self._refresh_actor()
        self.updates += 1

        ep = self.collector.stats
        stats.update(extra)
        stats.update(self.precision.stats())
        stats["train/learning_rate"] = lr
        stats["rollout/ep_rew_mean"] = float(np.mean(ep.returns)) if ep.returns else float("nan")
        stats["rollout/ep_len_mean"] = float(np.mean(ep.lengths)) if ep.lengths else float("nan")
        stats["time/episodes"] = float(ep.total)
        stats["time/iterations"] = float(self.updates)
        stats["time/collect_seconds"] = t_collect
        stats["time/update_seconds"] = time.perf_counter() - t0 - t_collect
        if self.hooks is not None:
            stats.update(self.hooks.episode_metrics(list(ep.infos)))
        if self.policy.continuous:
            stats["train/std"] = float(self.policy.log_std.exp().mean())
        self.last_stats = stats
        return stats

    @torch.no_grad()
    def _off_policy_correction(self) -> tuple[torch.Tensor, dict[str, float]]:
        """Rollouts came from a lower-precision copy: recompute log-probs and values with the learner.

        The PPO ratio is then learner/learner (exactly 1 on the first minibatch) and GAE uses the
        learner's critic; the actions stay samples from a policy ``precision/actor_learner_kl`` away.
        """
        r = self.rollout
        obs = r.obs.reshape(-1, *r.obs.shape[2:]).to(self.device)
        with self.precision.autocast():
            out, values = self.policy(obs)
            last_value = self.policy(torch.as_tensor(self.collector.obs, device=self.device))[1]
        logp, _ = self.policy.logp_entropy(out, r.actions.reshape(-1, *r.actions.shape[2:]).to(self.device))
        logp, values = logp.cpu().reshape(r.logp.shape), values.float().cpu().reshape(r.values.shape)
        valid = r.valid
        kl = float((r.logp - logp)[valid].mean())  # k1 estimate of KL(actor || learner)
        r.data["logp"][: r.t] = logp
        r.data["values"][: r.t] = values
        return last_value.float().cpu(), {"precision/actor_learner_kl": kl}

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        return {
            "policy": self.policy.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "precision": self.precision.state_dict(),
            "counters": {"global_step": self.global_step, "updates": self.updates, "kl_coef": self.kl_coef},
            "rng": {"torch": torch.get_rng_state()},
            "collector": self.collector.state_dict(),
            "env_state": get_env_state(self.envs),
        }

    def save(self) -> Path:
        return save_checkpoint(self.state_dict(), self.run_dir, self.global_step, self.cfg.checkpoint.keep)

    def _load(self, path: Path | None) -> None:
        if path is None:
            raise ConfigError(f"--resume {str(self.run_dir)!r}: no checkpoint found in {self.run_dir / 'checkpoints'}")
        state = load_checkpoint(path)
        self.policy.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.precision.load_state_dict(state["precision"])
        counters = state["counters"]
        self.global_step, self.updates, self.kl_coef = counters["global_step"], counters["updates"], counters["kl_coef"]
        torch.set_rng_state(state["rng"]["torch"])
        self._refresh_actor()
        if state.get("env_state") is not None:
            self.collector.load_state_dict(state["collector"])
            set_env_state(self.envs, state["env_state"])
        else:  # the env cannot be restored: start fresh episodes, seeded by where we are
            self.collector.reset(seed=self.cfg.seed + self.updates)
            self.collector.load_state_dict({**state["collector"], "obs": torch.as_tensor(self.collector.obs),
                                            "prev_done": torch.zeros(self.envs.num_envs, dtype=torch.bool),
                                            "ep_return": torch.zeros(self.envs.num_envs, dtype=torch.float64),
                                            "ep_length": torch.zeros(self.envs.num_envs, dtype=torch.int64)})


def _flat_hparams(cfg: Config) -> dict[str, float | str | bool]:
    out: dict[str, float | str | bool] = {}

    def walk(prefix: str, node) -> None:
        for key, value in node.items():
            name = f"{prefix}{key}"
            if isinstance(value, dict):
                walk(name + ".", value)
            elif isinstance(value, (int, float, str, bool)):
                out[name] = value
            elif value is not None:
                out[name] = str(value)

    walk("", cfg.model_dump(mode="json"))
    return out
