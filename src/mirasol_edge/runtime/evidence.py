"""Evidence clips for watch events: the last seconds of a stream, kept and written as an MP4.

- ``EvidenceRing`` keeps copies of the last ``ceil(seconds / chunk_seconds)`` chunks (bounded).
- ``write_evidence``: H.264 (libx264, yuv420p) + mono AAC (FFmpeg's ``aac``) through PyAV, whole
  or not at all (a temporary file beside it, then ``os.replace``).
- ``EvidenceStore`` names the files, keeps a stream's under a byte cap, and is checked when made
  (a bad ``--evidence`` folder fails at start, not at the first event).

Times: frame ``k`` of a chunk is shown at ``t0 + k / fps`` and its audio covers ``[t0, t1)``,
each placed by the chunk's own times (a dropped chunk is a held frame and silence, not a jump).
By default the file's clock starts at the first chunk's ``t0`` (``origin``): a clip from an hour
into a stream is a 4 s file, not an hour of empty edit; the stream times are in its ``comment``.

Audio: a chunk without ``.audio`` (a ``RawChunk``) is silence among chunks that have some; when
none has any, the file has no audio track (nothing was heard; a silent track would claim so). A
decoded ``Chunk`` of a source without audio carries zeros (what its mel saw): a silent track.
"""

from __future__ import annotations

import itertools
import math
import re
import stat
import tempfile
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from mirasol_edge.errors import MirasolError, UsageError
from mirasol_edge.runtime.files import atomic_path

DEFAULT_MAX_BYTES = 256 * 1024 * 1024
MAX_FPS = 240.0
MAX_SPAN_SECONDS = 3600.0  # a clip longer than this is a mistake, not evidence
AAC_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 64000, 88200, 96000)
VIDEO_TIME_BASE = Fraction(1, 90000)
SLUG = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
STALE_TEMP_SECONDS = 600.0  # a temporary file this old is left from a crash, not a write under way


class EvidenceError(MirasolError):
    """An evidence clip could not be written (bad chunks, settings, or the disk); nothing was left."""

    exit_code = 6  # the errors table's "the output directory"


@dataclass(frozen=True)
class EvidenceChunk:
    """One chunk as the ring keeps it: its own copies, on the host."""

    frames: np.ndarray  # [F, H, W, 3] uint8 RGB
    audio: np.ndarray | None  # [S] float32 mono at the stream's sample rate, or None (none came)
    t0: float
    t1: float
    index: int


class EvidenceRing:
    """The last ``ceil(seconds / chunk_seconds)`` chunks, copied as they are added.

    Memory: that many chunks' frames and audio (the tiny preset's 1 s chunks: 12 KiB of frames
    each; 16 frames at 224x224: 2.4 MiB each). Chunks more than ``seconds`` before the newest
    (a source that reconnected after a gap) are dropped too, so a clip never spans the gap.
    """

    def __init__(self, seconds: float, chunk_seconds: float) -> None:
        if not (_finite(seconds) and seconds > 0):
            raise UsageError(f"evidence_seconds must be a number over 0, got {seconds!r}")
        if not (_finite(chunk_seconds) and chunk_seconds > 0):
            raise UsageError(f"chunk_seconds must be a number over 0, got {chunk_seconds!r}")
        self.seconds, self.chunk_seconds = float(seconds), float(chunk_seconds)
        self.maxlen = max(1, math.ceil(self.seconds / self.chunk_seconds - 1e-9))
        self._chunks: deque[EvidenceChunk] = deque(maxlen=self.maxlen)

    def __len__(self) -> int:
        return len(self._chunks)

    def add(self, chunk: Any) -> EvidenceChunk:
        """Keep a copy of ``chunk`` (a decoded ``Chunk``, a ``RawChunk``, anything with ``.frames``
        and optionally ``.audio``, ``.t0``, ``.t1``, ``.index``); returns what was kept. Missing
        times follow the previous chunk (``chunk_seconds`` each); a missing index counts on."""
        kept = self._copy(chunk)
        self._trim(kept.t0)
        self._chunks.append(kept)
        return kept

    def chunks(self) -> list[EvidenceChunk]:
        """What the ring holds, oldest first."""
        return list(self._chunks)

    def window(self, fired: Any = None) -> list[EvidenceChunk]:
        """The clip for an event: the kept chunks, then ``fired`` (copied, not kept) unless it is
        the newest one already (the same index and t0). Drops kept chunks more than ``seconds``
        before it, as ``add`` would."""
        last = self._chunks[-1] if self._chunks else None
        if fired is None or (last and (getattr(fired, "index", None), getattr(fired, "t0", None)) == (last.index, last.t0)):
            return self.chunks()
        entry = self._copy(fired)
        return [c for c in self._chunks if c.t1 > entry.t0 - self.seconds + 1e-9 and c.t0 < entry.t0] + [entry]

    def _trim(self, t0: float) -> None:
        """Before a chunk at ``t0`` goes in: the clock went back (a restarted source)? start afresh;
        and drop what ends ``seconds`` or more before it."""
        if self._chunks and self._chunks[-1].t0 >= t0:
            self._chunks.clear()
        while self._chunks and self._chunks[0].t1 <= t0 - self.seconds + 1e-9:
            self._chunks.popleft()

    def _copy(self, chunk: Any) -> EvidenceChunk:
        last = self._chunks[-1] if self._chunks else None
        frames, audio = _host_frames(getattr(chunk, "frames", None)), getattr(chunk, "audio", None)
        audio = None if audio is None else np.array(audio, dtype=np.float32).reshape(-1)  # a copy, always
        t0, t1, index = (getattr(chunk, k, None) for k in ("t0", "t1", "index"))
        t0 = float(t0) if t0 is not None else (last.t1 if last else 0.0)
        t1 = float(t1) if t1 is not None else t0 + self.chunk_seconds
        index = int(index) if index is not None else (last.index + 1 if last else 0)
        if not (_finite(t0) and _finite(t1) and t1 > t0):
            raise EvidenceError(f"chunk {index}: its times must be finite with t1 > t0, got [{t0}, {t1})")
        return EvidenceChunk(frames, audio, t0, t1, index)


def write_evidence(chunks: Sequence[Any], path: str | Path, fps: float, sample_rate: int,
                   origin: float | None = None, comment: str = "") -> Path:
    """Write ``chunks`` (``EvidenceChunk``s, or decoded ``Chunk``s: uint8 frames on the host, with
    times) to ``path`` as MP4: H.264 yuv420p video (odd sizes padded by one edge row/column)
    and, when any chunk has audio, mono AAC at ``sample_rate`` (resampled to the nearest AAC rate
    above it when AAC has no such rate). Timestamps are the chunks' times minus ``origin`` (the
    first chunk's ``t0`` unless given; ``0.0`` keeps the stream's clock). Raises ``EvidenceError``
    and leaves nothing at ``path`` when it cannot write."""
    import av  # here, not at import: the runtime may be used without evidence

    path = Path(path)
    entries = _check(chunks, fps, sample_rate, path)
    origin = entries[0].t0 if origin is None else float(origin)
    if not _finite(origin) or origin > entries[0].t0:
        raise EvidenceError(f"{path}: origin must be finite and at most the first chunk's t0, got {origin!r}")
    h, w = entries[0].frames.shape[1:3]
    span = f"t0={entries[0].t0:.3f} t1={entries[-1].t1:.3f} chunks={entries[0].index}-{entries[-1].index}"
    try:
        with atomic_path(path) as tmp:
            with av.open(str(tmp), "w", format="mp4", options={"movflags": "+faststart"}) as out:
                out.metadata["comment"] = f"mirasol evidence: {span}" + (f" {comment}" if comment else "")
                video = out.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
                video.width, video.height, video.pix_fmt = w + w % 2, h + h % 2, "yuv420p"
                video.codec_context.time_base = VIDEO_TIME_BASE
                video.options = {"preset": "veryfast", "crf": "20"}
                audio = None
                if any(e.audio is not None for e in entries):
                    audio = out.add_stream("aac", rate=_aac_rate(sample_rate))
                    audio.layout = "mono"
                _encode_video(out, video, entries, fps, origin)
                if audio is not None:
                    _encode_audio(out, audio, entries, sample_rate, origin)
    except (OSError, av.FFmpegError) as e:  # a full disk, a folder gone: FFmpeg's errors are OSErrors too
        raise EvidenceError(f"{path}: could not write the evidence clip: {e}") from e
    return path


def _encode_video(out: Any, stream: Any, entries: list[EvidenceChunk], fps: float, origin: float) -> None:
    import av

    last = -1
    for e in entries:
        frames = e.frames
        h, w = frames.shape[1:3]
        if h % 2 or w % 2:  # yuv420p needs even sizes: repeat the last row / column
            frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        for k, rgb in enumerate(frames):
            pts = max(last + 1, round((e.t0 + k / fps - origin) / VIDEO_TIME_BASE))
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            frame.pts, frame.time_base, last = pts, VIDEO_TIME_BASE, pts
            for packet in stream.encode(frame):
                out.mux(packet)
    for packet in stream.encode():
        out.mux(packet)


def _encode_audio(out: Any, stream: Any, entries: list[EvidenceChunk], sample_rate: int, origin: float) -> None:
    """The chunks' samples end to end, in the encoder's frame size (FFmpeg's ``aac``: fltp, 1024)."""
    import av

    ctx = stream.codec_context
    rate, fmt, block = ctx.sample_rate, ctx.format.name, ctx.frame_size or 1024
    pts, buffer = round((entries[0].t0 - origin) * rate), np.zeros(0, np.float32)
    for piece in itertools.chain(_audio_pieces(entries, sample_rate, rate), [None]):
        buffer = buffer if piece is None else np.concatenate([buffer, piece])
        whole = len(buffer) if piece is None else len(buffer) - len(buffer) % block  # the rest waits
        for start in range(0, whole, block):
            frame = av.AudioFrame.from_ndarray(buffer[None, start : start + block], format=fmt, layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = rate, pts, Fraction(1, rate)
            pts += frame.samples
            for packet in stream.encode(frame):
                out.mux(packet)
        buffer = buffer[whole:]
    for packet in stream.encode():
        out.mux(packet)


def _audio_pieces(entries: list[EvidenceChunk], sample_rate: int, rate: int) -> Iterator[np.ndarray]:
    """From the first ``t0`` to the last ``t1`` at ``rate``: each chunk's samples where its times
    say, silence where a chunk has none and between chunks (a second at a time: memory stays small)."""
    cursor = round(entries[0].t0 * rate)  # on the stream's clock, in output samples
    for e in entries:
        begin, end = round(e.t0 * rate), round(e.t1 * rate)
        for gap in range(cursor, begin, rate):
            yield np.zeros(min(rate, begin - gap), np.float32)
        samples = np.zeros(end - begin, np.float32)
        if e.audio is not None:
            source = e.audio if rate == sample_rate else _resample(e.audio, sample_rate, rate)
            samples[: min(len(source), len(samples))] = source[: len(samples)]
        yield samples[max(0, cursor - begin) :]  # an overlap with the chunk before: its samples stand
        cursor = max(cursor, end)


def _check(chunks: Sequence[Any], fps: float, sample_rate: int, path: Path) -> list[EvidenceChunk]:
    """The chunks as ``EvidenceChunk``s (views, not copies), or ``EvidenceError`` saying what is wrong."""
    if not (_finite(fps) and 0 < fps <= MAX_FPS):
        raise EvidenceError(f"{path}: fps must be a number in (0, {MAX_FPS:g}], got {fps!r}")
    if not (_whole(sample_rate) and 1000 <= sample_rate <= max(AAC_RATES)):
        raise EvidenceError(f"{path}: sample_rate must be whole Hz in [1000, {max(AAC_RATES)}], got {sample_rate!r}")
    entries: list[EvidenceChunk] = []
    for i, c in enumerate(chunks):
        frames, (audio, t0, t1, index) = c.frames, (getattr(c, k, None) for k in ("audio", "t0", "t1", "index"))
        shape = getattr(frames, "shape", ())
        if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or len(shape) != 4 or shape[-1] != 3 \
                or 0 in shape or (entries and shape[1:] != entries[0].frames.shape[1:]):
            raise EvidenceError(f"{path}: chunk {i}: frames must be uint8 [F, H, W, 3] on the host, one size for "
                                f"the clip; got {getattr(frames, 'dtype', type(frames).__name__)} {shape}")
        if not (_finite(t0) and _finite(t1) and t1 > t0) or (entries and t0 < entries[-1].t0):
            raise EvidenceError(f"{path}: chunk {i}: needs finite times with t1 > t0, in order; got [{t0}, {t1})")
        audio = None if audio is None else np.asarray(audio, dtype=np.float32).reshape(-1)
        entries.append(EvidenceChunk(frames, audio, float(t0), float(t1), i if index is None else int(index)))
    if not entries:
        raise EvidenceError(f"{path}: no chunks to write")
    if entries[-1].t1 - entries[0].t0 > MAX_SPAN_SECONDS:
        raise EvidenceError(f"{path}: the chunks span {entries[-1].t1 - entries[0].t0:.0f} s, over "
                            f"{MAX_SPAN_SECONDS:.0f} s: not one event's evidence")
    return entries


class EvidenceStore:
    """Evidence files of one stream, in ``folder/<stream>/``, named
    ``<stream>-<watch>-<chunk_index:08d>.mp4``, their total kept under ``max_bytes`` by removing
    the oldest of them (by modification time). Only files of that name pattern are counted or
    removed: anything else in the folder (notes, other streams' files) stays. The file just
    written is never removed, so one clip larger than the cap is kept (and the total is over it)."""

    def __init__(self, folder: str | Path, stream: str, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        _slug(stream, "stream")
        if not (_whole(max_bytes) and max_bytes > 0):
            raise UsageError(f"evidence max_bytes must be a whole number of bytes over 0, got {max_bytes!r}")
        self.root, self.stream, self.max_bytes = Path(folder), stream, int(max_bytes)
        self.folder = self.root / stream
        self._own = re.compile(re.escape(stream) + r"-[A-Za-z0-9][A-Za-z0-9_.-]*-\d{8,}\.mp4")
        self._temp = re.compile(r"\." + re.escape(stream) + r"-.+-\d{8,}\.mp4\..+\.tmp")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=self.folder, prefix=".write-check-") as probe:
                probe.write(b"x")
        except OSError as e:
            raise UsageError(f"--evidence {self.root}: cannot create or write the evidence folder "
                             f"{self.folder}: {e.strerror or e}") from e
        self._remove_stale_temps()

    def path_for(self, watch_slug: str, chunk_index: int) -> Path:
        _slug(watch_slug, "watch")
        if not (_whole(chunk_index) and chunk_index >= 0):
            raise UsageError(f"chunk_index must be a whole number >= 0, got {chunk_index!r}")
        return self.folder / f"{self.stream}-{watch_slug}-{int(chunk_index):08d}.mp4"

    def save(self, chunks: Sequence[Any], watch_slug: str, chunk_index: int, fps: float, sample_rate: int) -> Path:
        """Write the clip (``write_evidence``), then remove the oldest files over the cap.
        Raises ``EvidenceError`` (nothing left behind) when it cannot write."""
        path = self.path_for(watch_slug, chunk_index)
        write_evidence(chunks, path, fps, sample_rate, comment=f"stream={self.stream} watch={watch_slug}")
        self._enforce_cap(keep=path)
        return path

    def files(self) -> list[Path]:
        """This stream's evidence files, oldest first."""
        found = [(_stat(p)[0], p.name) for p in self.folder.iterdir() if self._own.fullmatch(p.name)]
        return [self.folder / name for mtime, name in sorted(found) if mtime >= 0]

    def _enforce_cap(self, keep: Path) -> None:
        files = [(p, _stat(p)[1]) for p in self.files()]
        total = sum(size for _, size in files)
        for p, size in files:
            if total > self.max_bytes and p != keep:
                p.unlink(missing_ok=True)
                total -= size

    def _remove_stale_temps(self) -> None:
        """Temporary files of ours left by a crash (a write under way is younger than this)."""
        stale = time.time_ns() - int(STALE_TEMP_SECONDS * 1e9)
        for p in self.folder.iterdir():
            if self._temp.fullmatch(p.name) and 0 <= _stat(p)[0] < stale:
                p.unlink(missing_ok=True)


def _slug(value: Any, what: str) -> None:
    if not isinstance(value, str) or not SLUG.fullmatch(value):
        raise UsageError(f"the evidence file's {what} name must be a slug (letters, digits, '_', '.', '-'; "
                         f"starting with a letter or digit; at most 100), got {value!r}")


def _stat(path: Path) -> tuple[int, int]:
    """(mtime in ns, size) of a regular file; (-1, 0) when it is gone or not a plain file."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return -1, 0
    return (st.st_mtime_ns, st.st_size) if stat.S_ISREG(st.st_mode) else (-1, 0)


def _host_frames(frames: Any) -> np.ndarray:
    """A uint8 [F, H, W, 3] copy on the host (float frames in [0, 1] scaled, as the model takes them)."""
    if frames is None:
        raise EvidenceError("a chunk without frames cannot be kept as evidence")
    frames = np.array(frames)  # a copy; frames on the GPU are downloaded
    if frames.ndim != 4 or frames.shape[-1] != 3 or 0 in frames.shape:
        raise EvidenceError(f"evidence frames must be [F, H, W, 3], got {frames.shape}")
    if frames.dtype == np.uint8:
        return frames
    if np.issubdtype(frames.dtype, np.floating):
        return (np.clip(np.nan_to_num(frames), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    raise EvidenceError(f"evidence frames must be uint8 (or float in [0, 1]), got {frames.dtype}")


def _aac_rate(sample_rate: int) -> int:
    return next((r for r in AAC_RATES if r >= sample_rate), AAC_RATES[-1])


def _resample(audio: np.ndarray, rate: int, target: int) -> np.ndarray:
    n = round(len(audio) * target / rate)
    return np.interp(np.arange(n) * (rate / target), np.arange(len(audio)), audio).astype(np.float32)


def _whole(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool) and math.isfinite(x)
