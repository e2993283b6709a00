"""A DLPack capsule's tensor copied to a host numpy array, without torch or cupy: the Triton
stream model reads GPU output tensors this way (NVIDIA's Triton image has no torch).

The capsule is read, not consumed: its owner keeps it and frees it as usual. A CPU tensor is
copied from its memory (strides honoured); a CUDA tensor must be compact and is copied with
one ``cudaMemcpy`` through ``runtime.cuda`` (cuda-python).
"""

from __future__ import annotations

import ctypes

import numpy as np

from mirasol_edge.errors import MirasolError

CPU, CUDA, CUDA_HOST, CUDA_MANAGED = 1, 2, 3, 13  # DLDeviceType
_KINDS = {0: "i", 1: "u", 2: "f", 6: "b"}  # DLDataTypeCode: int, uint, float, bool


class DLPackError(MirasolError, ValueError):
    exit_code = 2


class _Device(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int), ("device_id", ctypes.c_int)]


class _DataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class _Tensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("device", _Device), ("ndim", ctypes.c_int), ("dtype", _DataType),
                ("shape", ctypes.POINTER(ctypes.c_int64)), ("strides", ctypes.POINTER(ctypes.c_int64)),
                ("byte_offset", ctypes.c_uint64)]


class _Managed(ctypes.Structure):  # DLManagedTensor: the tensor comes first
    _fields_ = [("dl_tensor", _Tensor), ("manager_ctx", ctypes.c_void_p), ("deleter", ctypes.c_void_p)]


_get_pointer = ctypes.pythonapi.PyCapsule_GetPointer
_get_pointer.restype, _get_pointer.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
_is_valid = ctypes.pythonapi.PyCapsule_IsValid
_is_valid.restype, _is_valid.argtypes = ctypes.c_int, [ctypes.py_object, ctypes.c_char_p]


def to_host(capsule) -> np.ndarray:
    """The capsule's tensor as a new host array (its own memory: valid after the capsule is gone)."""
    if not _is_valid(capsule, b"dltensor"):
        raise DLPackError("not an unconsumed DLPack capsule (named 'dltensor')")
    t = _Managed.from_address(_get_pointer(capsule, b"dltensor")).dl_tensor
    kind = _KINDS.get(t.dtype.code)
    if kind is None or t.dtype.lanes != 1:
        raise DLPackError(f"DLPack dtype code {t.dtype.code} x{t.dtype.lanes} lanes has no numpy type here")
    dtype = np.dtype("?" if kind == "b" else f"{kind}{t.dtype.bits // 8}")
    shape = tuple(t.shape[i] for i in range(t.ndim))
    count = int(np.prod(shape, dtype=np.int64))
    address = (t.data or 0) + t.byte_offset
    compact = _compact_strides(shape)
    strides = compact if not t.strides else tuple(t.strides[i] for i in range(t.ndim))
    if t.device.device_type in (CPU, CUDA_HOST):
        if count == 0:
            return np.empty(shape, dtype)
        span = (sum((n - 1) * s for n, s in zip(shape, strides)) + 1) * dtype.itemsize
        flat = np.ctypeslib.as_array((ctypes.c_uint8 * span).from_address(address))
        view = np.lib.stride_tricks.as_strided(flat.view(dtype), shape, [s * dtype.itemsize for s in strides])
        return np.array(view)  # a copy: the capsule's memory is not ours
    if t.device.device_type in (CUDA, CUDA_MANAGED):
        if any(n > 1 and s != c for n, s, c in zip(shape, strides, compact)):
            raise DLPackError(f"a strided CUDA tensor (shape {shape}, strides {strides}) is not read here")
        from .cuda import _cudart, check

        rt = _cudart()
        out = np.empty(shape, dtype)
        if out.nbytes:
            check(rt.cudaMemcpy(out.ctypes.data, address, out.nbytes, rt.cudaMemcpyKind.cudaMemcpyDeviceToHost))
        return out
    raise DLPackError(f"DLPack device type {t.device.device_type} is neither the host nor CUDA")


def _compact_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, step = [], 1
    for n in reversed(shape):
        strides.append(step)
        step *= max(n, 1)
    return tuple(reversed(strides))
