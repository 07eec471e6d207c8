"""Reads a PyTorch checkpoint saved in the legacy (pre-1.6, non-zip) format
into numpy arrays, without torch: the file is a sequence of pickles (magic
number, protocol, system info, the state dict whose tensors point at
storages by key, the list of storage keys) followed by each storage's raw
little-endian data, prefixed by its element count."""

import collections
import pickle
import struct

import numpy as np

MAGIC = 0x1950A86A20F9469CFC6C
PROTOCOL = 1001
DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class _StorageType:
    def __init__(self, name):
        if name not in DTYPES:
            raise ValueError(f"unsupported storage type {name}")
        self.dtype = DTYPES[name]


class _Storage:
    def __init__(self, key, dtype):
        self.key, self.dtype, self.array = key, dtype, None


class _TensorRef:
    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

    def array(self):
        base = self.storage.array
        item = base.itemsize
        view = np.lib.stride_tricks.as_strided(
            base[self.offset :], shape=self.size, strides=tuple(s * item for s in self.stride)
        )
        return np.ascontiguousarray(view)


def load(path):
    """The checkpoint's tensors by name, as numpy arrays."""
    storages = {}
    with open(path, "rb") as f:
        if pickle.load(f) != MAGIC:
            raise ValueError(f"{path} is not a legacy PyTorch checkpoint")
        if pickle.load(f) != PROTOCOL:
            raise ValueError(f"{path}: unexpected protocol version")
        pickle.load(f)  # system info: endianness and type sizes

        class Unpickler(pickle.Unpickler):
            def find_class(self, module, name):
                if module == "torch._utils" and name in ("_rebuild_tensor", "_rebuild_tensor_v2"):
                    return lambda storage, offset, size, stride, *rest: _TensorRef(storage, offset, size, stride)
                if module == "torch" and name.endswith("Storage"):
                    return _StorageType(name)
                if module == "collections" and name == "OrderedDict":
                    return collections.OrderedDict
                raise pickle.UnpicklingError(f"refusing to load {module}.{name}")

            def persistent_load(self, pid):
                kind, storage_type, key, _location, _numel = pid[:5]
                if kind != "storage":
                    raise pickle.UnpicklingError(f"unexpected persistent id {kind}")
                if key not in storages:
                    storages[key] = _Storage(key, storage_type.dtype)
                return storages[key]

        state = Unpickler(f).load()
        keys = pickle.load(f)
        for key in keys:
            (count,) = struct.unpack("<q", f.read(8))
            storage = storages[key]
            size = count * np.dtype(storage.dtype).itemsize
            storage.array = np.frombuffer(f.read(size), dtype=storage.dtype)
    return collections.OrderedDict((name, ref.array()) for name, ref in state.items() if isinstance(ref, _TensorRef))
