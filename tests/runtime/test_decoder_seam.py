"""The decoder seam: a registry of decoders, one kind of event, one assembler that owns indices and times."""

from collections.abc import Iterator

import numpy as np
import pytest

from mirasol_edge.runtime.decode import registry
from mirasol_edge.runtime.decode.assemble import assemble
from mirasol_edge.runtime.decode.chunks import (
    DECODERS,
    ChunkSpec,
    Flags,
    NotMedia,
    TruncatedMedia,
    chunks,
    open_media,
)
from mirasol_edge.runtime.decode.events import (
    Audio,
    Damaged,
    Decoding,
    Ended,
    Event,
    Video,
)
from mirasol_edge.runtime.decode.mel import log_mel
from mirasol_edge.runtime.decode.pyav_source import PyAVSource
from tests.media import frame_index, write_clip

SPEC = ChunkSpec(fps=4.0, frames_per_chunk=4, image_size=8, sample_rate=16000, n_fft=400, hop_length=160, n_mels=32)


def mel(samples):
    return log_mel(samples, SPEC.sample_rate, SPEC.n_fft, SPEC.hop_length, SPEC.n_mels)


def picture(i: int) -> np.ndarray:
    return np.full((SPEC.image_size, SPEC.image_size, 3), i, np.uint8)  # RGB at size: used as it is


class Fake:
    """A decoder made of events: what the seam asks of every one."""

    name, has_audio, audio_by_time, audio_offset = "fake.mp4", False, False, 0.0

    def __init__(self, events: list) -> None:
        self.script, self.closed = events, False

    def events(self, progress) -> Iterator[Event]:
        yield from self.script

    def close(self) -> None:
        self.closed = True


def frames_at(stamps, **kw) -> list:
    return [Decoding("fake"), *(Video(t, picture(i)) for i, t in enumerate(stamps)), Ended(**kw)]


def run(events, **kw) -> list:
    return list(assemble(Fake(events), SPEC, "drop", mel, **kw))


def test_every_decoder_is_registered_and_unknown_names_say_which_exist():
    assert set(registry.names()) == {"pyav", "dali-cpu", "dali-gpu", "gstreamer", "gstreamer-software",
                                     "gstreamer-hardware"}
    assert DECODERS == ("auto", *registry.names())
    with pytest.raises(KeyError, match="no decoder named 'nvdec'; registered: pyav, dali-cpu"):
        registry.open_source("nvdec", registry.Request("x", "x", SPEC))
    with pytest.raises(ValueError, match="'auto' is chunks"):
        registry.register("auto", lambda request: None)


def test_the_assembler_numbers_and_times_chunks():
    source = Fake(frames_at([10.0 + k / 4 for k in range(8)]))
    out = list(assemble(source, SPEC, "drop", mel))
    assert [(c.index, c.t0, c.t1, c.decoder) for c in out] == [(0, 10.0, 11.0, "fake"), (1, 11.0, 12.0, "fake")]
    assert all(c.flags == Flags.SILENT for c in out) and source.closed
    resumed = run(frames_at([10.0 + k / 4 for k in range(8)]), resume=(7, 100.0))  # a reconnect goes on
    assert [(c.index, c.t0, c.t1) for c in resumed] == [(7, 100.0, 101.0), (8, 101.0, 102.0)]
    assert [int(f[0, 0, 0]) for c in resumed for f in c.frames] == list(range(8))


def test_timeline_rules_are_the_same_for_every_decoder():
    # No stamps after the first: each frame follows the last by a period (the model's, until measured).
    unstamped = run(frames_at([0.0] + [None] * 7))
    assert [int(f[0, 0, 0]) for c in unstamped for f in c.frames] == list(range(8))
    # A gap of four periods: three frames lost, counted in the chunk where it happened.
    gap = run(frames_at([0.0, 0.25, 0.5, 0.75, 1.0, 2.0, 2.25, 2.5, 2.75, 3.0, 3.25, 3.5]))
    assert [c.damaged_frames for c in gap] == [0, 3, 0]
    # A jump of an hour is a broken stamp: re-based, flagged, not an hour of held frames.
    jump = run(frames_at([0.0, 0.25, 0.5, 0.75, 1.0, 3601.25, 3601.5, 3601.75]))
    assert len(jump) == 2 and jump[1].flags & Flags.DAMAGED
    # Damage a decoder reports (a packet that did not decode) lands in the next chunk out.
    damaged = run([Decoding("fake"), Damaged(2), *frames_at([k / 4 for k in range(4)])[1:]])
    assert damaged[0].damaged_frames == 2


def test_a_video_shorter_than_its_container_says_is_truncated_after_its_chunks():
    got = []
    with pytest.raises(TruncatedMedia, match=r"fake\.mp4: video ends at 1\.75s but the container says 8\.00s"):
        for chunk in assemble(Fake(frames_at([k / 4 for k in range(8)], duration=8.0)), SPEC, "drop", mel):
            got.append(chunk.index)
    assert got == [0, 1]


def test_audio_events_become_the_chunks_mel():
    tone = (0.5 * np.sin(2 * np.pi * 1000 * np.arange(16000) / 16000)).astype(np.float32)
    source = Fake([Decoding("fake"), Audio(0.0, tone), *frames_at([k / 4 for k in range(4)])[1:]])
    source.has_audio = True
    (chunk,) = list(assemble(source, SPEC, "drop", mel))
    assert not chunk.flags & Flags.SILENT and chunk.mel.max() > -20


def test_an_unknown_event_is_refused():
    with pytest.raises(TypeError, match="not a decoder event"):
        run([Decoding("fake"), ("v", 0.0, picture(0))])


def test_real_decoders_speak_only_the_seams_events(tmp_path):
    clip = write_clip(tmp_path / "c.mkv", 2.0, fps=10, vcodec="libvpx-vp9", acodec="libopus", rate=48000)
    source = PyAVSource(open_media(clip), str(clip), SPEC.sample_rate)
    events = list(source.events(None))
    source.close()
    assert all(isinstance(e, Event) for e in events)
    assert events[0] == Decoding("pyav") and isinstance(events[-1], Ended)
    assert {type(e) for e in events} >= {Video, Audio}


def test_dali_speaks_only_the_seams_events(tmp_path):
    pytest.importorskip("nvidia.dali")
    from fractions import Fraction

    from mirasol_edge.runtime.decode.dali import DaliSource

    clip = write_clip(tmp_path / "c.mkv", 2.0, fps=10, vcodec="libvpx-vp9", acodec="libopus", rate=48000)
    dali = DaliSource(clip, open_media(clip), str(clip), SPEC, "dali-cpu", Fraction(10))
    events = list(dali.events(None))
    dali.close()
    assert all(isinstance(e, Event) for e in events) and events[0] == Decoding("dali-cpu")
    assert [type(e) for e in events].count(Video) == 20 and Audio in {type(e) for e in events}


def test_a_registered_decoder_runs_through_chunks(tmp_path):
    """A decoder added to the registry feeds the same assembler: here PyAV with its stamps taken away
    (the assembler's timeline fills them in) and its own name."""

    class Unstamped(PyAVSource):
        def events(self, progress):
            for event in super().events(progress):
                if isinstance(event, Decoding):
                    event = Decoding("unstamped")
                elif isinstance(event, Video) and event.time:  # all but the first, which anchors the clock
                    event = Video(None, event.picture)
                yield event

    registry.register("unstamped", lambda r: Unstamped(r.container, r.name, r.spec.sample_rate))
    try:
        clip = write_clip(tmp_path / "c.mp4", 2.0, fps=4, acodec=None)
        got = list(chunks(clip, SPEC, decoder="unstamped"))
        assert [c.decoder for c in got] == ["unstamped", "unstamped"]
        assert [frame_index(f) for c in got for f in c.frames] == list(range(8))
    finally:
        registry._OPENERS.pop("unstamped")
    with pytest.raises(ValueError, match="decoder must be one of"):
        list(chunks(clip, SPEC, decoder="unstamped"))
    (tmp_path / "notes.mp4").write_text("not a video")
    with pytest.raises(NotMedia, match="notes.mp4"):
        list(chunks(tmp_path / "notes.mp4", SPEC, decoder="pyav"))
