"""The one place that touches weight files: tensor references, byte-range reads, safetensors
headers (read and write), shard indexes and the restricted `.bin` reader."""
from .refs import Kind, OutputTensor, TensorRef, read_ref, unknown_kind
from .safetensors import header_bytes, read_safetensors_header
from .weights import WeightFiles, find_weights, read_index

__all__ = ["Kind", "OutputTensor", "TensorRef", "WeightFiles", "find_weights", "header_bytes", "read_index",
           "read_ref", "unknown_kind", "read_safetensors_header"]
