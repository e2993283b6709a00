"""--view beside other sources, over plain HTTP: a stream held by a Triton server (the page shows
what the server's stream saw and said), and GStreamer decoding (the page's frames, a watch's
evidence clip, and mirasol-bench's --plot and --html, all in processes that decoded through
GStreamer: the native clash runtime/native.py fixed)."""

import json
import subprocess
import sys

import pytest

from mirasol_edge.assets import SAMPLE_CLIP
from tests.events.helpers import free_port
from tests.view.helpers import http, wait_for


def _finished(run, base: str) -> dict | None:
    if run.process.poll() is not None:
        pytest.fail(f"mirasol-run exited {run.process.returncode} before its summary:\n{run.output()[-3000:]}")
    status, body = http(base + "/state")
    state = json.loads(body) if status == 200 else None
    return state if state and state["summary"] else None


def test_a_page_beside_a_stream_on_a_server(triton_server, run_view):
    port = free_port()
    # The test server's twin runs a test model, not the bundled one: the clip and a question, not --sample's checks.
    run = run_view([str(SAMPLE_CLIP), "--server", triton_server.url, "--stream-id", "view-remote", "-a", "what colour?",
                    "-a", "which way?", "--view", str(port), "--view-linger", "60"])
    base = f"http://127.0.0.1:{port}"
    run.wait_serving(base + "/")
    state = wait_for(lambda: _finished(run, base), "the run's summary on the page", 120)
    facts = state["facts"]
    assert facts["backend"]["backend"] == "triton" and facts["precision"] == "the server's build", facts
    assert facts["chunks_seen"] == state["summary"]["chunks"] == state["counters"]["chunks"] > 0, state
    assert [a["question"] for a in state["answers"]] == ["what colour?", "which way?"], state["answers"]
    assert all(p["decode_ms"] is not None and p["total_ms"] > 0 for p in state["timings"]), state["timings"]
    status, jpeg = http(base + "/frame.jpg")
    assert status == 200 and jpeg[:2] == b"\xff\xd8"
    assert run.stop() == 0, run.output()


@pytest.mark.gstreamer
def test_gstreamer_decoding_feeds_the_page_its_evidence_and_the_bench_report(bundled_engines, run_view, tmp_path):
    from tests.gstreamer_probe import require_gstreamer

    require_gstreamer()
    port = free_port()
    run = run_view(["--sample", "-e", str(bundled_engines), "--decoder", "gstreamer", "--view", str(port),
                    "--view-linger", "60", "--watch", "is there a beep?", "--watch-answers", "yes,no",
                    "--evidence", str(tmp_path / "evidence")])
    base = f"http://127.0.0.1:{port}"
    run.wait_serving(base + "/")
    state = wait_for(lambda: _finished(run, base), "the run's summary on the page", 120)
    assert state["facts"]["decoder"].startswith("gstreamer"), state["facts"]
    status, jpeg = http(base + "/frame.jpg")
    assert status == 200 and jpeg[:2] == b"\xff\xd8"
    assert http(base + "/mel.png")[1][:4] == b"\x89PNG"
    clips = [e for e in state["events"] if e.get("evidence_id") is not None]
    assert clips, state["events"]  # the sample's beeps start and stop
    status, mp4 = http(f"{base}/evidence/{clips[0]['evidence_id']}")
    assert status == 200 and mp4[4:8] == b"ftyp"
    assert run.stop() == 0, run.output()

    html, png = tmp_path / "bench.html", tmp_path / "bench.png"
    bench = subprocess.run([sys.executable, "-m", "mirasol_edge.measure.cli", "-e", str(bundled_engines), "--source",
                            str(SAMPLE_CLIP), "--decoder", "gstreamer", "-n", "4", "--warmup", "1", "--asks", "1",
                            "--plot", str(png), "--html", str(html)], capture_output=True, text=True, timeout=300)
    assert bench.returncode == 0, bench.stderr[-3000:]
    assert "decoder gstreamer" in html.read_text() and png.stat().st_size > 10_000
