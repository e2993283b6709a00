"""GStreamer sources: pipelines with known content, files whose frames match PyAV's, a second
audio source with its offset and its end, and a real RTSP server (GstRtspServer).

These run after every other test (the ``gstreamer`` mark, ordered in tests/conftest.py): once
GStreamer's plugins were loaded, later tests in the same process crashed in other native
libraries (TensorRT-RTX's ONNX parser aborted; matplotlib's FreeType module segfaulted on
import). A robot's runtime process decodes and runs engines and has neither of those in it;
they are build and bench tools.
"""

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mirasol_edge.runtime.decode.chunks import ChunkSpec, DecodeError, Flags, chunks
from mirasol_edge.runtime.decode.live import LiveSource, SourceLost
from mirasol_edge.serve.local_server import free_port
from tests.gstreamer_probe import require_gstreamer
from tests.media import write_clip

SPEC = ChunkSpec(fps=4.0, frames_per_chunk=4, image_size=32, sample_rate=16000, n_fft=400, hop_length=160, n_mels=32)

pytestmark = pytest.mark.gstreamer
require_gstreamer()


def _energy(chunk) -> float:
    """Loudest mel bin of the chunk (dB): a beep lifts it far above silence's floor."""
    return float(chunk.mel.max())


def test_a_file_decodes_as_pyav_decodes_it(tmp_path):
    clip = write_clip(tmp_path / "a.mp4", seconds=3.0, size=(32, 32), beeps=(0.5, 1.7))
    pyav = list(chunks(str(clip), SPEC))
    ours = list(chunks(str(clip), SPEC, decoder="gstreamer"))
    assert len(ours) == len(pyav) == 3
    assert ours[0].decoder == "gstreamer:avdec_h264" and pyav[0].decoder == "pyav"
    for a, b in zip(pyav, ours):
        assert (a.t0, a.t1, a.flags) == (b.t0, b.t1, b.flags)
        diff = np.abs(a.frames.astype(int) - b.frames.astype(int))
        assert diff.mean() < 2.0 and diff.max() <= 8  # YUV -> RGB rounding only
        np.testing.assert_allclose(a.mel, b.mel, atol=0.05)  # dB; the two resamplers differ near the floor


def test_a_pipeline_with_known_content(tmp_path):
    green = list(chunks("gst:videotestsrc num-buffers=40 pattern=solid-color foreground-color=0xff00ff00 ! "
                        "video/x-raw,width=64,height=48,framerate=10/1", SPEC))
    assert len(green) == 4 and all(c.flags & Flags.SILENT for c in green)  # 4 s, no audio
    assert np.abs(green[0].frames.astype(int) - [0, 255, 0]).max() <= 2
    assert green[0].decoder == "gstreamer"  # raw video: no decoder ran
    # A 1 kHz tone from a second source: its mel peaks in the bin that holds 1 kHz.
    toned = list(chunks("gst:videotestsrc num-buffers=20 ! video/x-raw,framerate=10/1", SPEC,
                        audio="gst:audiotestsrc num-buffers=40 freq=1000 volume=0.5"))
    assert len(toned) == 2 and not toned[0].flags & Flags.SILENT
    from mirasol_edge.runtime.decode.mel import mel_filterbank

    bank = mel_filterbank(SPEC.sample_rate, SPEC.n_fft, SPEC.n_mels)
    centres = bank.argmax(axis=1) * SPEC.sample_rate / SPEC.n_fft if bank.shape[0] == SPEC.n_mels else \
        bank.argmax(axis=0) * SPEC.sample_rate / SPEC.n_fft
    peak = centres[int(toned[0].mel.mean(axis=0).argmax())]
    assert 700 < peak < 1400


def test_a_second_audio_source_is_aligned_offset_and_its_end_flagged(tmp_path):
    video = write_clip(tmp_path / "v.mp4", seconds=4.0, size=(32, 32), acodec=None)
    mic = write_clip(tmp_path / "mic.mp4", seconds=3.4, size=(16, 16), beeps=(0.3,))  # the beep is in chunk 0
    plain = list(chunks(str(video), SPEC, audio=str(mic)))
    assert len(plain) == 4
    assert _energy(plain[0]) > _energy(plain[1]) + 10
    assert [bool(c.flags & Flags.AUDIO_GAP) for c in plain] == [False, False, False, True]  # the mic ends at 3.4 s
    shifted = list(chunks(str(video), SPEC, audio=str(mic), audio_offset=1.0))  # the mic is 1 s late
    assert shifted[0].audio_offset == 1.0
    assert _energy(shifted[1]) > _energy(shifted[0]) + 10  # the beep moved to chunk 1
    # Now the first second has no audio (flagged) and the mic covers the last chunk (not flagged).
    assert [bool(c.flags & Flags.AUDIO_GAP) for c in shifted] == [True, False, False, False]


def test_a_stalled_microphone_leaves_silence_and_flags_not_a_stalled_stream():
    # A live audio source that delivers nothing (a valve that drops everything): each chunk waits
    # audio_wait (1 s), then goes out with silence, flagged; the video never stops for it.
    start = time.monotonic()
    out = list(chunks("gst:videotestsrc num-buffers=20 ! video/x-raw,framerate=10/1", SPEC,
                      audio="gst:audiotestsrc is-live=true ! valve drop=true"))
    assert len(out) == 2 and all(c.flags & Flags.AUDIO_GAP for c in out)
    assert np.all(out[0].mel <= -99.0)  # silence
    assert time.monotonic() - start < 10


def test_a_broken_pipeline_is_a_decode_error():
    with pytest.raises(DecodeError, match="cannot build the pipeline.*nosuchelement"):
        list(chunks("gst:nosuchelement ! fakesink", SPEC))
    with pytest.raises(DecodeError, match="no such file"):
        list(chunks("/nonexistent/clip.mp4", SPEC, decoder="gstreamer"))
    with pytest.raises(DecodeError, match="GStreamer"):
        list(chunks("gst:filesrc location=/etc/hostname ! decodebin", SPEC, timeout=5))



class _Rtsp:
    def __init__(self, clip: Path, port: int) -> None:
        self.clip, self.port, self.process = clip, port, None
        self.url = f"rtsp://127.0.0.1:{port}/cam"

    def start(self) -> "_Rtsp":
        script = Path(__file__).resolve().parents[1] / "rtsp_server.py"
        self.process = subprocess.Popen([sys.executable, str(script), str(self.port), str(self.clip)],
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.process.stdout.readline().strip() == "ready", self.process.stderr.read()
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


@pytest.fixture()
def rtsp(tmp_path):
    clip = write_clip(tmp_path / "cam.mp4", seconds=4.0, size=(64, 48), beeps=(0.5, 2.5), bframes=False)
    server = _Rtsp(clip, free_port()).start()
    yield server
    server.stop()


@pytest.mark.slow
def test_rtsp_through_gstreamer_and_pyav_agree(rtsp):
    via_gst = list(chunks(rtsp.url, SPEC, decoder="gstreamer", timeout=(10.0, 5.0)))
    via_pyav = list(chunks(rtsp.url, SPEC, decoder="pyav"))
    assert via_gst[0].decoder == "gstreamer:avdec_h264"
    n = min(len(via_gst), len(via_pyav))
    assert n >= 3 and abs(len(via_gst) - len(via_pyav)) <= 1
    for a, b in zip(via_pyav[:n], via_gst[:n]):
        assert abs((a.t0 - via_pyav[0].t0) - (b.t0 - via_gst[0].t0)) < 1e-6
        assert np.abs(a.frames.astype(int) - b.frames.astype(int)).mean() < 4.0
    beeped = [i for i, c in enumerate(via_gst[:n]) if _energy(c) > _energy(via_gst[1]) + 10]
    assert 0 in beeped and 2 in beeped  # the clip's beeps, at 0.5 s and 2.5 s


@pytest.mark.slow
def test_an_rtsp_server_restart_is_survived_within_bounded_reconnects(rtsp):
    source = LiveSource(rtsp.url, SPEC, decoder="gstreamer", max_reconnects=5, reconnect_delay=0.5,
                        open_timeout=5.0, read_timeout=2.0, chunk_timeout=60.0, drop="none")
    try:
        first = next(source)
        rtsp.stop()
        time.sleep(1.0)
        rtsp.start()  # same port: the camera came back
        after = [next(source) for _ in range(4)]  # the clip again, from the new server
        assert source.stats.reconnects >= 1
        assert [c.index for c in [first, *after]] == list(range(5))  # counting goes on
        assert all(b.t0 > a.t0 for a, b in zip([first, *after], after))
    finally:
        source.close()
    rtsp.stop()
    gone = LiveSource(rtsp.url, SPEC, decoder="gstreamer", max_reconnects=2, reconnect_delay=0.2,
                      open_timeout=2.0, read_timeout=2.0, chunk_timeout=60.0)
    with pytest.raises(SourceLost, match="2 reconnects allowed"):
        list(gone)
    gone.close()
