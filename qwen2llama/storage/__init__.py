"""The one place that touches weight files: tensor references, byte-range reads, safetensors
headers (read and write), shard indexes and the restricted `.bin` reader."""
from .refs import OutputTensor, TensorRef, read_ref
from .safetensors import header_bytes, read_safetensors_header
from .weights import WeightFiles, find_weights, read_index

__all__ = ["OutputTensor", "TensorRef", "WeightFiles", "find_weights", "header_bytes", "read_index",
           "read_ref", "read_safetensors_header"]
