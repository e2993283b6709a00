"""The view's parts without a browser: the push loop's hand-off never blocks (drops, counted), frames
are encoded at most ``rate`` a second, the evidence route serves only the files events named, the
options are checked, and nothing of the view is imported without --view."""

import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner

from mirasol_edge.cli.run import main as run_main
from mirasol_edge.runtime.results import PushTimings
from tests.events.helpers import free_port
from tests.view.helpers import http, wait_for


def _result(i, events=()):
    return SimpleNamespace(index=i, t0=float(i), t1=i + 1.0, events=events,
                           timings=PushTimings(0.1, 1.0, 2.0, 3.5, 0.4))


def _chunk(i):
    frames = np.full((4, 16, 16, 3), i * 10 % 256, np.uint8)
    return SimpleNamespace(frames=frames, mel=np.random.default_rng(i).normal(size=(100, 16)).astype(np.float32))


def test_the_hand_off_never_blocks_and_counts_what_it_drops():
    from mirasol_edge.view.frames import Feed
    from mirasol_edge.view.state import ViewState

    state = ViewState()
    feed = Feed(state, rate=100)
    gate = threading.Event()
    feed.encode = lambda rgb, fmt: (gate.wait(10), b"x")[1]  # an encoder that is stuck for now
    start = time.perf_counter()
    for i in range(60):
        feed.put(_chunk(i), _result(i), ([], {}))
    assert time.perf_counter() - start < 0.5  # the push loop never waited on the view
    gate.set()
    feed.close()
    counters = state.snapshot()["counters"]
    assert counters["dropped_by_view"] > 0
    assert counters["chunks"] + counters["dropped_by_view"] == 60


def test_frames_are_encoded_at_most_rate_a_second_and_the_last_one_shown():
    from mirasol_edge.view.frames import Feed
    from mirasol_edge.view.state import ViewState

    state = ViewState()
    feed = Feed(state, rate=2)
    start = time.monotonic()
    for i in range(40):
        feed.put(_chunk(i), _result(i), ([("w", "is it?", "yes", 0.75)], {"dropped": 0}))
        time.sleep(0.02)
    feed.close()
    elapsed = time.monotonic() - start
    snap = state.snapshot()
    assert snap["counters"]["chunks"] == 40 and len(snap["timings"]) == 40
    assert 1 <= snap["counters"]["frames_encoded"] <= 2 * elapsed + 2
    assert snap["counters"]["frames_skipped"] > 0
    assert state.frame[:2] == b"\xff\xd8"  # a JPEG, of the last chunk
    assert snap["watches"]["w"]["history"][-1] == [39, 0.75]


def test_points_carry_the_decode_wait_and_the_facts_a_live_real_time_factor():
    from mirasol_edge.view.frames import Feed
    from mirasol_edge.view.state import RATE_POINTS, ViewState

    state = ViewState()
    feed = Feed(state, rate=100)
    for i in range(RATE_POINTS + 10):  # 1 s chunks, every 0.5 s of wall clock, then every 0.25 s
        wall = 100 + 0.5 * i if i < 10 else 105 + 0.25 * (i - 10)
        feed.put(None, _result(i), ([], {}), {"decode_ms": 5.0 + i, "wall": wall})
        time.sleep(0.01)  # the hand-off drops what a slow view cannot take: here, nothing
        if i == 9:
            feed.close()
            first = state.snapshot()
            feed = Feed(state, rate=100)
    feed.close()
    assert first["facts"]["realtime_factor"] == 2.0
    snap = state.snapshot()
    assert snap["counters"]["dropped_by_view"] == 0
    assert [p["decode_ms"] for p in snap["timings"]] == [5.0 + i for i in range(RATE_POINTS + 10)]
    assert snap["facts"]["realtime_factor"] == 4.0  # over the last RATE_POINTS chunks only


def test_evidence_is_served_by_id_only_for_files_the_run_wrote(tmp_path):
    from mirasol_edge.view.server import View

    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 100)
    (tmp_path / "other.mp4").write_bytes(b"secret")
    event = SimpleNamespace(to_dict=lambda: {"watch": "w", "chunk_index": 0, "evidence": str(clip)})
    stream = SimpleNamespace(watches=(), chunks_seen=1)
    view = View(stream, "127.0.0.1", free_port()).start()
    try:
        view.push(None, _result(0, (event,)))
        wait_for(lambda: view.state.snapshot()["events"], "the event recorded")
        base = view.url.rstrip("/")
        status, body = http(base + "/evidence/0")
        assert status == 200 and body == clip.read_bytes()
        assert http(base + "/evidence/1")[0] == 404
        assert http(base + "/evidence/..%2Fother.mp4")[0] == 404
        assert http(base + "/evidence/" + str(tmp_path / "other.mp4"))[0] == 404
    finally:
        view.close()


@pytest.mark.parametrize("args, message", [
    (["--view", "0.0.0.0:8090"], "--view-token"),
    (["--view", "not-a-port"], "[HOST:]PORT"),
    (["--view", "8090", "--view-token", " "], "empty"),
    (["--view-linger", "5"], "go with --view"),
])
def test_bad_view_options_are_named(args, message):
    result = CliRunner().invoke(run_main, ["--sample", "-e", "/nonexistent", *args])
    assert result.exit_code == 2 and message in result.output, result.output


def test_nothing_of_the_view_is_imported_without_it():
    code = ("import sys, mirasol_edge.cli.run, mirasol_edge.runtime.stream; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('starlette', 'uvicorn') "
            "or m.startswith('mirasol_edge.view')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]", out.stdout
