"""Values are checked where they enter, in-process: chunks (NaN/Inf mel, frames of the wrong kind),
questions and answer lengths, and snapshots (metadata, positions, finite state), each refused by
name before anything changes; a refused restore keeps the stream as it was."""

import json

import numpy as np
import pytest
from click.testing import CliRunner
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from mirasol_edge.cli.run import main as run_main
from mirasol_edge.errors import UsageError
from mirasol_edge.runtime.results import (
    MAX_QUESTION_BYTES,
    ChunkShapeError,
    ChunkValueError,
    RawChunk,
    check_max_new_tokens,
    check_question,
    prepare_chunk,
)
from mirasol_edge.runtime.snapshot import MAX_CHUNKS, SnapshotError, read_snapshot_metadata
from mirasol_edge.runtime.stream import MirasolStream


def _chunk(stream, seed: int) -> RawChunk:
    rng = np.random.default_rng(seed)
    mel_shape = stream.engines.mel_shape
    return RawChunk(rng.integers(0, 256, stream.engines.video_shape, dtype=np.uint8),
                    rng.standard_normal(mel_shape).astype(np.float32))


@pytest.fixture
def stream(tiny_engines):
    with MirasolStream.open(tiny_engines) as s:
        yield s


@pytest.fixture
def snap(stream, tmp_path):
    """A real snapshot after 3 pushes, and the outputs the 4th push gives from it."""
    for i in range(3):
        stream.push(_chunk(stream, i))
    path = stream.snapshot(tmp_path / "good.snapshot")
    return path


def _variant(good, out, change_tensors=None, change_meta=None):
    """``good`` rewritten: its tensors and metadata changed by the two functions."""
    tensors = load_file(str(good))
    with safe_open(str(good), "np") as f:
        meta = dict(f.metadata())
    if change_tensors:
        change_tensors(tensors)
    if change_meta:
        change_meta(meta)
    save_file(tensors, str(out), metadata=meta)
    return out


# ---- chunks ------------------------------------------------------------------------------
@pytest.mark.parametrize("mel, message", [
    (lambda shape: np.full(shape, np.nan, np.float32), r"chunk mel: 3200 of 3200 values are NaN or infinite"),
    (lambda shape: np.where(np.arange(np.prod(shape)).reshape(shape) == 7, np.inf, 0.0), "chunk mel: 1 of"),
    (lambda shape: np.full(shape, 1e300), "chunk mel: 3200 of 3200 values are NaN or infinite"),  # inf in float32
    (lambda shape: "loud", "chunk mel: an array of numbers expected, got str"),
    (lambda shape: np.full(shape, "x"), "chunk mel: an array of numbers expected"),
    (lambda shape: [[1.0, 2.0], [3.0]], "chunk mel: not an array of numbers"),
])
def test_bad_mel_is_refused_by_name_and_the_stream_is_unchanged(stream, mel, message):
    good = _chunk(stream, 0)
    with pytest.raises(ChunkValueError, match=message):
        stream.push(RawChunk(good.frames, mel(stream.engines.mel_shape)))
    assert stream.chunks_seen == 0
    assert stream.push(good).index == 0


@pytest.mark.parametrize("frames, error, message", [
    ("a picture", ChunkValueError, "chunk frames: an array of numbers expected, got str"),
    (np.full((4, 32, 32, 3), None), ChunkValueError, "chunk frames: an array of numbers expected.*object"),
    (np.zeros((4, 32, 32, 3), bool), ChunkValueError, "chunk frames: an array of numbers expected.*bool"),
    (np.zeros((4, 32, 32, 3), np.float32), ChunkShapeError, "these engines take uint8 RGB, got float32"),
])
def test_frames_of_the_wrong_kind_are_refused(stream, frames, error, message):
    with pytest.raises(error, match=message):
        stream.push(RawChunk(frames, _chunk(stream, 0).mel))
    assert stream.chunks_seen == 0


def test_float_engines_refuse_nan_frames():
    chunk = RawChunk(np.full((2, 4, 4, 3), np.nan, np.float32), None)
    with pytest.raises(ChunkValueError, match="chunk frames: 96 of 96 values are NaN or infinite"):
        prepare_chunk(chunk, (2, 4, 4, 3), np.dtype(np.float32), None)
    ints = RawChunk(np.zeros((2, 4, 4, 3), np.int16), None)
    with pytest.raises(ChunkValueError, match="uint8 RGB or floats"):
        prepare_chunk(ints, (2, 4, 4, 3), np.dtype(np.float32), None)


# ---- questions ---------------------------------------------------------------------------
@pytest.mark.parametrize("question, message", [
    ("", "question is empty"), ("  \n", "question is empty"), (None, "question must be text, got NoneType"),
    (b"bytes?", "question must be text, got bytes"), ("what\ud800", "not valid Unicode text.*surrogates"),
    ("x" * (MAX_QUESTION_BYTES + 1), f"question is {MAX_QUESTION_BYTES + 1} bytes; at most {MAX_QUESTION_BYTES}"),
    ("é" * (MAX_QUESTION_BYTES // 2 + 1), f"is {MAX_QUESTION_BYTES + 2} bytes"),
])
def test_bad_questions_are_named(question, message):
    with pytest.raises(UsageError, match=message):
        check_question(question)


def test_a_huge_question_is_refused_fast_with_a_short_message():
    with pytest.raises(UsageError) as caught:
        check_question("why " * 25_000_000)  # 100 MB
    assert len(str(caught.value)) < 200 and "100000000 bytes" in str(caught.value)


@pytest.mark.parametrize("value", [1.5, "3", True, 3.0, [3]])
def test_max_new_tokens_must_be_a_whole_number(value):
    with pytest.raises(UsageError, match="max_new_tokens must be a whole number of at least 1"):
        check_max_new_tokens(value)


def test_max_new_tokens_range():
    assert check_max_new_tokens(None) is None and check_max_new_tokens(np.int32(3)) == 3
    assert check_max_new_tokens(2**31) == 2**31  # over the engines' limit: capped where it is used
    for value in (0, -5):
        with pytest.raises(UsageError, match="at least 1"):
            check_max_new_tokens(value)


# ---- snapshots ---------------------------------------------------------------------------
@pytest.mark.parametrize("name, tensors, meta, message", [
    ("minus", None, lambda m: m.update(chunks_seen="-7"), r"chunks_seen '-7' is not a whole number"),
    ("abc", None, lambda m: m.update(chunks_seen="abc"), r"chunks_seen 'abc' is not a whole number"),
    ("huge", None, lambda m: m.update(chunks_seen="1" + "0" * 30), f"is not a whole number from 0 to {MAX_CHUNKS}"),
    ("float", None, lambda m: m.update(chunks_seen="3.0"), r"chunks_seen '3.0'"),
    ("none", None, lambda m: m.pop("chunks_seen"), r"chunks_seen None"),
    ("format", None, lambda m: m.update(format="other/1"), "not a mirasol stream snapshot"),
    ("pos", lambda t: t.update(pos=np.array([-5], np.int64)), None, r"'pos' is \[-5\], but the snapshot says 3"),
    ("nan", lambda t: t["kv.0.key"].__setitem__((0, 0, 0, 0), np.nan), None,
     r"'kv.0.key' has 1 NaN or infinite values"),
    ("inf", lambda t: t["context"].fill(np.inf), None, r"'context' has 8192 NaN or infinite"),
    ("extra", lambda t: t.update(extra=np.zeros(2, np.float32)), None, r"unexpected state tensors \['extra'\]"),
    ("dtype", lambda t: t.update(pos=np.array([3], np.int32)), None, r"'pos' is int32\[1\], expected int64\[1\]"),
])
def test_bad_snapshots_are_refused_and_the_stream_keeps_its_state(stream, snap, tmp_path, name, tensors, meta,
                                                                   message):
    bad = _variant(snap, tmp_path / f"{name}.snapshot", tensors, meta)
    before = stream.state()
    with pytest.raises(SnapshotError, match=message):
        stream.load_snapshot(bad)
    assert stream.chunks_seen == 3
    for key, value in stream.state().items():
        np.testing.assert_array_equal(value, before[key])
    with pytest.raises(SnapshotError, match=message):
        MirasolStream.restore(bad, stream.engines.dir.path)


def test_files_that_are_not_snapshots(stream, snap, tmp_path):
    cases = {"empty": b"", "text": b"not a snapshot at all", "short": b"\x10\x00",
             "huge-header": (10**9).to_bytes(8, "little") + b"{}",
             "list-header": (7).to_bytes(8, "little") + b"[1,2,3]",
             "list-meta": (20).to_bytes(8, "little") + b'{"__metadata__":[1]}',
             "cut": snap.read_bytes()[:-100]}
    for name, data in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(SnapshotError, match=name):
            stream.load_snapshot(path)
        assert stream.chunks_seen == 3, name
    with pytest.raises(SnapshotError, match="is a directory, not a snapshot"):
        stream.load_snapshot(tmp_path)
    with pytest.raises(SnapshotError, match="no such snapshot"):
        stream.load_snapshot(tmp_path / "missing")


def test_a_snapshot_over_the_size_of_the_state_is_refused_before_it_is_read(stream, snap, tmp_path):
    big = tmp_path / "big.snapshot"
    big.write_bytes(snap.read_bytes() + b"\0" * (2 << 20))
    with pytest.raises(SnapshotError, match=r"bytes, more than a snapshot of these engines can be"):
        stream.load_snapshot(big)


def test_snapshot_to_a_directory_is_refused(stream, tmp_path):
    with pytest.raises(SnapshotError, match="is a directory; give the snapshot's file name"):
        stream.snapshot(tmp_path)


def test_snapshot_bytes_carry_no_path_and_files_name_their_engines(stream, snap, tiny_engines):
    data = stream.snapshot_bytes()
    header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])["__metadata__"]
    assert set(header) == {"format", "model", "manifest_sha256", "chunks_seen", "watches"}
    assert str(tiny_engines.resolve()).encode() not in data
    assert read_snapshot_metadata(snap)["engine_dir"] == str(tiny_engines.resolve())
    again = stream.engines.stream()
    try:
        again.load_snapshot_bytes(data)
        assert again.chunks_seen == 3
    finally:
        again.close()


def test_mirasol_run_restore_with_a_bad_count_exits_8_without_a_traceback(snap, tiny_engines, tmp_path):
    bad = _variant(snap, tmp_path / "abc.snapshot", change_meta=lambda m: m.update(chunks_seen="abc"))
    result = CliRunner().invoke(run_main, ["--sample", "--engines", str(tiny_engines), "--restore", str(bad)])
    assert result.exit_code == 8, result.output
    assert "Traceback" not in result.output and "chunks_seen 'abc' is not a whole number" in result.output


# ---- waiting on changes outside this part (runtime/stream.py, cli/run.py): see the report -------------
@pytest.mark.parametrize("question, limit, message", [
    ("why?", "3", "max_new_tokens must be a whole number"), ("why?", 1.5, "max_new_tokens must be a whole number"),
    ("what\ud800", None, "not valid Unicode text"), ("q" * 100_000, None, "question is 100000 bytes"),
])
def test_in_process_ask_refuses_what_the_server_refuses(stream, question, limit, message):
    with pytest.raises(UsageError, match=message):
        stream.ask(question, limit)


@pytest.mark.parametrize("question, message", [("", "question is empty"), ("x" * 100_000, "100000 bytes")])
def test_mirasol_run_refuses_a_bad_question_before_pushing(tiny_engines, question, message):
    result = CliRunner().invoke(run_main, ["--sample", "--json", "--engines", str(tiny_engines), "--ask", question])
    assert result.exit_code == 2 and message in result.output
    assert '"event": "chunk"' not in result.output and len(result.output) < 1000
