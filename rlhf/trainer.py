"""The gym training loop: collect -> relabel -> update -> metrics -> checkpoint, resumable bit for bit."""
from __future__ import annotations

import contextlib
import time
import weakref
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from rlhf import distributed
from rlhf.build import build_optimizer, build_policy, build_precision, ppo_settings, resolve_device
from rlhf.checkpoint import (FROZEN_ON_RESUME, latest_checkpoint, latest_valid, refuse_frozen_changes, save_checkpoint,
                             set_aside, skipped_newer, write_config)
from rlhf.config import Config, load_config
from rlhf.env_state import get_env_state, set_env_state
from rlhf.errors import ConfigError, NonFiniteError
from rlhf.finite import check_state
from rlhf.integrations import for_env
from rlhf.logger import Logger
from rlhf.moe import moe_statistics
from rlhf.normalize import RewardScaler
from rlhf.numpy_actor import NumpyActor
from rlhf.ppo.update import Batch, adapt_kl_coef, ppo_update
from rlhf.rollout import Collector, make_rollout, score_rollout
from rlhf.run_dir import RunDirLock
from rlhf.schedules import schedule_value
from rlhf.signals import StopFlag
from rlhf.vec_env import make_vec_env


class Trainer:
    """Owns the env, networks, optimizer and counters of one run directory, and holds its lock (one run per
    directory) until ``train()`` returns or ``close()`` is called.

    A resumed run changes nothing on disk until its first checkpoint: then ``config.yaml`` takes the
    resumed config and unusable newer checkpoints are set aside. Keys the checkpoint depends on
    (``FROZEN_ON_RESUME``) are refused by name.
    """

    REQUIRED = ("policy", "optimizer", "precision", "counters", "rng", "collector")  # keys a resumable checkpoint has

    def __init__(self, cfg: Config, run_dir: str | Path, resume: bool = False) -> None:
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.lock = RunDirLock(self.run_dir)
        if distributed.is_main():  # data-parallel: rank 0 alone writes the run directory, and holds it
            self.lock.acquire()
        weakref.finalize(self, self.lock.release)  # a trainer dropped without train() or close()
        self._pending_resume: list[Path] | None = None  # unusable checkpoints to set aside at the first save
        try:
            self._build(cfg, resume)
        except BaseException:
            self.close()
            raise

    def _build(self, cfg: Config, resume: bool) -> None:
        if not resume and latest_checkpoint(self.run_dir) is not None:
            raise ConfigError(f"run directory {str(self.run_dir)!r} already holds checkpoints: continue it with "
                              f"--resume {self.run_dir}, or choose another --run-dir")
        self.world, self.rank = distributed.world_size(), distributed.rank()
        if self.world > 1:
            distributed.refuse_unsupported(cfg)
        found = self._find_resume_checkpoint() if resume else None
        saved_kind = (found[1].get("env_state") or {}).get("kind") if found is not None else None
        if cfg.env.vectorization == "auto" and saved_kind == "sync":
            # a run from before its env had a batched version: ``auto`` means what wrote the checkpoint
            cfg = self.cfg = cfg.model_copy(update={"env": cfg.env.model_copy(update={"vectorization": "sync"})})
        if cfg.torch_threads and self.world == 1:  # ranks run one thread each (rlhf.distributed.init)
            torch.set_num_threads(cfg.torch_threads)
        torch.manual_seed(cfg.seed)
        self.device = distributed.local_device(resolve_device(cfg.device))
        self.hooks = for_env(cfg.env.id)
        if self.hooks is not None:  # the run's own copies of user files (reward, JSON, track): eval/resume read those
            cfg = self.cfg = self.hooks.prepare_run(cfg, self.run_dir) if self.rank == 0 else cfg
            if self.world > 1:  # every rank trains from rank 0's copies
                env = distributed.broadcast_json({k: getattr(cfg.env, k) for k in ("kwargs", "eval_kwargs")})
                cfg = self.cfg = cfg.model_copy(update={"env": cfg.env.model_copy(update=env)})
        # rank 0 alone writes the simtrace
        quiet = {"simtrace_path": None} if self.rank and cfg.env.kwargs.get("simtrace_path") is not None else None
        self.envs = make_vec_env(cfg.env, run_dir=self.run_dir, extra_kwargs=quiet)
        obs_space, act_space = self.envs.single_observation_space, self.envs.single_action_space
        self.policy = build_policy(cfg, obs_space, act_space, self.device)
        if self.world > 1:  # one start for all ranks, then each its own samples and minibatch shuffles
            distributed.broadcast_module(self.policy)
            torch.manual_seed(cfg.seed + self.rank)
        self.optimizer = build_optimizer(cfg, self.policy)
        self.precision = build_precision(cfg, self.policy, self.device)
        if self.world > 1:
            self.precision.grad_reduce = distributed.GradientMean()
        self.actor = self._make_actor()
        scaler = RewardScaler(self.envs.num_envs, cfg.ppo.discount_factor) if cfg.ppo.normalize_reward else None
        self.collector = Collector(self.envs, self.device, scaler)
        self.rollout = make_rollout(self.envs, cfg.ppo.rollout_steps if cfg.ppo.episodes_between_updates is None else 256)
        self.global_step, self.updates, self.kl_coef = 0, 0, cfg.ppo.kl_coef
        self.n_updates = 0  # gradient steps over the whole run (train/n_updates, cumulative as in SB3)
        self.last_stats: dict[str, float] = {}
        self.stop_reason: str | None = None  # set when an env stop rule (term_cond_*) ended the run
        self._stop_rules: dict[str, float] | None = None
        if found is not None:
            self._load(*found)
            self._pending_resume = skipped_newer(self.run_dir, found[0])
        else:
            self.collector.reset(seed=self._env_seed(cfg.seed))
            if self.rank == 0:
                write_config(self.cfg, self.run_dir)

    def _env_seed(self, seed: int) -> int:
        """Each rank's envs their own seeds: rank r's env i starts from ``seed + r * num_envs + i``."""
        return seed + self.rank * self.envs.num_envs

    def _find_resume_checkpoint(self) -> tuple[Path, dict]:
        """Before anything is built: refuse frozen overrides, then read the newest usable checkpoint."""
        saved = self.run_dir / "config.yaml"
        if saved.is_file():
            refuse_frozen_changes(load_config(saved).model_dump(mode="json"), self.cfg.model_dump(mode="json"),
                                  FROZEN_ON_RESUME, self.run_dir)
        found = latest_valid(self.run_dir, self.REQUIRED, load=True)
        if found is None:
            raise ConfigError(f"--resume {str(self.run_dir)!r}: no checkpoint found in {self.run_dir / 'checkpoints'}")
        return found

    @property
    def finished(self) -> bool:
        """Resumed at or past ``total_timesteps``: nothing to train (raise total_timesteps to continue)."""
        return self.global_step >= self.cfg.total_timesteps

    def close(self) -> None:
        """Close the envs and release the run directory (``train()`` does this when it returns)."""
        if getattr(self, "envs", None) is not None:
            self.envs.close()
        self.lock.release()

    # ------------------------------------------------------------------ actor copy for rollouts
    def _make_actor(self):
        """What steps the envs: the policy itself, its numpy twin (fp32 tanh MLPs on the CPU, see
        ``rlhf.numpy_actor``), or a lower-precision copy (``precision.rollout``)."""
        if self.cfg.precision.rollout == "fp32":
            if self.precision.mode == "fp32" and self.device.type == "cpu" and NumpyActor.why_not(self.policy) is None:
                from threadpoolctl import threadpool_limits

                # numpy's BLAS would take every core for a large batch of envs: give it the run's torch threads
                # (process-wide, like torch.set_num_threads above)
                threadpool_limits(limits=torch.get_num_threads(), user_api="blas")
                return NumpyActor(self.policy, seed=(self.cfg.seed, self.rank))
            return self.policy
        from rlhf.precision import make_actor

        return make_actor(self.policy, self.cfg.precision.rollout)

    def _refresh_actor(self) -> None:
        if isinstance(self.actor, NumpyActor):
            self.actor = self.actor.refresh(self.policy)
        elif self.actor is not self.policy:
            from rlhf.precision import refresh_actor

            self.actor = refresh_actor(self.actor, self.policy)

    @property
    def _low_precision_actor(self) -> bool:
        """A lower-precision copy acts (its samples are off-policy by ``precision/actor_learner_kl``)."""
        return self.actor is not self.policy and not isinstance(self.actor, NumpyActor)

    # ------------------------------------------------------------------ the loop
    def train(self) -> dict[str, float]:
        cfg = self.cfg
        if self.finished:  # a finished run resumed as is: no empty event file, no duplicate checkpoint
            self.close()
            return self.last_stats
        main = self.rank == 0  # rank 0 alone writes TensorBoard and the console
        logging = cfg.logging if main else cfg.logging.model_copy(update={"tensorboard": False, "progress_bar": False})
        logger = Logger(self.run_dir, logging, cfg.total_timesteps, start_step=self.global_step)
        if self.updates == 0 and main:
            logger.text("config", "```yaml\n" + (self.run_dir / "config.yaml").read_text() + "\n```")
            logger.hparams(_flat_hparams(cfg), ("rollout/ep_rew_mean", "train/value_loss"))
        if main:
            workers = f", {self.world} data-parallel ranks" if self.world > 1 else ""
            logger.console.print(f"learner: {self.describe_paths()}{workers}", soft_wrap=True)
        next_ckpt = self._next_checkpoint_step()
        evaluator = None
        if cfg.eval.every and main:
            from rlhf.eval_during_training import PeriodicEvaluator

            evaluator = PeriodicEvaluator(cfg, self.run_dir, self.global_step)
        try:
            with StopFlag() as stop:
                while self.global_step < cfg.total_timesteps and not self._stop_requested(stop):
                    try:
                        stats = self.iteration()
                    except KeyboardInterrupt as exc:
                        if not getattr(exc, "env_step_undone", False):
                            raise
                        break  # a signal stopped user code mid-step and the env undid that step: save below
                    if self.updates % cfg.logging.interval == 0:
                        stats["time/fps"] = logger.fps(self.global_step)
                        logger.log(stats, self.global_step)
                    if evaluator is not None and evaluator.due(self.global_step):
                        logger.scalars(evaluator.evaluate(self.policy, self.global_step), self.global_step)
                    if cfg.checkpoint.every and self.global_step >= next_ckpt:
                        self._save_finite()
                        logger.flush()
                        next_ckpt = self._next_checkpoint_step()
                    if (reason := self._stop_condition()) is not None:
                        self.stop_reason = reason
                        if main:
                            logger.console.print(f"stopping: {reason}")
                        break
                self._save_finite()
        except NonFiniteError as exc:  # nothing saved: the newest checkpoint on disk is the last good one
            newest = latest_checkpoint(self.run_dir)
            kept = f"newest checkpoint kept: {newest}" if newest else "no checkpoint was saved"
            raise NonFiniteError(f"{exc}; training stopped after {self.global_step} env steps, {kept}") from None
        finally:
            logger.close()
            self.close()
        return self.last_stats

    def _stop_requested(self, stop: StopFlag) -> bool:
        """A signal asked to stop; data-parallel ranks leave together when any rank got one."""
        return stop.requested if self.world == 1 else distributed.any_rank(stop.requested)

    def _stop_condition(self) -> str | None:
        """A stop rule of the env's own tools (DeepRacer's ``term_cond_*``) that holds now, or None."""
        if self.hooks is None or not hasattr(self.hooks, "stop_conditions"):
            return None
        if self._stop_rules is None:
            self._stop_rules = self.hooks.stop_conditions(self.cfg.env.kwargs, self.run_dir)
        if not self._stop_rules:
            return None
        ep = self.collector.stats
        reason = self.hooks.stop_reason(self._stop_rules, ep.total, list(ep.returns))
        return reason if self.world == 1 else distributed.broadcast_json(reason)  # rank 0's episodes decide

    def _save_finite(self) -> Path:
        """``save()``, refused when the policy or optimizer holds NaN/inf: a bad checkpoint never rotates
        good ones out."""
        check_state(self.policy, "policy parameter")
        check_state(self.optimizer, "optimizer state")
        return self.save() if self.rank == 0 else None  # every rank holds the same policy: rank 0 writes it

    def describe_paths(self) -> str:
        """Which fast paths the learner takes, and why not where it does not (never a silent change)."""
        obs = torch.zeros(1, *self.envs.single_observation_space.shape, device=self.device)
        with self.precision.autocast():
            why = self.policy.fused_path(obs.float() if not self.policy.image else obs)
        mlp = "fused tanh MLP" if why is None else f"layer-by-layer MLP ({why})"
        acting = ("numpy actor" if isinstance(self.actor, NumpyActor)
                  else f"{self.cfg.precision.rollout} copy" if self._low_precision_actor else "the policy")
        return f"{mlp}, {type(self.optimizer).__name__}, precision {self.precision.mode}, acting: {acting}"

    def _next_checkpoint_step(self) -> int:
        every = self.cfg.checkpoint.every
        return (self.global_step // every + 1) * every if every else self.cfg.total_timesteps

    def iteration(self) -> dict[str, float]:
        """One collect -> relabel -> update cycle. Returns the stats logged for it."""
        t0 = time.perf_counter()
        progress_remaining = max(1.0 - self.global_step / self.cfg.total_timesteps, 0.0)
        last_obs = self.collect()
        batch, extra = self.relabel(last_obs)
        t_collect = time.perf_counter() - t0
        stats = self.update(batch, progress_remaining)
        stats.update(extra)
        stats["time/collect_seconds"] = t_collect
        stats["time/update_seconds"] = time.perf_counter() - t0 - t_collect
        stats.update(self.metrics())
        if self.world > 1:
            stats = distributed.reduce_stats(stats)
        self.last_stats = stats
        return stats

    def collect(self) -> torch.Tensor:
        """Step the envs with the acting network; returns the observation after the last step."""
        ppo = self.cfg.ppo
        self.policy.eval()
        n_steps = ppo.rollout_steps if ppo.episodes_between_updates is None else None
        # the learner acts in its own training precision; a low-precision actor copy in its own
        mode = self.precision.autocast() if self.actor is self.policy else contextlib.nullcontext()
        with mode:
            last_obs = self.collector.collect(self.actor, self.rollout, n_steps, ppo.episodes_between_updates)
        self.global_step += self.rollout.t * self.envs.num_envs * self.world  # every rank collected as many
        return last_obs

    @torch.no_grad()  # not inference_mode: the batch it returns is trained on as is
    def relabel(self, last_obs: torch.Tensor) -> tuple[Batch, dict[str, float]]:
        """Score the rollout with the learner (log-probs and values, in its training precision), then GAE.

        When a lower-precision copy acted, the learner's log-probs replace the actor's: PPO's ratio is then
        learner/learner (exactly 1 on the first minibatch) and GAE uses the learner's critic; the actions
        stay samples from a policy ``precision/actor_learner_kl`` away (k1 estimate of KL(actor || learner)).
        """
        extra: dict[str, float] = {}
        if self._low_precision_actor:
            score_rollout(self.actor, self.rollout, last_obs, self.device)
            actor_logp = self.rollout.logp.clone()
        with self.precision.autocast():
            last_value = score_rollout(self.policy, self.rollout, last_obs, self.device)
        if self._low_precision_actor:
            extra["precision/actor_learner_kl"] = float((actor_logp - self.rollout.logp)[self.rollout.valid].mean())
        ppo = self.cfg.ppo
        return self.rollout.batch(last_value, ppo.discount_factor, ppo.gae_lambda), extra

    def update(self, batch: Batch, progress_remaining: float) -> dict[str, float]:
        """One PPO update at the scheduled learning rate and clip range; adapts the KL coefficient."""
        ppo = self.cfg.ppo
        lr = schedule_value(ppo.learning_rate, progress_remaining)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.policy.train()
        settings = ppo_settings(ppo, progress_remaining, self.kl_coef)
        if self.world > 1:  # advantage statistics and the target-KL stop over every rank's minibatch
            rows = ppo.rollout_steps * self.envs.num_envs  # every rank's batch in as many minibatches
            settings = replace(settings, whiten=distributed.Whiten(), mean=distributed.mean,
                               minibatches=distributed.EqualSplit(-(-rows // ppo.batch_size)))
        stats = ppo_update(self.policy, self.optimizer, batch, settings, self.precision)
        if ppo.policy_loss == "kl_penalty":
            stats["train/kl_coef"] = self.kl_coef
            self.kl_coef = adapt_kl_coef(self.kl_coef, stats["train/approx_kl"], ppo.kl_target)
        if self.policy.obs_rms is not None:
            # updated after the PPO step, so log-probs at collection and at update used the same statistics
            if self.world == 1:
                self.policy.obs_rms.update(batch.obs)
            else:  # every rank folds in the statistics of all ranks' observations: the buffers stay identical
                distributed.update_running_stats(self.policy.obs_rms, batch.obs)
        self._refresh_actor()
        self.updates += 1
        self.n_updates += int(stats["train/n_updates"])
        stats["train/n_updates"] = float(self.n_updates)
        stats["train/learning_rate"] = lr
        return stats

    def metrics(self) -> dict[str, float]:
        """Episode, precision and env-specific statistics for the logger."""
        ep = self.collector.stats
        stats = dict(self.precision.stats())
        stats["rollout/ep_rew_mean"] = float(np.mean(ep.returns)) if ep.returns else float("nan")
        stats["rollout/ep_len_mean"] = float(np.mean(ep.lengths)) if ep.lengths else float("nan")
        stats["time/episodes"] = float(ep.total)
        stats["time/iterations"] = float(self.updates)
        if self.hooks is not None:
            stats.update(self.hooks.episode_metrics(list(ep.infos)))
        if self.policy.continuous:
            stats["train/std"] = float(self.policy.log_std.detach().exp().mean())
        stats.update(moe_statistics(self.policy.moe_layers))  # routing of the last minibatch
        return stats

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        return {
            "policy": self.policy.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "precision": self.precision.state_dict(),
            "counters": {"global_step": self.global_step, "updates": self.updates, "kl_coef": self.kl_coef,
                         "n_updates": self.n_updates},
            "rng": {"torch": torch.get_rng_state(),
                    **({"actor": self.actor.state_dict()} if isinstance(self.actor, NumpyActor) else {})},
            "collector": self.collector.state_dict(),
            "env_state": get_env_state(self.envs),
        }

    def save(self) -> Path:
        """The checkpoint; a resumed run's first one also commits its config (see the class docstring)."""
        if self._pending_resume is not None:
            write_config(self.cfg, self.run_dir)
            set_aside(self._pending_resume)
            self._pending_resume = None
        return save_checkpoint(self.state_dict(), self.run_dir, self.global_step, self.cfg.checkpoint.keep)

    def _load(self, path: Path, state: dict) -> None:
        try:
            self.policy.load_state_dict(state["policy"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.precision.load_state_dict(state["precision"])
        except (RuntimeError, KeyError, ValueError, TypeError) as exc:
            detail = " ".join(str(exc).split())[:300]
            raise ConfigError(f"--resume {str(self.run_dir)!r}: checkpoint {path.name} does not fit this config "
                              f"(was config.yaml edited?): {detail}") from None
        counters = state["counters"]
        self.global_step, self.updates, self.kl_coef = counters["global_step"], counters["updates"], counters["kl_coef"]
        self.n_updates = int(counters.get("n_updates", 0))
        torch.set_rng_state(state["rng"]["torch"])
        self._refresh_actor()
        if isinstance(self.actor, NumpyActor):  # rank 0's sampling stream; other ranks a fresh one of their own
            if "actor" in state["rng"] and self.rank == 0:
                self.actor.load_state_dict(state["rng"]["actor"])
            else:
                self.actor.rng = np.random.default_rng((self.cfg.seed, self.rank, self.updates))
        if state.get("env_state") is not None and self.rank == 0:
            self.collector.load_state_dict(state["collector"])
            set_env_state(self.envs, state["env_state"])
        else:  # the env cannot be restored: start fresh episodes, seeded by where we are
            # (the checkpoint holds rank 0's envs and RNG; other ranks start fresh from their own seeds)
            if self.rank:
                torch.manual_seed(self.cfg.seed + self.rank + self.updates * self.world)
                state = {**state, "collector": {**state["collector"], "returns": [], "lengths": [], "infos": [],
                                                "total": 0}}
            self.collector.reset(seed=self._env_seed(self.cfg.seed + self.updates))
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
