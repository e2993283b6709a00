"""The pieces of the device-frame path a CPU can run: DALI's copy to an address, the buffer pool."""

import gc

import numpy as np
import pytest

from mirasol_edge.runtime.decode.device_frames import BufferPool


def test_a_dali_tensor_is_copied_to_an_address_through_the_helper():
    pytest.importorskip("nvidia.dali")
    from nvidia.dali import fn, pipeline_def, types

    from mirasol_edge.runtime.decode.dali import copy_to_pointer

    expected = np.arange(2 * 3 * 4 * 3, dtype=np.uint8).reshape(2, 3, 4, 3)

    @pipeline_def(batch_size=1, num_threads=1, device_id=None)
    def pipeline():
        return fn.external_source(name="x", dtype=types.UINT8, ndim=4)

    pipe = pipeline()
    pipe.build()
    pipe.feed_input("x", [expected])
    (out,) = pipe.run()
    target = np.zeros_like(expected)
    copy_to_pointer(out[0], target.ctypes.data)  # a plain int address; DALI needs a c_void_p
    np.testing.assert_array_equal(target, expected)


def test_pooled_buffers_come_back_when_the_last_frame_is_gone():
    pool = BufferPool(lambda shape: np.empty(shape, np.uint8), keep=2)
    first = pool.take((16, 8, 8, 3))
    held = first.buffer
    second = pool.take((16, 8, 8, 3))  # the first is still in use: a new buffer
    assert second.buffer is not held and pool.made == 2
    del first
    gc.collect()
    third = pool.take((16, 8, 8, 3))
    assert third.buffer is held and pool.made == 2  # reused, not made again
    other = pool.take((4, 8, 8, 3))  # another shape has buffers of its own
    assert other.buffer.shape == (4, 8, 8, 3) and pool.made == 3


def test_the_pool_keeps_at_most_keep_spare_buffers():
    pool = BufferPool(lambda shape: np.empty(shape, np.uint8), keep=2)
    leases = [pool.take((2, 2)) for _ in range(5)]
    del leases
    gc.collect()
    assert len(pool.free[(2, 2)]) == 2
