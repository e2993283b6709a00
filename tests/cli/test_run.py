"""``mirasol-run`` end to end: a real encoded clip through real engines."""

import json

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
    state = tmp_path / "cam.state"
    first = run(clip, "-e", tiny_engines, "--snapshot", state, "--json")
    assert first.exit_code == 0, first.output and state.is_file()
    second = run(clip, "-e", tiny_engines, "--restore", state, "--ask", "what colour?", "--json")
    assert second.exit_code == 0, second.output
    assert [e["index"] for e in events(second.output) if e["event"] == "chunk"] == [3, 4, 5]
    assert [e["chunks_seen"] for e in events(second.output) if e["event"] == "answer"] == [6]


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
    clip = write_clip(tmp_path / "clip.mkv", 4.0, fps=10, size=(64, 48))
    result = run(clip, "-e", tiny_engines, "--drop", "oldest", "--json")
    assert result.exit_code == 0, result.output
    summary = events(result.output)[-1]
    indices = [e["index"] for e in events(result.output) if e["event"] == "chunk"]
    assert summary["dropped"] == 4 - len(indices) and indices == sorted(indices)
