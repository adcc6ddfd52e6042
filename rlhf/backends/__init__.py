"""Other PPO engines driven by the same config, env, run directory and tools (``backend:`` in the config).

``sb3``: Stable-Baselines3's PPO (``rlhf.backends.sb3``). Settings an engine cannot express are refused by
name, with the reason, before anything is built.
"""
