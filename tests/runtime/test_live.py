"""Live sources over real HTTP (a local server): reconnects, timeouts, back-pressure drops."""

import http.server
import logging
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from mirasol_edge.runtime.decode.chunks import ChunkSpec, chunks
from mirasol_edge.runtime.decode.live import LiveSource, SourceLost, SourceTimeout
from mirasol_edge.toolkit import MirasolConfig
from tests.media import frame_index, write_clip

SPEC = ChunkSpec.from_config(MirasolConfig.preset("tiny"))


class Server:
    """Serves files from a directory; ``cut_first`` truncates the first response (a dropped link),
    ``limit`` answers 404 after that many requests, ``hang`` never answers."""

    def __init__(self, root: Path, cut_first: float | None = None, hang: bool = False, limit: int = 0) -> None:
        server = self
        self.requests = 0

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server API
                server.requests += 1
                if hang:
                    time.sleep(30)
                    return
                if limit and server.requests > limit:  # the camera went away for good
                    self.send_error(404)
                    return
                data = (root / self.path.lstrip("/")).read_bytes()
                if cut_first and server.requests == 1:
                    data = data[: int(len(data) * cut_first)]
                self.send_response(200)
                self.send_header("Content-Type", "video/mp2t")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{name}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def clip(tmp_path):
    return write_clip(tmp_path / "cam.ts", 6.0, fps=10, size=(64, 48), beeps=(2.0,))  # MPEG-TS, as cameras send


def test_http_stream_gives_the_same_chunks_as_the_file(clip):
    server = Server(clip.parent)
    try:
        with LiveSource(server.url("cam.ts"), SPEC, reconnect_on_end=False, drop="none") as live:
            got = list(live)
    finally:
        server.close()
    expected = list(chunks(clip, SPEC, last="drop"))
    assert [c.index for c in got] == [c.index for c in expected] and len(got) >= 5
    for a, b in zip(got, expected):
        assert np.array_equal(a.frames, b.frames)
        np.testing.assert_allclose(a.mel, b.mel, atol=1e-4)
    assert live.stats.reconnects == 0 and live.stats.dropped == 0


def test_a_dropped_connection_is_reopened_and_counting_goes_on(clip, caplog):
    server = Server(clip.parent, cut_first=0.5, limit=2)
    got = []
    try:
        with caplog.at_level(logging.WARNING), LiveSource(
            server.url("cam.ts"), SPEC, drop="none", max_reconnects=1, reconnect_delay=0.05, chunk_timeout=20
        ) as live:
            # 1st response stops half-way, 2nd is whole, then 404: reconnect, reconnect, give up.
            with pytest.raises(SourceLost, match="gave up after 2 failed attempt"):
                for c in live:
                    got.append(c)
    finally:
        server.close()
    assert server.requests == 3 and live.stats.reconnects == 2
    assert "reconnect 1/1" in caplog.text and "404" in live.stats.last_error
    assert [c.index for c in got] == list(range(len(got)))  # no index restarts at 0
    assert all(b.t0 == pytest.approx(a.t1) for a, b in zip(got, got[1:]))  # time keeps going
    cut = len(got) - 6  # the whole clip is 6 chunks; the cut response gave the rest
    assert 1 <= cut < 6
    assert [frame_index(c.frames[0]) for c in got[cut:]] == [0, 10, 20, 30, 40, 50]  # replayed from the start


def test_a_dead_source_fails_in_bounded_time():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.monotonic()
    with LiveSource(f"http://127.0.0.1:{port}/cam.ts", SPEC, max_reconnects=2, reconnect_delay=0.05,
                    open_timeout=1, read_timeout=1) as live:
        with pytest.raises(SourceLost, match=rf"127.0.0.1:{port}/cam.ts: gave up after 3 failed attempt"):
            next(live)
    assert live.stats.reconnects == 2
    assert time.monotonic() - start < 10


def test_a_silent_source_times_out_instead_of_hanging(tmp_path):
    server = Server(tmp_path, hang=True)
    start = time.monotonic()
    try:
        with LiveSource(server.url("cam.ts"), SPEC, max_reconnects=0, open_timeout=0.5, read_timeout=0.5,
                        chunk_timeout=10) as live:
            with pytest.raises((SourceLost, SourceTimeout)):
                next(live)
    finally:
        server.close()
    assert time.monotonic() - start < 10


def test_a_slow_consumer_drops_the_oldest_chunks_and_counts_them(tmp_path):
    clip = write_clip(tmp_path / "long.mkv", 20.0, fps=10, size=(64, 48))
    with LiveSource(clip, SPEC, queue_chunks=2, drop="oldest", reconnect_on_end=False) as live:
        got = []
        for c in live:
            got.append(c.index)
            time.sleep(0.15)  # the model is slower than the decoder
    assert live.stats.dropped > 0
    assert live.stats.delivered + live.stats.dropped == live.stats.chunks == 20
    assert got == sorted(got) and got[-1] == 19  # the newest chunk always gets through


def test_drop_newest_keeps_what_was_queued(tmp_path):
    clip = write_clip(tmp_path / "long.mkv", 12.0, fps=10, size=(64, 48))
    with LiveSource(clip, SPEC, queue_chunks=3, drop="newest", reconnect_on_end=False) as live:
        time.sleep(1.0)  # let the decoder run ahead: the queue fills, the rest is dropped
        got = [c.index for c in live]
    assert got[:3] == [0, 1, 2] and live.stats.dropped == 12 - len(got) > 0


def test_close_stops_the_decoder_thread(tmp_path):
    clip = write_clip(tmp_path / "long.mkv", 20.0, fps=10, size=(64, 48))
    live = LiveSource(clip, SPEC, queue_chunks=1, drop="none", reconnect_on_end=False)
    next(live)
    live.close()
    assert not live._thread.is_alive()


def test_bad_settings_are_refused(clip):
    with pytest.raises(ValueError, match="drop must be one of"):
        LiveSource(clip, SPEC, drop="sometimes")


def test_decode_ahead_gives_the_same_chunks_and_the_same_errors(tmp_path):
    from mirasol_edge.runtime.decode.chunks import NotMedia, chunks
    from mirasol_edge.runtime.decode.live import decode_ahead

    clip = write_clip(tmp_path / "c.mp4", 5.0, fps=10)
    with decode_ahead(clip, SPEC) as ahead:
        threaded = list(ahead)
    plain = list(chunks(clip, SPEC))
    assert [c.index for c in threaded] == [c.index for c in plain] and len(plain) >= 5
    for a, b in zip(threaded, plain):
        np.testing.assert_array_equal(a.frames, b.frames)
        np.testing.assert_array_equal(a.mel, b.mel)
        assert (a.t0, a.t1, a.flags) == (b.t0, b.t1, b.flags)
    (tmp_path / "notes.mp4").write_text("not a video")
    with decode_ahead(tmp_path / "notes.mp4", SPEC) as ahead:  # opening it is not where the error is
        with pytest.raises(NotMedia, match="notes.mp4") as raised:
            next(ahead)
    with pytest.raises(NotMedia) as plain_error:
        next(chunks(tmp_path / "notes.mp4", SPEC))
    assert str(raised.value) == str(plain_error.value)  # chunks()'s own error, word for word
