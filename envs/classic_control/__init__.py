"""Numpy-batched vector envs for gymnasium classic-control tasks that ship without one.

gymnasium has ``CartPoleVectorEnv``; these are its counterparts for ``Acrobot-v1`` and ``Pendulum-v1``:
same spaces, dynamics and rewards as gymnasium's single envs, all envs stepped in one numpy call, gymnasium
1.x NEXT_STEP autoreset and the registered time limits. gymnasium's own ids are left as registered;
``rlhf.vec_env.make_vec_env`` uses these classes when ``env.vectorization`` is ``native`` or ``auto``.
"""
from .acrobot import AcrobotVectorEnv
from .pendulum import PendulumVectorEnv

__all__ = ["AcrobotVectorEnv", "PendulumVectorEnv"]
