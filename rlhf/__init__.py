"""rlhf: one PPO core that trains a DeepRacer-like car and a toy reward-model-guided text policy."""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("rlhf")  # pyproject.toml's, as installed
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"
