"""Video frames from NVIDIA DALI, decoded sequentially (``fn.experimental.inputs.video``), and the
``dali-cpu`` / ``dali-gpu`` decoders (``DaliSource``: DALI's frames, PyAV's audio).

DALI's seek-based reader slows to a crawl on long videos (DALI issue 5672), so the file's
bytes are fed once to the streaming input operator and consecutive sequences come out.
Resize happens inside the pipeline (on the GPU for the ``mixed`` decoder), with the triangle
filter of colour.py (DALI's linear resize with antialias). DALI's decoder converts to RGB itself,
always as BT.601 (range from the stream); where colour.py's policy says otherwise (BT.709 HD,
a tagged stream), the pipeline applies the exact correction (``colour.correction``). What DALI
clipped in its own conversion (saturated colours that BT.601 puts out of gamut) stays clipped.

What decodes where, measured on these machines (tests/runtime/test_decode.py, bench/decode.py):
- CPU decoder: VP9 and MJPEG; **not** H.264 or MPEG-4 (PyAV does those).
- mixed (NVDEC) decoder: H.264, HEVC, VP9, AV1 on a GPU.
- Jetson: DALI does not decode video at all (DALI issue 2662).
"""

from __future__ import annotations

import ctypes
import heapq
import platform
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from . import colour
from .events import Decoding, Ended, Event, Progress, Video
from .pyav_source import demux
from .types import NotMedia, TruncatedMedia, UnsupportedCodec

CPU_CODECS = frozenset({"vp9", "mjpeg"})
NVDEC_CODECS = frozenset({"h264", "hevc", "vp9", "av1"})
SEQUENCE = 16  # frames per DALI run: enough to amortize a run, small enough to bound memory


def available() -> bool:
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        return False
    return not is_jetson()


def is_jetson() -> bool:
    return platform.machine() == "aarch64" and (
        _read("/etc/nv_tegra_release") is not None or "tegra" in (_read("/proc/device-tree/compatible") or "")
    )


def _read(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return f.read().decode(errors="replace")
    except OSError:
        return None


def gpu_available() -> bool:
    try:
        from nvidia.dali.backend import GetCUDADeviceCount

        return GetCUDADeviceCount() > 0
    except (ImportError, RuntimeError):
        return False


def frames(data: bytes, image_size: int, device: str = "cpu", on_device: bool = False,
           fix: tuple[np.ndarray, np.ndarray] | None = None) -> Iterator:
    """Every frame of an encoded video, in order, resized to ``image_size`` square, RGB uint8: on
    the host, or with ``on_device`` (NVDEC) as ``DeviceFrame``s that never leave the GPU.
    ``fix``: (A, b) applied as ``rgb @ A.T + b`` after the resize (``colour.correction``)."""
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(batch_size=1, num_threads=2, device_id=0 if device == "gpu" else None, prefetch_queue_depth=1)
    def pipeline():
        # no_copy: DALI reads the caller's bytes in place (``data`` outlives the pipeline), so the
        # file is held once, not twice.
        video = fn.experimental.inputs.video(name="video", sequence_length=SEQUENCE,
                                             device="mixed" if device == "gpu" else "cpu",
                                             last_sequence_policy="partial", no_copy=True)
        resized = fn.resize(video, resize_x=image_size, resize_y=image_size, interp_type=types.INTERP_LINEAR,
                            antialias=True, dtype=types.FLOAT if fix is not None else None)
        return resized if fix is None else _corrected(resized, *fix)

    pipe = pipeline()
    pipe.build()
    pipe.feed_input("video", [np.frombuffer(data, np.uint8)])
    pool = None
    if on_device and device == "gpu":
        from mirasol_edge.runtime.cuda import DeviceBuffer

        from .device_frames import BufferPool

        pool = BufferPool(lambda shape: DeviceBuffer(shape, np.uint8))
    while True:
        try:
            (out,) = pipe.run()
        except RuntimeError as exc:
            if "No data was provided" in str(exc):  # the file is used up: DALI's way of saying so
                return
            raise
        if on_device and device == "gpu":
            count = yield from _device_sequence(out[0], pool)
        else:
            batch = out.as_cpu() if device == "gpu" else out
            sequence = np.array(batch[0])
            count = len(sequence)
            yield from sequence
        if count < SEQUENCE:
            return


def _corrected(rgb, a: np.ndarray, b: np.ndarray):
    """``rgb @ A.T + b`` per pixel, in DALI's arithmetic (CPU or GPU alike), rounded back to uint8."""
    from nvidia.dali import fn, types
    from nvidia.dali import math as dmath

    channels = [rgb[:, :, :, c] for c in range(3)]
    mixed = [sum(float(a[i, k]) * channels[k] for k in range(3)) + float(b[i]) for i in range(3)]
    return fn.cast(dmath.clamp(fn.stack(*mixed, axis=3, axis_name="C"), 0.0, 255.0), dtype=types.UINT8)


def _device_sequence(tensor, pool) -> Iterator:
    """A DALI ``TensorGPU`` [S, H, W, 3] copied (device to device, waited for) into a pooled buffer
    of ours, as one ``DeviceFrame`` per frame; returns S."""
    from .device_frames import DeviceFrame

    shape = tuple(tensor.shape())
    lease = pool.take(shape)
    copy_to_pointer(tensor, lease.buffer.ptr)
    for k in range(shape[0]):
        yield DeviceFrame(lease.buffer, k, shape[1:], lease)
    return shape[0]


def copy_to_pointer(tensor, ptr: int) -> None:
    """A DALI tensor's bytes copied to the address ``ptr`` (device memory for a ``TensorGPU``, host
    memory for a ``TensorCPU``), waited for. DALI reads the address as ``ptr.value`` of a
    ``ctypes.c_void_p``: a plain int arrives as NULL (it segfaulted DALI 2.4.0's CPU tensor)."""
    from nvidia.dali.backend import TensorGPU

    target = ctypes.c_void_p(ptr)
    if isinstance(tensor, TensorGPU):
        tensor.copy_to_external(target, non_blocking=False)
    else:
        tensor.copy_to_external(target)


class DaliSource:
    """The ``dali-cpu`` and ``dali-gpu`` decoders: DALI's frames, timed by the file's constant rate
    (measured by choose.py: DALI gives no timestamps), merged in time order with PyAV's audio."""

    audio_by_time = False
    audio_offset = 0.0

    def __init__(self, path, container, name: str, spec, decoder: str, rate: Fraction,
                 on_device: bool = False) -> None:
        self.path, self.container, self.name, self.spec = path, container, name, spec
        self.decoder, self.rate, self.on_device = decoder, rate, on_device
        self.vstream = container.streams.video[0]
        self.astream = container.streams.audio[0] if container.streams.audio else None
        self.has_audio = self.astream is not None

    def correction(self) -> tuple[np.ndarray, np.ndarray] | None:
        """From DALI's conversion (BT.601, the stream's range) to the policy's for this stream."""
        ctx = self.vstream.codec_context
        wanted = colour.from_av(getattr(ctx, "colorspace", None), getattr(ctx, "color_range", None),
                                ctx.pix_fmt or "", ctx.width, ctx.height)
        return colour.correction(colour.Colour("bt601", wanted.full_range, tagged=True), wanted)

    def events(self, progress: Progress) -> Iterator[Event]:
        yield Decoding(self.decoder)
        stream = self.vstream
        start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
        data = Path(self.path).read_bytes()
        device, rate = ("gpu" if self.decoder == "dali-gpu" else "cpu"), self.rate
        fix = self.correction()

        def video() -> Iterator[Event]:
            for k, rgb in enumerate(frames(data, self.spec.image_size, device, self.on_device, fix)):
                yield Video(start + float(k / rate), rgb)

        audio = demux(self.container, None, self.astream, self.spec.sample_rate, self.name) if self.astream else ()
        count = 0
        try:
            for event in heapq.merge(video(), audio, key=_order):
                count += isinstance(event, Video)
                yield event
        except av.error.FFmpegError as exc:
            raise TruncatedMedia(f"{self.name}: audio decoding stopped: {exc}") from None
        except RuntimeError as exc:  # DALI reports decode failures as RuntimeError
            raise UnsupportedCodec(f"{self.name}: DALI ({self.decoder}) failed to decode: "
                                   f"{str(exc).splitlines()[0]}") from None
        if not count:
            raise NotMedia(f"{self.name}: no decodable video frames")
        yield Ended(float(self.container.duration) / 1e6 if self.container.duration else None, float(1 / rate))

    def close(self) -> None:
        self.container.close()


def _order(event) -> float:
    """Merge key: by time; events with none go out at once, except audio's tail, which goes last."""
    time = getattr(event, "time", None)
    if time is not None:
        return time
    return float("inf") if hasattr(event, "samples") else float("-inf")


class LogMel:
    """The model's log-mel with DALI's operators (``spectrogram``, ``mel_filter_bank``, ``to_decibels``).

    Same definition as ``mel.log_mel`` (periodic Hann, centred reflect-padded frames, power,
    Slaney filters, dB floored at -100): matches the torch reference within 1e-4 dB. One
    pipeline is built and fed chunk after chunk.
    """

    def __init__(self, sample_rate: int, n_fft: int, hop_length: int, n_mels: int, device: str = "cpu") -> None:
        from nvidia.dali import fn, pipeline_def, types

        window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)).astype(np.float32).tolist()
        self.hop, self.device = hop_length, device

        @pipeline_def(batch_size=1, num_threads=1, device_id=0 if device == "gpu" else None,
                      prefetch_queue_depth=1, exec_async=False, exec_pipelined=False)
        def pipeline():
            audio = fn.external_source(name="audio", dtype=types.FLOAT, ndim=1,
                                       device="gpu" if device == "gpu" else "cpu")
            spec = fn.spectrogram(audio, nfft=n_fft, window_length=n_fft, window_step=hop_length,
                                  center_windows=True, reflect_padding=True, power=2, layout="tf", window_fn=window)
            mel = fn.mel_filter_bank(spec, sample_rate=sample_rate, nfilter=n_mels, freq_low=0.0,
                                     freq_high=sample_rate / 2, normalize=True, mel_formula="slaney")
            return fn.to_decibels(mel, multiplier=10.0, reference=1.0, cutoff_db=-100.0)

        self.pipe = pipeline()
        self.pipe.build()

    def __call__(self, audio: np.ndarray) -> np.ndarray:
        """Mono float32 samples [S] -> [S // hop, n_mels] float32 (host)."""
        self.pipe.feed_input("audio", [np.ascontiguousarray(audio, dtype=np.float32)])
        (out,) = self.pipe.run()
        mel = np.array((out.as_cpu() if self.device == "gpu" else out)[0])
        return mel[: len(audio) // self.hop]
