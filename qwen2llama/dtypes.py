"""Element types by their safetensors names, the one vocabulary used across the package."""
from __future__ import annotations

ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
            "BOOL": 1}

# The floating-point types a weight may have, by their CLI / config.json names.
FLOAT_NAMES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}
NAME_OF = {code: name for name, code in FLOAT_NAMES.items()}
WIDENING = {("BF16", "F32"), ("F16", "F32")}  # casts that keep every value exactly

# torch storage classes that the restricted .bin reader accepts, and what they hold.
TORCH_STORAGE = {
    "DoubleStorage": "F64", "FloatStorage": "F32", "HalfStorage": "F16", "BFloat16Storage": "BF16",
    "LongStorage": "I64", "IntStorage": "I32", "ShortStorage": "I16", "CharStorage": "I8",
    "ByteStorage": "U8", "BoolStorage": "BOOL",
}


def torch_dtype(code: str):
    """The torch dtype for a safetensors code (imports torch only when called)."""
    import torch

    return {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
            "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
            "U8": torch.uint8, "BOOL": torch.bool}[code]
