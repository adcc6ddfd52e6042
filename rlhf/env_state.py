"""Save and restore a vector env's exact state, so a resumed run continues the same episodes.

An env that knows its own state exposes ``get_state()`` / ``set_state()`` (DeepRacer-v0 does). For
gymnasium's ``SyncVectorEnv`` of plain Python envs, and its numpy-batched classic-control envs, we
snapshot every simple attribute (of every wrapper layer) and the RNGs. Values are stored as tensors and plain Python
objects so the checkpoint still loads with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from gymnasium.vector import SyncVectorEnv

from rlhf.errors import ConfigError

_SIMPLE = (bool, int, float, str, type(None))


def _encode(value: Any) -> Any:
    if isinstance(value, _SIMPLE):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
        return {"__ndarray__": torch.from_numpy(np.array(value, copy=True))}
    if isinstance(value, np.random.Generator):
        return {"__rng__": value.bit_generator.state}
    if isinstance(value, (tuple, list)) and all(isinstance(v, _SIMPLE + (np.generic,)) for v in value):
        return {"__seq__": [_encode(v) for v in value], "tuple": isinstance(value, tuple)}
    raise TypeError


def _decode(value: Any, current: Any) -> Any:
    if not isinstance(value, dict):
        return value
    if "__ndarray__" in value:
        return value["__ndarray__"].numpy().copy()
    if "__rng__" in value:
        rng = current if isinstance(current, np.random.Generator) else np.random.default_rng()
        rng.bit_generator.state = value["__rng__"]
        return rng
    seq = [_decode(v, None) for v in value["__seq__"]]
    return tuple(seq) if value["tuple"] else seq


def _layers(env) -> list:
    layers = [env]
    while hasattr(layers[-1], "env"):
        layers.append(layers[-1].env)
    return layers


def _snapshot(obj) -> dict:
    out = {}
    for key, value in vars(obj).items():
        try:
            out[key] = _encode(value)
        except TypeError:
            continue
    return out


def _restore(obj, state: dict) -> None:
    for key, value in state.items():
        setattr(obj, key, _decode(value, getattr(obj, key, None)))


def _kind(base) -> str | None:
    """How ``base``'s state is captured: its own get_state, a SyncVectorEnv's layers, or attributes."""
    if hasattr(base, "get_state"):
        return "native"
    if isinstance(base, SyncVectorEnv):
        return "sync"
    if type(base).__module__.startswith("gymnasium.envs.classic_control"):
        return "attributes"  # numpy-batched classic control
    return None


def get_env_state(envs) -> dict | None:
    """A weights-only-loadable snapshot of ``envs``, or None when its state cannot be captured."""
    base = envs.unwrapped if hasattr(envs, "unwrapped") else envs
    kind = _kind(base)
    if kind == "native":
        return {"kind": kind, "state": _encode_tree(base.get_state())}
    if kind == "sync":
        return {"kind": kind, "vector": _snapshot(base),
                "envs": [[_snapshot(layer) for layer in _layers(e)] for e in base.envs]}
    if kind == "attributes":
        return {"kind": kind, "vector": _snapshot(base)}
    return None


def set_env_state(envs, state: dict) -> None:
    """Restore a snapshot of ``get_env_state``; one taken from another kind of vector env is refused."""
    base = envs.unwrapped if hasattr(envs, "unwrapped") else envs
    if state["kind"] != _kind(base):
        saved = "a SyncVectorEnv" if state["kind"] == "sync" else f"a {state['kind']!r} vector env"
        raise ConfigError(f"env.vectorization: the checkpoint holds the state of {saved}, but this run builds "
                          f"{type(base).__name__} (auto now picks a native batched env for some ids); set "
                          "env.vectorization in the run's config.yaml to the mode that wrote it (sync) to resume")
    if state["kind"] == "native":
        base.set_state(_decode_tree(state["state"]))
        return
    _restore(base, state["vector"])
    for env, layer_states in zip(getattr(base, "envs", []), state.get("envs", [])):
        for layer, layer_state in zip(_layers(env), layer_states):
            _restore(layer, layer_state)


def _encode_tree(value: Any) -> Any:
    """Encode nested dicts/lists of arrays and scalars (an env's own ``get_state``)."""
    if isinstance(value, dict):
        return {"__dict__": {k: _encode_tree(v) for k, v in value.items()}}
    if isinstance(value, (list, tuple)) and not all(isinstance(v, _SIMPLE + (np.generic,)) for v in value):
        return {"__list__": [_encode_tree(v) for v in value]}
    if isinstance(value, np.ndarray) and value.dtype.kind in "US":
        return {"__strarray__": value.tolist()}
    return _encode(value)


def _decode_tree(value: Any) -> Any:
    if isinstance(value, dict) and "__dict__" in value:
        return {k: _decode_tree(v) for k, v in value["__dict__"].items()}
    if isinstance(value, dict) and "__list__" in value:
        return [_decode_tree(v) for v in value["__list__"]]
    if isinstance(value, dict) and "__strarray__" in value:
        return np.array(value["__strarray__"])
    return _decode(value, None)
