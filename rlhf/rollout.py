"""Rollout storage and collection from a gymnasium VectorEnv.

The collector only steps the envs (the actor picks actions); ``score_rollout`` then computes every step's
log-prob and value in a few batched ``evaluate_actions`` passes - the one place a rollout is scored,
whether by the network that acted or, for a low-precision actor, by the learner.

Vector envs in gymnasium 1.x reset a finished sub-env on the *next* ``step`` call (NEXT_STEP
autoreset): the step that ends an episode returns its final observation, and the following step
ignores the action and returns the reset observation with reward 0. We store that following step
with ``valid = False`` and leave it out of the update. Its stored value is V(final observation),
which is exactly the bootstrap GAE needs for a truncated episode, so no extra forward pass is spent.
"""
from __future__ import annotations

from collections import deque

import numpy as np
import torch
from torch import Tensor

from rlhf.errors import ConfigError
from rlhf.finite import check_env_arrays, fits_float32
from rlhf.normalize import RewardScaler
from rlhf.ppo.advantages import gae
from rlhf.ppo.update import Batch

STATS_WINDOW = 100  # episodes behind rollout/ep_rew_mean, as in Stable-Baselines3
SCORE_CHUNK = 4096  # rows per forward pass when a rollout is scored after collection
MAX_ROWS = 2**24  # steps x envs a rollout may hold (as config.MAX_STEPS bounds n_steps x num_envs)


class Rollout:
    """Preallocated (T, N, ...) tensors for one rollout; grows by doubling in episode mode."""

    KEYS = ("obs", "actions", "logp", "values", "rewards", "terminations", "dones", "valid")

    def __init__(self, num_envs: int, obs_shape: tuple, obs_dtype: torch.dtype, action_shape: tuple,
                 action_dtype: torch.dtype, capacity: int) -> None:
        self.num_envs, self.t = num_envs, 0
        shapes = {"obs": (obs_shape, obs_dtype), "actions": (action_shape, action_dtype)}
        self.data: dict[str, Tensor] = {}
        for key in self.KEYS:
            shape, dtype = shapes.get(key, ((), torch.bool if key in ("terminations", "dones", "valid") else torch.float32))
            self.data[key] = torch.zeros((capacity, num_envs, *shape), dtype=dtype)
        self._numpy_views()

    def _numpy_views(self) -> None:
        """numpy arrays sharing memory with ``data``: writing one env step through numpy costs a fraction of
        a torch indexed assignment, and most of a step arrives as numpy from the env anyway."""
        self._np = {k: v.numpy() for k, v in self.data.items()}

    def __getattr__(self, key: str) -> Tensor:
        data = self.__dict__.get("data")
        if data is not None and key in data:
            return data[key][: self.t]
        raise AttributeError(key)

    @property
    def capacity(self) -> int:
        return self.data["obs"].shape[0]

    def reset(self) -> None:
        self.t = 0

    def add(self, **step: Tensor | np.ndarray) -> None:
        """Store one vector step; values are (num_envs, ...) tensors or numpy arrays."""
        if self.t == self.capacity:
            if 2 * self.capacity * self.num_envs > MAX_ROWS:
                raise ConfigError(f"the rollout would grow past {MAX_ROWS} rows ({self.t} steps x {self.num_envs} "
                                  "envs) waiting for ppo.episodes_between_updates episodes to end: do the env's "
                                  "episodes end (a time limit)? Lower it, or use ppo.n_steps")
            with torch.inference_mode(False):  # normal tensors: the trainer edits them after collection
                self.data = {k: torch.cat([v, torch.zeros_like(v)]) for k, v in self.data.items()}
            self._numpy_views()
        for key, value in step.items():
            if isinstance(value, Tensor):
                if value.device.type != "cpu" or value.requires_grad:
                    self.data[key][self.t] = value
                    continue
                value = value.numpy()
            self._np[key][self.t] = value
        self.t += 1

    def batch(self, last_value: Tensor, gamma: float, lam: float) -> Batch:
        """GAE over the rollout, then flatten the valid steps into a training batch."""
        next_values = torch.cat([self.values[1:], last_value.unsqueeze(0)])
        advantages, returns = gae(self.rewards, self.values, next_values, self.terminations, self.dones, gamma, lam)
        keep = self.valid.reshape(-1)
        flat = lambda x: x.reshape(-1, *x.shape[2:])[keep]  # noqa: E731
        return Batch(flat(self.obs), flat(self.actions), flat(self.logp), flat(self.values),
                     flat(advantages), flat(returns))


def make_rollout(envs, capacity: int) -> Rollout:
    """Storage shaped for ``envs``' spaces: uint8 images stay uint8, Discrete actions are int64."""
    obs_space, act_space = envs.single_observation_space, envs.single_action_space
    obs_dtype = torch.uint8 if obs_space.dtype == np.uint8 else torch.float32
    discrete = not act_space.shape
    act_shape, act_dtype = ((), torch.int64) if discrete else (act_space.shape, torch.float32)
    return Rollout(envs.num_envs, obs_space.shape, obs_dtype, act_shape, act_dtype, capacity)


def score_rollout(policy, rollout: Rollout, last_obs: Tensor, device: torch.device) -> Tensor:
    """Store every collected step's log-prob and value under ``policy``; return V(``last_obs``).

    Runs ``policy.evaluate_actions`` - the call the PPO update makes - in chunks, so the stored log-probs
    are exactly what the update's first minibatch recomputes (ratio 1). ``last_obs`` rides along in the
    last chunk with placeholder actions: only its value is used, for GAE's bootstrap.
    """
    T, N = rollout.t, rollout.num_envs
    obs = torch.cat([rollout.obs.reshape(T * N, *rollout.obs.shape[2:]).to(device), last_obs.to(device)])
    actions = rollout.actions.reshape(T * N, *rollout.actions.shape[2:]).to(device)
    actions = torch.cat([actions, actions[:N]])  # T >= 1: a collect takes at least one step
    logps, values = [], []
    for o, a in zip(obs.split(SCORE_CHUNK), actions.split(SCORE_CHUNK)):
        logp, _, value = policy.evaluate_actions(o, a)
        logps.append(logp)
        values.append(value)
    logp, value = torch.cat(logps).float().cpu(), torch.cat(values).float().cpu()
    rollout.data["logp"][:T] = logp[: T * N].reshape(T, N)
    rollout.data["values"][:T] = value[: T * N].reshape(T, N)
    return value[T * N:]


class EpisodeStats:
    """Returns, lengths and final infos of the ``window`` most recent finished episodes."""

    def __init__(self, window: int = STATS_WINDOW) -> None:
        self.returns: deque = deque(maxlen=window)
        self.lengths: deque = deque(maxlen=window)
        self.infos: deque = deque(maxlen=window)
        self.total = 0


class Collector:
    """Steps a VectorEnv with an actor network and fills a ``Rollout``; keeps what spans rollouts."""

    def __init__(self, envs, device: torch.device, reward_scaler: RewardScaler | None = None,
                 stats_window: int = STATS_WINDOW) -> None:
        self.envs, self.device, self.reward_scaler = envs, device, reward_scaler
        n = envs.num_envs
        self.obs: np.ndarray | None = None
        self.prev_done = np.zeros(n, dtype=bool)
        self.ep_return = np.zeros(n)
        self.ep_length = np.zeros(n, dtype=np.int64)
        self.stats = EpisodeStats(stats_window)
        spec = getattr(envs, "spec", None)
        self.env_name = getattr(spec, "id", None) or type(envs).__name__

    def reset(self, seed: int | None) -> None:
        try:
            self.obs, _ = self.envs.reset(seed=seed)
        except ConfigError:
            raise
        except Exception as exc:  # the env's code: one line naming it, not a traceback
            raise ConfigError(f"env {self.env_name!r}: reset raised {type(exc).__name__}: {exc}") from exc
        check_env_arrays(f"env {self.env_name!r}: reset observation", np.asarray(self.obs), 0)
        self.prev_done[:] = False
        self.ep_return[:] = 0.0
        self.ep_length[:] = 0

    @torch.inference_mode()
    def collect(self, actor, rollout: Rollout, n_steps: int | None = None, episodes: int | None = None,
                deterministic: bool = False) -> Tensor:
        """Fill ``rollout`` for ``n_steps`` vector steps, or until ``episodes`` episodes finished; return the
        observation after the last step (for the bootstrap value). ``actor`` needs ``sample_actions`` and
        ``env_actions`` (observations as a tensor, or as a float32 array when ``actor.takes_numpy``); log-probs and values are filled in afterwards by ``score_rollout``."""
        rollout.reset()
        finished = 0
        observe = self._obs_array if getattr(actor, "takes_numpy", False) else self._obs_tensor
        while (rollout.t < n_steps) if n_steps is not None else (finished < episodes):
            actions = actor.sample_actions(observe(), deterministic)
            try:
                next_obs, rewards, terminated, truncated, infos = self.envs.step(actor.env_actions(actions))
            except ConfigError:
                raise
            except Exception as exc:  # the env's code: one line naming it, not a traceback
                raise ConfigError(f"env {self.env_name!r}: step raised {type(exc).__name__}: {exc}") from exc
            if not (fits_float32(next_obs) and fits_float32(rewards)):  # before anything stores or acts on them
                self._refuse(next_obs, rewards, rollout.t)
            valid = ~self.prev_done
            done = terminated | truncated
            self.ep_return += np.where(valid, rewards, 0.0)
            self.ep_length += valid
            if done.any():
                finished += int(done.sum())
                self._record(done, infos)
            train_rewards = self.reward_scaler(rewards, done) if self.reward_scaler else rewards
            rollout.add(obs=self.obs, actions=actions, rewards=train_rewards, terminations=terminated,
                        dones=done, valid=valid)
            self.obs, self.prev_done = next_obs, done
        return self._obs_tensor()

    def _obs_tensor(self) -> Tensor:
        """The current observations as the policy takes them: uint8 images as they are, other dtypes (an env
        with float64 or integer observations) as float32, like the rollout stores them."""
        obs = torch.as_tensor(self.obs, device=self.device)
        return obs if obs.dtype in (torch.uint8, torch.float32) else obs.float()

    def _obs_array(self) -> np.ndarray:
        """The current observations for an actor that computes in numpy (``rlhf.numpy_actor``), as float32."""
        return self.obs if self.obs.dtype == np.float32 else self.obs.astype(np.float32)

    def _refuse(self, obs: np.ndarray, rewards: np.ndarray, step: int) -> None:
        check_env_arrays(f"env {self.env_name!r}: observation", obs, step)
        check_env_arrays(f"env {self.env_name!r}: reward", np.asarray(rewards, dtype=np.float64), step)

    def _record(self, done: np.ndarray, infos: dict) -> None:
        for i in np.flatnonzero(done):
            self.stats.returns.append(float(self.ep_return[i]))
            self.stats.lengths.append(int(self.ep_length[i]))
            self.stats.infos.append({k: _item(v[i]) for k, v in infos.items()
                                     if not k.startswith("_") and isinstance(v, np.ndarray)
                                     and infos.get("_" + k, done)[i]})
            self.stats.total += 1
        self.ep_return[done] = 0.0
        self.ep_length[done] = 0

    def state_dict(self) -> dict:
        return {
            "obs": torch.as_tensor(np.asarray(self.obs)).clone(),
            "prev_done": torch.as_tensor(self.prev_done).clone(),
            "ep_return": torch.as_tensor(self.ep_return).clone(),
            "ep_length": torch.as_tensor(self.ep_length).clone(),
            "returns": list(self.stats.returns), "lengths": list(self.stats.lengths),
            "infos": list(self.stats.infos), "total": self.stats.total,
            "reward_scaler": self.reward_scaler.state_dict() if self.reward_scaler else None,
        }

    def load_state_dict(self, state: dict) -> None:
        self.obs = state["obs"].numpy().copy()
        self.prev_done = state["prev_done"].numpy().copy()
        self.ep_return = state["ep_return"].numpy().copy()
        self.ep_length = state["ep_length"].numpy().copy()
        self.stats.returns.extend(state["returns"])
        self.stats.lengths.extend(state["lengths"])
        self.stats.infos.extend(state["infos"])
        self.stats.total = state["total"]
        if self.reward_scaler and state.get("reward_scaler"):
            self.reward_scaler.load_state_dict(state["reward_scaler"])


def _item(x):
    return x.item() if hasattr(x, "item") else x
