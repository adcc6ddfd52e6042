"""Evaluation during training, as Stable-Baselines3's ``EvalCallback``: every ``eval.every`` environment steps,
play ``eval.episodes`` episodes in a separate env (the ``rlhf eval`` env: ``eval_kwargs``, fixed seed, no
output files), log ``eval/mean_reward`` and ``eval/mean_ep_length``, and keep the best policy so far in
``RUN/best/best_model.pt`` (``rlhf eval RUN/best/best_model.pt`` evaluates it).

The episodes run inside a forked random state on their own env, so training continues bit for bit as it
would have without them.
"""
from __future__ import annotations

import math
from pathlib import Path

from rlhf.checkpoint import load_checkpoint, save_file
from rlhf.config import Config
from rlhf.evaluate import OUTPUT_KWARGS, deployed, run_episodes

BEST_FILE = Path("best") / "best_model.pt"


class PeriodicEvaluator:
    """Decides when an evaluation is due, runs it, and keeps the best policy (highest mean reward)."""

    def __init__(self, cfg: Config, run_dir: str | Path, global_step: int) -> None:
        self.cfg, self.best_path = cfg, Path(run_dir) / BEST_FILE
        self.next_step = self._after(global_step)
        self.best = -math.inf
        if self.best_path.is_file():  # a resumed run competes with the best it already kept
            self.best = float(load_checkpoint(self.best_path).get("mean_reward", -math.inf))

    def _after(self, step: int) -> int:
        every = self.cfg.eval.every
        return (step // every + 1) * every

    def due(self, global_step: int) -> bool:
        return global_step >= self.next_step

    def evaluate(self, policy, global_step: int) -> dict[str, float]:
        """Run the episodes with ``policy`` as deployed; returns the ``eval/...`` scalars. Saves a new best."""
        cfg = self.cfg
        self.next_step = self._after(global_step)
        was_training = policy.training
        policy.eval()
        try:
            env_kwargs = {**cfg.env.eval_kwargs, **{k: None for k in OUTPUT_KWARGS
                                                    if k in {**cfg.env.kwargs, **cfg.env.eval_kwargs}}}
            result = run_episodes(deployed(policy, cfg), cfg, cfg.eval.episodes, cfg.eval.deterministic,
                                  env_kwargs=env_kwargs)
        finally:
            policy.train(was_training)
        stats = {"eval/mean_reward": result["mean_return"], "eval/mean_ep_length": result["mean_length"]}
        for key, value in result.items():
            if key not in ("mean_return", "std_return", "mean_length", "episodes", "seed") \
                    and isinstance(value, float):
                stats[f"eval/{key}"] = value
        if math.isfinite(result["mean_return"]) and result["mean_return"] > self.best:
            self.best = result["mean_return"]
            save_file({"policy": policy.state_dict(), "global_step": global_step, "mean_reward": self.best},
                      self.best_path)
        if math.isfinite(self.best):
            stats["eval/best_mean_reward"] = self.best
        return stats
