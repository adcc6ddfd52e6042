"""Gymnasium environments shipped with rlhf. Importing this package registers them.

* ``DeepRacer-v0`` - a DeepRacer-like time trial (:mod:`envs.deepracer`).
"""
from .deepracer import register as _register_deepracer

_register_deepracer()
