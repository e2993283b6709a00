"""Decoding real encoded media (written by PyAV encoders in the tests) into model chunks."""

import numpy as np
import pytest
import torch

from mirasol_edge.runtime.decode.chunks import (
    AbsurdDimensions,
    ChunkSpec,
    EmptySource,
    Flags,
    NotMedia,
    NoVideoStream,
    ShortSource,
    TruncatedMedia,
    UnsupportedCodec,
    chunks,
)
from mirasol_edge.runtime.decode.mel import log_mel as numpy_log_mel
from mirasol_edge.toolkit import MirasolConfig
from mirasol_edge.toolkit.audio import log_mel as torch_log_mel
from tests.media import frame_index, write_clip, write_ts_segment

SPEC = ChunkSpec.from_config(MirasolConfig.preset("tiny"))  # 4 fps, 4 frames/chunk, 32x32, 16 kHz


@pytest.mark.parametrize(
    "kw",
    [
        dict(vcodec="libx264", acodec="aac"),  # B-frames on
        dict(vcodec="libvpx-vp9", acodec="libopus", rate=48000),
        dict(vcodec="mjpeg", acodec="pcm_s16le", rate=44100, channels=2),
    ],
    ids=["h264-bframes-aac", "vp9-opus48k", "mjpeg-pcm44k-stereo"],
)
def test_frames_follow_the_model_clock(tmp_path, kw):
    clip = write_clip(tmp_path / "c.mkv", 5.5, fps=10, size=(66, 50), **kw)  # odd size
    out = list(chunks(clip, SPEC))
    assert [c.index for c in out] == list(range(6))
    for c in out:
        assert c.frames.shape == (4, 32, 32, 3) and c.frames.dtype == np.uint8
        assert c.mel.shape == (100, 32) and c.mel.dtype == np.float32
        assert c.t1 - c.t0 == pytest.approx(1.0)
        for k, frame in enumerate(c.frames):
            t = min(c.t0 + k / SPEC.fps, 5.25)  # padding repeats the last sampled frame (t = 5.25 s)
            expected = int(np.floor(t * 10 + 1e-9))  # last source frame at or before t
            assert frame_index(frame) == expected, (c.index, k)
    assert out[-1].flags & Flags.PADDED and not out[0].flags & Flags.PADDED


def test_variable_frame_rate_uses_timestamps(tmp_path):
    clip = write_clip(tmp_path / "vfr.mkv", 4.0, fps=10, vfr=True)
    times = np.cumsum(np.where(np.arange(40) % 3 == 0, 2.0, 1.0)) / 10
    times = times[times < 4.0] - times[0]
    out = list(chunks(clip, SPEC, last="drop"))
    assert [c.index for c in out] == [0, 1, 2, 3]  # the last frame (3.7 s) covers chunk 3's last sample (3.75 s)
    got, by_frame_count = [], []
    for c in out:
        for k, frame in enumerate(c.frames):
            t = c.t0 + k / SPEC.fps
            got.append(frame_index(frame))
            expected = int(np.searchsorted(times, t + 1e-9, side="right") - 1)
            assert got[-1] == expected, (c.index, k)
            by_frame_count.append(int(np.floor(t * 10 + 1e-9)))  # what assuming 10 fps would pick
    assert got != by_frame_count, "this clip's timestamps should matter"


def onset_frame(mel: np.ndarray) -> int:
    return int(np.argmax(mel.max(axis=1) > -30))


@pytest.mark.parametrize("name, acodec, rate, channels", [
    ("b.mkv", "pcm_s16le", 44100, 2), ("b.mkv", "aac", 16000, 1), ("b.mp4", "aac", 44100, 2),
    ("b.mkv", "libopus", 48000, 1), ("b.webm", "libopus", 48000, 2),
])
def test_beeps_land_in_their_chunk_within_one_hop(tmp_path, name, acodec, rate, channels):
    """Encoder delay (AAC priming, Opus pre-skip) is undone by the demuxer: every codec lands
    within one hop. (The centred STFT window puts the onset at most one hop early.)"""
    vcodec = "libvpx-vp9" if name.endswith(".webm") else "libx264"
    clip = write_clip(tmp_path / name, 4.0, fps=10, vcodec=vcodec, acodec=acodec, rate=rate, channels=channels,
                      beeps=(1.3, 2.55))
    out = list(chunks(clip, SPEC))
    hop_s = SPEC.hop_length / SPEC.sample_rate
    assert abs(onset_frame(out[1].mel) - round(0.3 / hop_s)) <= 1
    assert abs(onset_frame(out[2].mel) - round(0.55 / hop_s)) <= 1
    assert out[0].mel.max() < -30 and out[3].mel.max() < -30  # silence elsewhere


def test_no_audio_track_gives_flagged_silence(tmp_path):
    clip = write_clip(tmp_path / "mute.mp4", 2.0, fps=10, acodec=None)
    out = list(chunks(clip, SPEC))
    assert out and all(c.flags & Flags.SILENT for c in out)
    assert all(np.allclose(c.mel, -100.0, atol=1e-3) for c in out)  # the -100 dB floor


def test_drop_policy_drops_the_partial_chunk(tmp_path):
    clip = write_clip(tmp_path / "c.mkv", 2.5, fps=10)
    assert [c.index for c in chunks(clip, SPEC, last="drop")] == [0, 1]
    assert [c.index for c in chunks(clip, SPEC, last="pad")] == [0, 1, 2]


def test_clip_shorter_than_a_chunk(tmp_path):
    clip = write_clip(tmp_path / "short.mkv", 0.5, fps=10)
    with pytest.raises(ShortSource, match=r"short\.mkv: shorter than one chunk"):
        list(chunks(clip, SPEC, last="drop"))
    assert [c.flags & Flags.PADDED for c in chunks(clip, SPEC)] == [Flags.PADDED]


def test_raw_bytes_decode(tmp_path):
    clip = write_clip(tmp_path / "c.mkv", 2.0, fps=10)
    assert len(list(chunks(clip.read_bytes(), SPEC))) == 2


def test_bad_inputs_name_the_file(tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(EmptySource, match="empty.mp4: empty file"):
        list(chunks(empty, SPEC))
    text = tmp_path / "notes.mp4"
    text.write_text("these are not the frames you are looking for\n" * 100)
    with pytest.raises(NotMedia, match="notes.mp4"):
        list(chunks(text, SPEC))
    audio_only = tmp_path / "audio.mka"
    import av

    with av.open(str(audio_only), "w") as c:
        s = c.add_stream("pcm_s16le", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1600), np.int16), format="s16", layout="mono")
        frame.sample_rate = 16000
        for p in s.encode(frame):
            c.mux(p)
    with pytest.raises(NoVideoStream, match="audio.mka: no video stream"):
        list(chunks(audio_only, SPEC))


def test_numpy_mel_matches_the_models_torch_mel():
    """Tolerance: 0.01 dB where the signal is above -80 dB (float32 FFT rounding)."""
    cfg = MirasolConfig.preset("tiny")
    rng = np.random.default_rng(0)
    t = np.arange(cfg.audio_samples_per_chunk) / cfg.sample_rate
    audio = (0.3 * np.sin(2 * np.pi * 523 * t) + 0.05 * rng.standard_normal(len(t))).astype(np.float32)
    ours = numpy_log_mel(audio, cfg.sample_rate, cfg.n_fft, cfg.hop_length, cfg.n_mels)
    reference = torch_log_mel(torch.from_numpy(audio)[None], cfg)[0].numpy()
    assert ours.shape == reference.shape == (cfg.mel_frames_per_chunk, cfg.n_mels)
    loud = reference > -80
    assert np.abs(ours - reference)[loud].max() < 0.01


def test_truncated_files_say_so_after_the_chunks_they_had(tmp_path):
    for ext in ("mkv", "mp4"):
        data = write_clip(tmp_path / f"whole.{ext}", 8.0, fps=10).read_bytes()
        (tmp_path / f"cut.{ext}").write_bytes(data[: int(len(data) * 0.6)])
    got = []
    with pytest.raises(TruncatedMedia, match=r"cut\.mkv: video ends at .* but the container says 8"):
        for c in chunks(tmp_path / "cut.mkv", SPEC):
            got.append(c.index)
    assert 3 <= len(got) < 8  # what was there was delivered first
    with pytest.raises(TruncatedMedia, match=r"cut\.mp4: an MP4/MOV file whose index \(moov box\) cannot be read"):
        list(chunks(tmp_path / "cut.mp4", SPEC))


def test_a_corrupt_stretch_mid_file_is_skipped_and_counted(tmp_path):
    data = bytearray(write_clip(tmp_path / "c.mkv", 8.0, fps=10).read_bytes())
    middle = len(data) // 2
    data[middle : middle + 600] = np.random.default_rng(0).integers(0, 256, 600, dtype=np.uint8).tobytes()
    (tmp_path / "bad.mkv").write_bytes(bytes(data))
    out = list(chunks(tmp_path / "bad.mkv", SPEC))
    assert [c.index for c in out] == list(range(8))  # it kept going to the end
    damaged = [c for c in out if c.flags & Flags.DAMAGED]
    assert damaged and sum(c.damaged_frames for c in damaged) >= 5
    assert frame_index(out[-1].frames[-1]) == 77  # t = 7.75 s: frames after the damage are right again


def test_absurd_dimensions_are_refused(tmp_path):
    import av

    path = tmp_path / "wide.mkv"
    with av.open(str(path), "w") as c:
        s = c.add_stream("mjpeg", rate=10)
        s.width, s.height, s.pix_fmt = 17000, 8, "yuvj420p"
        frame = av.VideoFrame.from_ndarray(np.zeros((8, 17000, 3), np.uint8), format="rgb24")
        for p in [*s.encode(frame), *s.encode()]:
            c.mux(p)
    with pytest.raises(AbsurdDimensions, match=r"wide\.mkv: video is 17000x8"):
        list(chunks(path, SPEC))


def test_ten_minutes_decode_in_order_with_flat_memory(tmp_path):
    """Sequential decode holds one chunk: memory at chunk 590 is what it was at chunk 60.

    (Per-chunk decode *time* over long files is measured in bench/decode.py, not here.)
    """
    import tracemalloc

    clip = write_clip(tmp_path / "long.mkv", 600.0, fps=5, size=(48, 32), beeps=(590.3,))
    tracemalloc.start()
    count = 0
    try:
        for c in chunks(clip, SPEC):
            assert (c.index, c.t0) == (count, float(count)), "in order, none lost or repeated"
            count += 1
            if c.index == 60:
                early = tracemalloc.get_traced_memory()[0]
            if c.index == 590:
                late = tracemalloc.get_traced_memory()[0]
                beep_chunk = c
    finally:
        tracemalloc.stop()
    assert count == 600
    assert late - early < 256 * 1024, f"decoder memory grew by {(late - early) / 1024:.0f} KiB"
    hop_s = SPEC.hop_length / SPEC.sample_rate
    assert abs(onset_frame(beep_chunk.mel) - round(0.3 / hop_s)) <= 2  # still aligned after 10 minutes


def _dali():
    return pytest.importorskip("nvidia.dali")


@pytest.mark.parametrize("kw", [dict(vcodec="libvpx-vp9", acodec="libopus", rate=48000),
                                dict(vcodec="mjpeg", acodec="pcm_s16le", rate=44100, channels=2)],
                         ids=["vp9-opus", "mjpeg-pcm"])
def test_dali_cpu_decodes_like_pyav(tmp_path, kw):
    _dali()
    clip = write_clip(tmp_path / "c.mkv", 5.5, fps=10, size=(66, 50), beeps=(1.3,), **kw)
    by_pyav = list(chunks(clip, SPEC, decoder="pyav"))
    by_dali = list(chunks(clip, SPEC, decoder="dali-cpu"))
    assert {c.decoder for c in by_dali} == {"dali-cpu"} and {c.decoder for c in by_pyav} == {"pyav"}
    assert {c.decoder for c in chunks(clip, SPEC)} == {"pyav"}  # auto on a CPU: PyAV, measured faster
    assert [c.index for c in by_dali] == [c.index for c in by_pyav] == list(range(6))
    for a, b in zip(by_dali, by_pyav):
        assert [frame_index(f) for f in a.frames] == [frame_index(f) for f in b.frames]
        assert np.abs(a.frames.astype(int) - b.frames.astype(int)).mean() < 3  # resize filters differ slightly
        np.testing.assert_array_equal(a.mel, b.mel)  # the audio path is the same
        assert (a.t0, a.t1, a.flags) == (b.t0, b.t1, b.flags)


def test_decoder_choice_and_refusals(tmp_path):
    _dali()
    h264 = write_clip(tmp_path / "h.mp4", 2.0, fps=10)
    assert {c.decoder for c in chunks(h264, SPEC)} == {"pyav"}  # DALI's CPU decoder can't do H.264
    with pytest.raises(UnsupportedCodec, match=r"h\.mp4: cannot decode h264 with DALI's CPU decoder.*not h264"):
        list(chunks(h264, SPEC, decoder="dali-cpu"))
    vfr = write_clip(tmp_path / "vfr.mkv", 3.0, fps=10, vcodec="mjpeg", acodec=None, vfr=True)
    with pytest.raises(UnsupportedCodec, match="variable frame rate"):
        list(chunks(vfr, SPEC, decoder="dali-cpu"))
    with pytest.raises(ValueError, match="decoder must be one of"):
        list(chunks(h264, SPEC, decoder="nvdec"))


@pytest.mark.requires_cuda
def test_dali_nvdec_decodes_h264_like_pyav(tmp_path):
    _dali()
    clip = write_clip(tmp_path / "c.mp4", 4.0, fps=10, size=(66, 50))
    by_gpu = list(chunks(clip, SPEC, decoder="dali-gpu"))
    by_pyav = list(chunks(clip, SPEC, decoder="pyav"))
    assert {c.decoder for c in by_gpu} == {"dali-gpu"}
    for a, b in zip(by_gpu, by_pyav, strict=True):
        assert [frame_index(f) for f in a.frames] == [frame_index(f) for f in b.frames]


def test_dali_mel_matches_the_models_torch_mel(tmp_path):
    _dali()
    from mirasol_edge.runtime.decode.dali import LogMel

    cfg = MirasolConfig.preset("tiny")
    rng = np.random.default_rng(1)
    t = np.arange(cfg.audio_samples_per_chunk) / cfg.sample_rate
    audio = (0.3 * np.sin(2 * np.pi * 523 * t) + 0.05 * rng.standard_normal(len(t))).astype(np.float32)
    dali_mel = LogMel(cfg.sample_rate, cfg.n_fft, cfg.hop_length, cfg.n_mels)
    reference = torch_log_mel(torch.from_numpy(audio)[None], cfg)[0].numpy()
    ours = dali_mel(audio)
    assert ours.shape == reference.shape
    assert np.abs(ours - reference).max() < 0.01  # dB; seen: 4e-5
    assert np.allclose(dali_mel(np.zeros_like(audio)), -100.0, atol=1e-3)  # same floor, pipeline reused
    clip = write_clip(tmp_path / "c.mkv", 3.0, fps=10, beeps=(1.3,))
    pairs = list(zip(chunks(clip, SPEC, mel="dali"), chunks(clip, SPEC, mel="numpy"), strict=True))
    assert [b.index for _, b in pairs] == [0, 1, 2] and pairs[1][1].mel.max() > -30  # the beep is in chunk 1
    for a, b in pairs:
        loud = b.mel > -80  # near the -100 dB floor float32 rounding of tiny powers differs by ~0.04 dB
        np.testing.assert_allclose(a.mel[loud], b.mel[loud], atol=0.01)
        assert np.abs(a.mel - b.mel).max() < 0.1


def test_audio_that_changes_rate_and_layout_mid_stream_is_resampled_afresh(tmp_path):
    """A capture whose AAC goes from 16 kHz mono to 44.1 kHz stereo (two TS segments, as a
    recorder writes them) stopped PyAV's resampler with its own ValueError; now the stream goes
    on, the chunk where it changed is flagged, and the tone is the same tone after the change."""
    first = write_ts_segment(tmp_path / "a.ts", 16000, "mono", start=0.0)
    second = write_ts_segment(tmp_path / "b.ts", 44100, "stereo", start=2.0)
    joined = tmp_path / "capture.ts"
    joined.write_bytes(first.read_bytes() + second.read_bytes())
    got = list(chunks(joined, SPEC))
    assert len(got) == 4
    assert [bool(c.flags & Flags.AUDIO_CHANGED) for c in got] == [False, True, False, False]
    peak = [int(np.argmax(c.mel.mean(axis=0))) for c in got]
    assert peak[3] == peak[0], peak  # 440 Hz before and after, in the same mel bin


def test_a_broken_timestamp_jump_is_rebased_not_held_for_an_hour(tmp_path):
    """A frame an hour after its neighbour in a 4 s file: held frames across the jump would be
    3,600 chunks; the timeline is re-based over it and the chunk flagged DAMAGED."""
    from fractions import Fraction

    import av

    path = tmp_path / "jump.mkv"
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=10)
        video.width, video.height, video.pix_fmt, video.options = 64, 48, "yuv420p", {"bf": "0"}
        for i in range(40):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), i * 6, np.uint8), format="rgb24")
            frame.pts, frame.time_base = i * 100 + (3_600_000 if i >= 20 else 0), Fraction(1, 1000)
            for packet in video.encode(frame):
                out.mux(packet)
        for packet in video.encode(None):
            out.mux(packet)
    got = list(chunks(path, SPEC))
    assert len(got) == 4 and got[-1].t1 == 4.0
    assert [bool(c.flags & Flags.DAMAGED) for c in got] == [False, False, True, False]
