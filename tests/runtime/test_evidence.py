"""Evidence clips: a real encoded clip decoded into chunks, kept in a ring, written as MP4 and
decoded back with PyAV (frames, times, audio); the store's cap, its folder check, atomic writes."""

import errno
import json
import os
import time

import av
import numpy as np
import pytest

from mirasol_edge.assets import SAMPLE_CLIP, SAMPLE_QUESTIONS
from mirasol_edge.errors import MirasolError, UsageError
from mirasol_edge.runtime import evidence
from mirasol_edge.runtime.config import MirasolConfig
from mirasol_edge.runtime.decode.chunks import ChunkSpec, chunks
from mirasol_edge.runtime.decode.mel import log_mel
from mirasol_edge.runtime.evidence import EvidenceError, EvidenceRing, EvidenceStore, write_evidence
from mirasol_edge.runtime.results import RawChunk

SPEC = ChunkSpec.from_config(MirasolConfig.preset("tiny"))  # 4 fps, 4 frames a chunk (1 s), 32x32, 16 kHz
BEEPS = json.loads(SAMPLE_QUESTIONS.read_text())["beep_chunks"]  # [2, 4]: 0.4 s to 0.65 s into each
AAC_FRAME = 1024 / SPEC.sample_rate


@pytest.fixture(scope="module")
def decoded():
    out = list(chunks(SAMPLE_CLIP, SPEC))
    assert len(out) == 6 and BEEPS == [2, 4]
    return out


def read_back(path):
    """(video pts in s, frames [N,H,W,3], audio samples, first audio pts in s, container comment, audio streams)."""
    with av.open(str(path)) as c:
        comment = c.metadata.get("comment", "")
        n_audio = len(c.streams.audio)
        pts, frames = [], []
        for f in c.decode(video=0):
            pts.append(float(f.pts * f.time_base))
            frames.append(f.to_ndarray(format="rgb24"))
    audio, a0 = np.zeros(0, np.float32), None
    if n_audio:
        with av.open(str(path)) as c:
            pieces = []
            for f in c.decode(audio=0):
                a0 = float(f.pts * f.time_base) if a0 is None else a0
                pieces.append(f.to_ndarray().reshape(-1))
            audio = np.concatenate(pieces)
    return pts, np.stack(frames), audio, a0, comment, n_audio


def rms(x):
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def test_decoded_chunks_carry_the_audio_their_mel_saw(decoded):
    for c in decoded:
        assert c.audio is not None and c.audio.dtype == np.float32 and c.audio.shape == (SPEC.samples_per_chunk,)
        np.testing.assert_allclose(log_mel(c.audio, SPEC.sample_rate, SPEC.n_fft, SPEC.hop_length, SPEC.n_mels),
                                   c.mel, atol=1e-4)
    loud = [i for i, c in enumerate(decoded) if rms(c.audio) > 0.05]
    assert loud == BEEPS
    assert not np.shares_memory(decoded[2].audio, decoded[3].audio)


def test_ring_is_bounded_and_keeps_copies(decoded):
    ring = EvidenceRing(3, SPEC.chunk_seconds)
    assert ring.maxlen == 3
    for c in decoded:
        ring.add(c)
    assert [c.index for c in ring.chunks()] == [3, 4, 5]
    kept = ring.chunks()[-1]
    source = decoded[5]
    assert not np.shares_memory(kept.frames, source.frames) and not np.shares_memory(kept.audio, source.audio)
    before = kept.frames.copy()
    source.frames[...] ^= 0xFF  # the decoder reusing its buffer
    try:
        np.testing.assert_array_equal(ring.chunks()[-1].frames, before)
    finally:
        source.frames[...] ^= 0xFF
    ring.add(decoded[0])  # the clock went back (a restarted file): the ring starts afresh
    assert [c.index for c in ring.chunks()] == [0]
    with pytest.raises(UsageError):
        EvidenceRing(0, 1.0)
    with pytest.raises(EvidenceError, match="uint8"):
        ring.add(RawChunk(np.zeros((4, 32, 32, 3), np.int16), None))


def test_evidence_clip_round_trip(tmp_path, decoded):
    ring = EvidenceRing(3, SPEC.chunk_seconds)
    for c in decoded[:4]:
        ring.add(c)
    fired = decoded[4]  # a beep: the event's chunk
    window = ring.window(fired)
    assert [c.index for c in window] == [1, 2, 3, 4]
    assert len(ring) == 3  # window() copies the fired chunk, it does not keep it
    start = time.perf_counter()
    path = write_evidence(window, tmp_path / "e.mp4", SPEC.fps, SPEC.sample_rate)
    elapsed = time.perf_counter() - start
    assert elapsed < 20, elapsed  # bounded: tens of ms here
    assert sorted(os.listdir(tmp_path)) == ["e.mp4"]  # no temporary file left
    pts, frames, audio, a0, comment, n_audio = read_back(path)
    span = window[-1].t1 - window[0].t0
    assert n_audio == 1 and "t0=1.000 t1=5.000 chunks=1-4" in comment
    assert len(pts) == len(window) * SPEC.frames_per_chunk == 16
    assert abs(pts[0] - 0.0) < 1 / SPEC.fps
    assert abs(pts[-1] + 1 / SPEC.fps - span) < 1 / SPEC.fps
    assert np.all(np.diff(pts) > 0)
    assert abs(a0) < AAC_FRAME and abs(len(audio) / SPEC.sample_rate - span) <= AAC_FRAME
    source = np.concatenate([c.frames for c in window]).astype(np.int16)
    diff = np.abs(frames.astype(np.int16) - source).mean(axis=(1, 2, 3))
    assert diff.max() < 8, diff
    per_chunk = [rms(audio[i * SPEC.samples_per_chunk : (i + 1) * SPEC.samples_per_chunk]) for i in range(4)]
    loud = [c.index for c, r in zip(window, per_chunk) if r > 0.05]
    assert loud == [2, 4], per_chunk
    heard, had = [np.flatnonzero(np.abs(x) > 0.1) for x in (audio, np.concatenate([c.audio for c in window]))]
    assert len(heard) and len(had)  # the beeps start and end where they did, to 2 ms
    assert abs(int(heard[0]) - int(had[0])) < 32 and abs(int(heard[-1]) - int(had[-1])) < 32, (heard, had)
    for c, r in zip(window, per_chunk):  # what the chunk had, within AAC's loss
        assert abs(r - rms(c.audio)) < 0.05 + 0.2 * rms(c.audio), (c.index, r, rms(c.audio))
    # on the stream's clock instead: the same file, its times from 0
    pts, _, _, a0, _, _ = read_back(write_evidence(window, tmp_path / "abs.mp4", SPEC.fps, SPEC.sample_rate,
                                                   origin=0.0))
    assert abs(pts[0] - window[0].t0) < 1 / SPEC.fps and abs(a0 - window[0].t0) <= AAC_FRAME


def test_raw_chunks_without_audio_and_odd_sizes(tmp_path):
    y, x = np.mgrid[0:31, 0:33]  # odd: padded to 32x34
    base = np.stack([40 + 4 * x, 40 + 4 * y, np.full_like(x, 120)], axis=-1).astype(np.uint8)[None]
    ring = EvidenceRing(1.0, 0.5)
    for i in range(3):
        ring.add(RawChunk(np.repeat(base, 2, axis=0) + np.uint8(10 * i), None))
    kept = ring.chunks()
    assert [(c.index, c.t0, c.t1) for c in kept] == [(1, 0.5, 1.0), (2, 1.0, 1.5)]
    path = write_evidence(kept, tmp_path / "raw.mp4", fps=4.0, sample_rate=16000)
    pts, frames, audio, _, _, n_audio = read_back(path)
    assert n_audio == 0 and len(audio) == 0  # nothing was heard: no audio track
    assert frames.shape == (4, 32, 34, 3) and abs(pts[-1] + 0.25 - 1.0) < 0.25
    source = np.concatenate([c.frames for c in kept]).astype(np.int16)
    assert np.abs(frames[:, :31, :33].astype(np.int16) - source).mean() < 12


def _store_files(store):
    return sorted(p.name for p in store.folder.iterdir())


def test_store_cap_removes_oldest_of_its_own_only(tmp_path, decoded):
    one = decoded[2:3]
    store = EvidenceStore(tmp_path, "cam")
    assert store.folder == tmp_path / "cam"
    first = store.save(one, "door", 0, SPEC.fps, SPEC.sample_rate)
    assert first.name == "cam-door-00000000.mp4" and first.exists()
    size = first.stat().st_size
    (store.folder / "NOTES.md").write_text("keep me")
    foreign = store.folder / "other-door-00000001.mp4"  # another stream's evidence, put here
    foreign.write_bytes(b"x" * (10 * size))
    sibling = EvidenceStore(tmp_path, "cam-1")  # a stream whose name starts like this one's
    theirs = sibling.save(one, "door", 0, SPEC.fps, SPEC.sample_rate)

    capped = EvidenceStore(tmp_path, "cam", max_bytes=int(2.5 * size))
    for i in range(1, 4):
        os.utime(store.folder / f"cam-door-{i - 1:08d}.mp4", ns=(i * 10**9, i * 10**9))  # clearly older
        capped.save(one, "door", i, SPEC.fps, SPEC.sample_rate)
    assert _store_files(capped) == ["NOTES.md", "cam-door-00000002.mp4", "cam-door-00000003.mp4",
                                    "other-door-00000001.mp4"]
    assert sum(p.stat().st_size for p in capped.files()) <= capped.max_bytes
    assert theirs.exists() and foreign.stat().st_size == 10 * size and (store.folder / "NOTES.md").exists()

    tiny = EvidenceStore(tmp_path, "cam", max_bytes=1)  # one clip over the cap: the newest is kept
    newest = tiny.save(one, "window", 7, SPEC.fps, SPEC.sample_rate)
    assert [p.name for p in tiny.files()] == [newest.name]
    assert theirs.exists() and foreign.exists()
    with pytest.raises(UsageError, match="slug"):
        tiny.save(one, "a/b", 8, SPEC.fps, SPEC.sample_rate)


def test_unwritable_folder_is_a_usage_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(UsageError) as info:
        EvidenceStore(blocker / "evidence", "cam")
    assert "--evidence" in str(info.value) and str(blocker / "evidence") in str(info.value)
    if os.geteuid() != 0:  # root writes anywhere: a read-only folder only stops others
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        with pytest.raises(UsageError, match="--evidence"):
            EvidenceStore(ro, "cam")
    with pytest.raises(UsageError):
        EvidenceStore(tmp_path, "../up")


def test_stale_temp_files_are_cleaned_fresh_ones_kept(tmp_path):
    folder = tmp_path / "cam"
    folder.mkdir()
    stale, fresh = folder / ".cam-door-00000001.mp4.abc.tmp", folder / ".cam-door-00000002.mp4.def.tmp"
    other = folder / ".other-door-00000001.mp4.ghi.tmp"
    for p in (stale, fresh, other):
        p.write_bytes(b"partial")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    os.utime(other, (time.time() - 3600, time.time() - 3600))
    EvidenceStore(tmp_path, "cam")
    assert not stale.exists() and fresh.exists() and other.exists()


@pytest.mark.parametrize("bad", [
    dict(fps=1e9), dict(fps=float("nan")), dict(fps=0), dict(sample_rate=7),
    dict(frames=np.zeros((4, 32, 32, 3), np.float32)), dict(frames=np.zeros((4, 32, 32), np.uint8)),
], ids=["fps-huge", "fps-nan", "fps-0", "rate-7", "float-frames", "no-channels"])
def test_failing_writes_leave_nothing(tmp_path, decoded, bad):
    good = write_evidence(decoded[:1], tmp_path / "e.mp4", SPEC.fps, SPEC.sample_rate)
    before = good.read_bytes()
    chunk = RawChunk(bad.get("frames", decoded[0].frames), None, 0.0, 1.0)
    with pytest.raises(EvidenceError) as info:
        write_evidence([chunk], good, bad.get("fps", SPEC.fps), bad.get("sample_rate", SPEC.sample_rate))
    assert isinstance(info.value, MirasolError) and str(good) in str(info.value)
    assert sorted(os.listdir(tmp_path)) == ["e.mp4"] and good.read_bytes() == before  # the old file stands


def test_disk_full_mid_write_raises_and_leaves_nothing(tmp_path, decoded, monkeypatch):
    store = EvidenceStore(tmp_path, "cam")
    kept = store.save(decoded[:1], "door", 0, SPEC.fps, SPEC.sample_rate)
    written = []

    def full(out, stream, entries, sample_rate, origin):  # the video is muxed by now: a partial file exists
        written.extend(p.name for p in store.folder.iterdir() if p.name.endswith(".tmp"))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(evidence, "_encode_audio", full)
    with pytest.raises(EvidenceError, match="No space left"):
        store.save(decoded[1:3], "door", 2, SPEC.fps, SPEC.sample_rate)
    assert len(written) == 1  # the failure came while the temporary file was there
    assert _store_files(store) == [kept.name]
