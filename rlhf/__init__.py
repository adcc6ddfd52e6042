"""rlhf: one PPO core that trains a DeepRacer-like car and a toy reward-model-guided text policy."""
__version__ = "0.1.0"
