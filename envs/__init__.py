"""Gymnasium environments shipped with rlhf. Importing this package registers them.

* ``DeepRacer-v0`` - a DeepRacer-like time trial (:mod:`envs.deepracer`).

:mod:`envs.classic_control` holds numpy-batched vector envs for gymnasium's ``Acrobot-v1`` and
``Pendulum-v1`` (gymnasium's ids, not registered again; ``rlhf.vec_env`` picks them).
"""
from .deepracer import register as _register_deepracer

_register_deepracer()
