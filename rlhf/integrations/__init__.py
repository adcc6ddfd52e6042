"""Glue for specific environments: the only part of ``rlhf`` that knows a particular env exists.

Each integration offers optional hooks the generic trainer, evaluator and CLI call when the
configured env id matches: extra TensorBoard metrics from finished episodes' infos, extra
evaluation results, and files written after an evaluation.
"""
from __future__ import annotations

from types import ModuleType


def for_env(env_id: str) -> ModuleType | None:
    """The integration module for ``env_id``, or None."""
    name = env_id.split(":")[-1]
    if name.startswith("DeepRacer"):
        from rlhf.integrations import deepracer

        return deepracer
    return None
