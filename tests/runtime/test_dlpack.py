"""Host copies of DLPack tensors without torch (the Triton stream model's GPU download path)."""

import numpy as np
import pytest

from mirasol_edge.runtime.dlpack import DLPackError, to_host


@pytest.mark.parametrize("dtype", ["float32", "float16", "int64", "int32", "uint8", "bool"])
def test_a_numpy_capsule_comes_back_equal(dtype):
    source = (np.arange(2 * 3 * 5).reshape(2, 3, 5) % 7).astype(dtype)
    got = to_host(source.__dlpack__())
    assert got.dtype == source.dtype and got.shape == source.shape
    np.testing.assert_array_equal(got, source)
    source[...] = 0  # the copy owns its memory
    assert got.any()


def test_strided_and_offset_views_are_read_as_they_are():
    base = np.arange(60, dtype=np.float32).reshape(6, 10)
    view = base[1::2, 3:9:2]
    np.testing.assert_array_equal(to_host(view.__dlpack__()), view)
    np.testing.assert_array_equal(to_host(base[:0].__dlpack__()), base[:0])


def test_a_used_capsule_or_another_object_is_refused():
    capsule = np.zeros(3, np.float32).__dlpack__()
    with pytest.raises(DLPackError, match="not an unconsumed DLPack capsule"):
        to_host(object())
    assert to_host(capsule).shape == (3,)
