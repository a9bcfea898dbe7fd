"""Read tensor locations out of a zip-format torch `.bin` without running its pickle.

A `.bin` is a pickle, and a pickle can call any function. We never hand it to `pickle.load`
with the standard class lookup: our unpickler resolves only the handful of names a plain
state dict uses (OrderedDict, `_rebuild_tensor_v2`, typed storage classes) to inert records,
and refuses everything else. Tensor data is never unpickled at all: each storage is a
stored (uncompressed) zip member, so a tensor is just a byte range of the file, which the
writer copies like a safetensors range.
"""
from __future__ import annotations

import collections
import pickle
import struct
import zipfile
from dataclasses import dataclass
from math import prod
from pathlib import Path

from ..dtypes import ITEMSIZE, TORCH_STORAGE
from ..errors import InputError
from .refs import TensorRef

MAX_PICKLE_BYTES = 64 << 20  # a state dict's pickle is metadata only: a few MB for 72B


@dataclass(frozen=True)
class _StorageType:
    dtype: str


@dataclass(frozen=True)
class _Storage:
    key: str
    dtype: str
    numel: int


@dataclass(frozen=True)
class _TensorRecord:
    storage: _Storage
    storage_offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


class _BadRecord(Exception):
    """A tensor record whose fields are not what torch.save writes (caught: bad input)."""


def _ints(values, what: str) -> tuple[int, ...]:
    """A shape or stride as torch.save writes it: a short tuple of non-negative ints."""
    if not isinstance(values, (tuple, list)) or len(values) > 8 or \
            not all(type(v) is int and 0 <= v < 1 << 48 for v in values):
        raise _BadRecord(f"{what} {values!r}"[:120])
    return tuple(values)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    if not isinstance(storage, _Storage) or type(storage_offset) is not int or storage_offset < 0:
        raise _BadRecord(f"storage {type(storage).__name__} at offset {storage_offset!r}"[:120])
    return _TensorRecord(storage, storage_offset, _ints(size, "shape"), _ints(stride, "stride"))


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    return data


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): _StorageType(code) for name, code in TORCH_STORAGE.items()},
}


class _RefusingUnpickler(pickle.Unpickler):
    def __init__(self, file, path: Path):
        super().__init__(file)
        self.path = path

    def find_class(self, module, name):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise InputError(
                f"refusing to load: the pickle asks for {module}.{name}, which a plain weights file "
                "never needs "
                "(it may be an attempt to run code)",
                path=self.path,
                fix="get the checkpoint from its original source, or use its .safetensors files",
            ) from None

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType)):
            raise InputError(f"unexpected storage record in the pickle: {pid!r}"[:300], path=self.path,
                             fix="re-save the weights with torch.save(state_dict) or as safetensors")
        return _Storage(str(pid[2]), pid[1].dtype, int(pid[4]))


def _member_data_offset(fh, info: zipfile.ZipInfo, path: Path) -> int:
    fh.seek(info.header_offset)
    header = fh.read(30)
    if len(header) != 30 or header[:4] != b"PK\x03\x04":
        raise InputError(f"corrupt zip member {info.filename}", path=path, fix="download the file again")
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    return info.header_offset + 30 + name_len + extra_len


def read_torch_zip(path: Path) -> dict[str, TensorRef]:
    """Every tensor of a zip-format `.bin` as a byte range of the file."""
    if not zipfile.is_zipfile(path):
        raise InputError(
            "not a zip-format torch file (legacy torch.save format, or not a torch file at all)",
            path=path,
            fix="re-save it with torch >= 1.6 (zip format) or convert it to safetensors",
        )
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise InputError(f"cannot read the zip directory ({exc})", path=path,
                         fix="download the file again") from None
    with archive:
        members = {info.filename: info for info in archive.infolist()}
        prefix, state = _state_dict(archive, members, path)
        out: dict[str, TensorRef] = {}
        with open(path, "rb") as fh:
            storages: dict[str, tuple[int, int]] = {}
            for name, rec in state.items():
                key = rec.storage.key
                if key not in storages:
                    storages[key] = _storage_range(fh, members.get(f"{prefix}data/{key}"), name, key, path)
                out[str(name)] = _tensor_ref(str(name), rec, *storages[key], path)
        return out


def _state_dict(archive: zipfile.ZipFile, members: dict, path: Path) -> tuple[str, dict]:
    """(the archive's folder prefix, its state dict of tensor records), unpickled with the
    refusing unpickler: anything but tensors and plain containers is bad input."""
    pickles = [n for n in members if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pickles) != 1:
        raise InputError("no single data.pkl in the torch archive", path=path,
                         fix="re-save the weights with torch.save(state_dict)")
    prefix = pickles[0][: -len("data.pkl")]
    info = members[pickles[0]]
    if info.file_size > MAX_PICKLE_BYTES:
        raise InputError(f"data.pkl is {info.file_size} bytes, far more than a state dict needs",
                         path=path, fix="use the checkpoint's safetensors files")
    byteorder = members.get(prefix + "byteorder")
    if byteorder is not None and archive.read(byteorder).strip() != b"little":
        raise InputError("big-endian torch file", path=path, fix="re-save it on a little-endian machine")
    try:
        with archive.open(info) as pkl:
            state = _RefusingUnpickler(pkl, path).load()
    except InputError:
        raise
    except Exception as exc:  # any malformed pickle: report, never trace
        raise InputError(f"cannot read the pickle in the torch file ({type(exc).__name__}: {exc})"[:400],
                         path=path, fix="download the file again") from None
    if not isinstance(state, dict) or not all(isinstance(v, _TensorRecord) for v in state.values()):
        raise InputError("the torch file does not hold a flat state dict of tensors", path=path,
                         fix="save model.state_dict() itself, not a wrapper object")
    return prefix, state


def _storage_range(fh, member: zipfile.ZipInfo | None, name: str, key: str, path: Path) -> tuple[int, int]:
    """(offset, size) in the file of a storage's bytes, which must be stored uncompressed."""
    if member is None:
        raise InputError(f"tensor {name}: storage data/{key} is missing from the archive",
                         path=path, fix="download the file again")
    if member.compress_type != zipfile.ZIP_STORED:
        raise InputError(f"tensor {name}: storage data/{key} is compressed", path=path,
                         fix="re-save it with torch.save (it stores tensors uncompressed)")
    return _member_data_offset(fh, member, path), member.file_size


def _tensor_ref(name: str, rec: _TensorRecord, start: int, size: int, path: Path) -> TensorRef:
    """A contiguous tensor inside its storage's byte range, as a byte range of the file."""
    key, itemsize = rec.storage.key, ITEMSIZE[rec.storage.dtype]
    if size != rec.storage.numel * itemsize:
        raise InputError(f"tensor {name}: storage data/{key} has {size} bytes, "
                         f"expected {rec.storage.numel * itemsize}", path=path,
                         fix="download the file again")
    expected_stride, acc = [], 1
    for dim in reversed(rec.shape):
        expected_stride.append(acc)
        acc *= dim
    if prod(rec.shape) > 1 and tuple(reversed(expected_stride)) != rec.stride:
        raise InputError(f"tensor {name} is not contiguous (stride {rec.stride})", path=path,
                         fix="re-save it after .contiguous(), or as safetensors")
    nbytes = prod(rec.shape) * itemsize
    if rec.storage_offset < 0 or (rec.storage_offset * itemsize + nbytes) > size:
        raise InputError(f"tensor {name} runs past its storage", path=path,
                         fix="download the file again")
    return TensorRef(name, path, rec.storage.dtype, rec.shape, start + rec.storage_offset * itemsize, nbytes)
