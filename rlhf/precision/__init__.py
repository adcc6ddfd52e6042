"""The one place where numeric precision is decided: training autocast, loss scaling, quantization."""
from rlhf.precision.amp import TRAIN_MODES, Precision

__all__ = ["TRAIN_MODES", "Precision"]
