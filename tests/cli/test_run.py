"""``mirasol-run`` end to end: a real encoded clip through real engines."""

import json
import re

import numpy as np
from click.testing import CliRunner

from mirasol_edge.cli.run import main
from mirasol_edge.runtime.decode.chunks import ChunkSpec, chunks
from mirasol_edge.runtime.stream import MirasolStream
from tests.media import write_clip


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def events(output: str) -> list[dict]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


def test_streams_a_clip_and_answers(tmp_path, tiny_engines):
    clip = write_clip(tmp_path / "clip.mp4", 6.5, fps=10, size=(80, 60), beeps=(1.0, 4.0))
    result = run(clip, "--engines", tiny_engines, "--ask", "what colour?", "--ask", "a beep?",
                 "--ask-every", "3", "--json")
    assert result.exit_code == 0, result.output
    out = events(result.output)
    chunk_events = [e for e in out if e["event"] == "chunk"]
    answers = [e for e in out if e["event"] == "answer"]
    summary = out[-1]
    assert [e["index"] for e in chunk_events] == list(range(7))  # 6.5 s at 1 s per chunk, last one padded
    assert chunk_events[-1]["flags"] & 1
    assert [a["chunks_seen"] for a in answers] == [3, 3, 6, 6, 7, 7]
    assert summary["event"] == "summary" and summary["chunks"] == 7 and summary["media_seconds"] == 7.0
    assert summary["push_ms"]["p50"] > 0 and summary["backend"]["backend"] == "onnxruntime"

    # The same answers as the library gives for the same decoded chunks.
    with MirasolStream.open(tiny_engines) as stream:
        for chunk in chunks(clip, ChunkSpec.from_config(stream.engines.dir.config)):
            stream.push(chunk)
        assert stream.ask("what colour?").text == answers[-2]["answer"]


def test_snapshot_then_restore_continues_the_stream(tmp_path, tiny_engines):
    clip = write_clip(tmp_path / "clip.mkv", 3.0, fps=10, size=(64, 48))
    state, after = tmp_path / "cam.state", tmp_path / "after.state"
    first = run(clip, "-e", tiny_engines, "--snapshot", state, "--json")
    assert first.exit_code == 0, first.output
    assert state.is_file() and events(first.output)[-1]["snapshot"] == str(state)
    second = run(clip, "-e", tiny_engines, "--restore", state, "--ask", "what colour?", "--snapshot", after, "--json")
    assert second.exit_code == 0, second.output
    assert [e["index"] for e in events(second.output) if e["event"] == "chunk"] == [3, 4, 5]
    assert [e["chunks_seen"] for e in events(second.output) if e["event"] == "answer"] == [6]
    # The second run went on from the first run's state, not from a fresh one with its count:
    # its state is the state of one stream that saw the clip twice.
    with MirasolStream.open(tiny_engines) as twice, MirasolStream.restore(after, tiny_engines) as restored:
        spec = ChunkSpec.from_config(twice.engines.dir.config)
        for chunk in chunks(clip, spec):
            twice.push(chunk)
        once = twice.state()
        for chunk in chunks(clip, spec):
            twice.push(chunk)
        assert restored.chunks_seen == 6
        got, want = restored.state(), twice.state()
        assert set(got) == set(want)
        for name in want:
            np.testing.assert_allclose(got[name], want[name], atol=1e-5, err_msg=name)
        assert not np.allclose(want["context"], once["context"], atol=1e-3), "three more chunks change the state"


def test_errors_name_the_problem_and_set_the_exit_code(tmp_path, tiny_engines):
    (tmp_path / "notes.mp4").write_text("this is not a video")
    missing = run(tmp_path / "notes.mp4", "-e", tmp_path / "no-engines")
    assert missing.exit_code == 2 and "no such engine directory" in missing.output
    not_media = run(tmp_path / "notes.mp4", "-e", tiny_engines)
    assert not_media.exit_code == 3 and "notes.mp4" in not_media.output
    (tmp_path / "bad.state").write_bytes(b"\0" * 64)
    clip = write_clip(tmp_path / "c.mp4", 1.0, fps=10, size=(64, 48))
    bad_state = run(clip, "-e", tiny_engines, "--restore", tmp_path / "bad.state")
    assert bad_state.exit_code == 8 and "bad.state" in bad_state.output
    usage = run(clip, "-e", tiny_engines, "--ask-every", "2")
    assert usage.exit_code == 2 and "--ask-every needs at least one --ask" in usage.output


def test_a_live_source_that_dies_is_retried_then_reported(tmp_path, tiny_engines):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = run(f"http://127.0.0.1:{port}/cam.ts", "-e", tiny_engines, "--reconnects", "1")
    assert result.exit_code == 3
    assert f"127.0.0.1:{port}/cam.ts: gave up after 2 failed attempt" in result.output


def test_dropping_under_back_pressure_is_reported(tmp_path, tiny_engines):
    """A consumer slower than the decoder: 32 questions after every chunk take far longer than
    decoding a chunk of this small clip, so with --drop oldest the decoder runs ahead and chunks
    waiting in its queue (2) are dropped. The drops are counted, the gaps are where the delivered
    chunks' times jump, and the summary says how many, in JSON and in text."""
    clip = write_clip(tmp_path / "clip.mkv", 12.0, fps=10, size=(64, 48))
    questions = [a for i in range(32) for a in ("--ask", f"question {i}?")]
    for as_json in (True, False):
        result = run(clip, "-e", tiny_engines, "--drop", "oldest", *questions, "--ask-every", "1",
                     *(["--json"] if as_json else []))
        assert result.exit_code == 0, result.output
        if not as_json:
            reported = re.search(r"dropped (\d+) chunks, 0 reconnects", result.output)
            assert reported, result.output[-2000:]
            delivered = re.findall(r"^chunk +\d+ +\[ *([\d.]+)s", result.output, re.M)
            assert int(reported.group(1)) > 0 and int(reported.group(1)) + len(delivered) == 12
            continue
        out = events(result.output)
        summary = out[-1]
        starts = [e["t0"] for e in out if e["event"] == "chunk"]
        assert summary["dropped"] > 0, "the slow consumer should have made the decoder drop chunks"
        assert summary["dropped"] + len(starts) == 12 == summary["dropped"] + summary["chunks"]
        # The chunks that got through are in order, with gaps where the dropped ones were ...
        assert starts == sorted(starts) and len(set(starts)) == len(starts)
        assert len(set(range(12)) - {round(t) for t in starts}) == summary["dropped"]
        # ... and dropping the oldest keeps the newest: the last chunk arrives, and the first delivered
        # is one the queue (2) held when the consumer first asked (0 unless the decoder got ahead).
        assert starts[-1] == 11.0 and starts[0] <= 2.0
        assert summary["media_seconds"] == len(starts)
