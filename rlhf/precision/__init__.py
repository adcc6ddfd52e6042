"""The one place where numeric precision is decided: training autocast, loss scaling, quantization.

Training: ``Precision`` (fp32 | bf16-mixed | fp16-mixed), ``check_train_mode``, ``float32_region``.
Storage and rollout: ``quantize_model`` (int8 | int8-outlier | nf4), ``make_actor`` /
``refresh_actor`` (fp32 | bf16 | int8 | int8-outlier | nf4), ``prepare_qat``.
Accounting: ``model_memory``, ``model_size_table``, ``format_model_size_table``.
Math: the pure quantizers in ``quant`` and ``nf4``.
"""
from rlhf.precision.actor import ROLLOUT_MODES, BF16Linear, make_actor, refresh_actor
from rlhf.precision.amp import TRAIN_MODES, Precision, check_train_mode, float32_region
from rlhf.precision.layers import (QUANT_SCHEMES, Int8Linear, NF4Linear, quantizable_linears, quantize_linear,
                                   quantize_model)
from rlhf.precision.memory import (format_model_size_table, model_memory, model_size_table, serialized_bytes,
                                   state_dict_bytes)
from rlhf.precision.nf4 import (NF4_LEVELS, double_dequantize, double_quantize, nf4_dequantize, nf4_quantize,
                                pack_4bit, unpack_4bit)
from rlhf.precision.qat import QATLinear, fake_quantize_nf4, prepare_qat
from rlhf.precision.quant import (absmax_quantize, dequantize, fake_quantize, int8_matmul, llm_int8_matmul,
                                  outlier_columns, zeropoint_quantize)

__all__ = [
    "TRAIN_MODES", "Precision", "check_train_mode", "float32_region",
    "ROLLOUT_MODES", "make_actor", "refresh_actor", "BF16Linear",
    "QUANT_SCHEMES", "quantize_model", "quantize_linear", "quantizable_linears", "Int8Linear", "NF4Linear",
    "prepare_qat", "QATLinear", "fake_quantize_nf4",
    "model_memory", "state_dict_bytes", "serialized_bytes", "model_size_table", "format_model_size_table",
    "absmax_quantize", "zeropoint_quantize", "dequantize", "fake_quantize", "outlier_columns", "int8_matmul",
    "llm_int8_matmul",
    "NF4_LEVELS", "nf4_quantize", "nf4_dequantize", "pack_4bit", "unpack_4bit", "double_quantize",
    "double_dequantize",
]
