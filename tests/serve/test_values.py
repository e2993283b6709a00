"""Values checked where they enter a remote stream, against a real tritonserver: a restore is
atomic (a snapshot refused here or by the server leaves the stream as it was), foreign inputs get
the project's own errors before anything is sent, and a server's snapshot carries no path of the
server's."""

import json
import time

import numpy as np
import pytest
from safetensors import safe_open

from mirasol_edge.errors import UsageError
from mirasol_edge.runtime.results import ChunkValueError, RawChunk
from mirasol_edge.runtime.snapshot import SnapshotError
from mirasol_edge.runtime.stream import MirasolStream
from mirasol_edge.serve import protocol as p
from mirasol_edge.serve.client import RemoteStream, ServerError
from tests.serve.test_isolation import _chunks, _in_process, raw, snapshot_variant

pytest.importorskip("tritonclient.grpc")


def test_a_refused_restore_leaves_the_remote_stream_as_it_was(triton_server, tiny_engines, tmp_path, twin_repository):
    chunks = _chunks(tiny_engines, 11, 5)
    want = _in_process(tiny_engines, chunks)
    with RemoteStream(triton_server.url, "atomic-restore") as remote:
        remote.push(chunks[0])
        early = remote.snapshot(tmp_path / "early.snapshot")
        for c in chunks[1:3]:
            remote.push(c)
        good = early.read_bytes()

        def bad(name: str, data: bytes):
            path = tmp_path / name
            path.write_bytes(data)
            return path

        refused_here = {  # the client checks the file before it sends anything
            bad("junk", b"not a snapshot at all"): "not a snapshot",
            bad("minus", snapshot_variant(good, "-7")): "chunks_seen '-7' is not a whole number",
            bad("abc", snapshot_variant(good, "abc")): "chunks_seen 'abc'",
            bad("huge", snapshot_variant(good, "1" + "0" * 30)): "chunks_seen",
            tmp_path: "is a directory, not a snapshot",
            tmp_path / "missing": "no such snapshot",
        }
        refused_there = {  # the server checks the state whole before it replaces anything
            bad("nan", snapshot_variant(good, change=lambda t: t["context"].fill(np.nan))):
                "'context' has 8192 NaN or infinite values",
            bad("pos", snapshot_variant(good, change=lambda t: t.update(pos=t["pos"] - 6))): r"'pos' is [-5]",
            bad("extra", snapshot_variant(good, change=lambda t: t.update(x=np.zeros(1, np.float32)))):
                "unexpected state tensors ['x']",
            bad("other", _other_engines(good)): "taken with another model",
        }
        for path, message in refused_here.items():
            with pytest.raises(SnapshotError, match=_literal(message)):
                remote.load_snapshot(path)
            assert remote.chunks_seen == 3
        for path, message in refused_there.items():
            with pytest.raises(ServerError, match=_literal(message)) as caught:
                remote.load_snapshot(path)
            assert str(twin_repository) not in str(caught.value), "the server's path reached the client"
            assert remote.chunks_seen == 3
        # A snapshot over the size of the engines' state, sent past the client's checks:
        padded = raw(triton_server.url, remote.sequence_id, "restore", SNAPSHOT_IN=good + b"\0" * (2 << 20),
                     STREAM_ID=remote.stream_id, STREAM_KEY=remote._key)  # as the stream's own client
        assert isinstance(padded, str) and "more than a snapshot of these engines can be" in padded
        result = remote.push(chunks[3])  # the state is the one three pushes made
        assert result.index == 3
        np.testing.assert_allclose(result.outputs, want[3], rtol=1e-4, atol=1e-5)
        remote.load_snapshot(early)  # a good one replaces the open stream's state, no START needed
        assert remote.chunks_seen == 1
        again = remote.push(chunks[1])
        assert again.index == 1
        np.testing.assert_allclose(again.outputs, want[1], rtol=1e-4, atol=1e-5)


def _literal(text: str) -> str:
    import re

    return re.escape(text)


def _other_engines(good: bytes) -> bytes:
    from safetensors.numpy import load, save

    meta = json.loads(good[8 : 8 + int.from_bytes(good[:8], "little")])["__metadata__"]
    return save(load(good), metadata={**meta, "model": "0" * 64, "manifest_sha256": "0" * 64})


def test_foreign_inputs_are_refused_before_anything_is_sent(triton_server, tiny_engines, tmp_path):
    chunk = _chunks(tiny_engines, 12, 1)[0]
    with RemoteStream(triton_server.url, "foreign") as remote:
        remote.push(chunk)
        answer = remote.ask("what colour is the square?", 2**31)  # over INT32: capped, like any value over the limit
        assert answer.chunks_seen == 1 and len(answer.tokens) <= 16
        for limit in (1.5, "3", True, 0, -1):
            with pytest.raises(UsageError, match="max_new_tokens must be"):
                remote.ask("why?", limit)
        with pytest.raises(UsageError, match="not valid Unicode text"):
            remote.ask("what is \udc80?")
        start = time.perf_counter()
        with pytest.raises(UsageError, match="question is 100000000 bytes; at most 4096") as caught:
            remote.ask("q" * 100_000_000)
        assert time.perf_counter() - start < 5 and len(str(caught.value)) < 200
        for mel, message in ((np.full_like(chunk.mel, np.nan), "NaN or infinite"), ("loud", "got str"),
                             (np.full_like(chunk.mel, -np.inf), "3200 of 3200")):
            with pytest.raises(ChunkValueError, match=f"chunk mel: .*{message}"):
                remote.push(RawChunk(chunk.frames, mel))
        with pytest.raises(ChunkValueError, match="chunk frames: an array of numbers expected"):
            remote.push(RawChunk("frames", chunk.mel))
        with pytest.raises(SnapshotError, match="is a directory"):
            remote.snapshot(tmp_path)
        assert remote.push(chunk).index == 1  # none of it reached the stream


def test_a_server_snapshot_carries_no_server_path(triton_server, tiny_engines, twin_repository, tmp_path):
    with RemoteStream(triton_server.url, "no-path") as remote:
        remote.push(_chunks(tiny_engines, 13, 1)[0])
        path = remote.snapshot(tmp_path / "remote.snapshot")
    with safe_open(str(path), "np") as f:
        assert set(f.metadata()) == {"format", "model", "manifest_sha256", "chunks_seen", "watches"}
    data = path.read_bytes()
    assert str(twin_repository).encode() not in data and b"/engines" not in data
    with MirasolStream.open(tiny_engines) as local:  # the runtime reads it, given the engines
        local.load_snapshot(path)
        assert local.chunks_seen == 1


def test_restoring_a_server_snapshot_without_engines_says_to_give_them(triton_server, tiny_engines, tmp_path):
    with RemoteStream(triton_server.url, "no-path-restore") as remote:
        remote.push(_chunks(tiny_engines, 14, 1)[0])
        path = remote.snapshot(tmp_path / "remote.snapshot")
    with pytest.raises(SnapshotError, match="names no engine directory"):
        MirasolStream.restore(path)


def test_a_raw_request_past_the_client_gets_the_same_refusals(triton_server, tiny_engines):
    sid = p.sequence_id("raw-values")
    chunk = _chunks(tiny_engines, 15, 1)[0]
    assert not isinstance(raw(triton_server.url, sid, "push", start=True, VIDEO=chunk.frames[None],
                              MEL=chunk.mel[None]), str)
    surrogate = "what is \udc80?".encode("utf-8", "surrogatepass")
    got = raw(triton_server.url, sid, "ask", QUESTION=surrogate)
    assert isinstance(got, str) and "input QUESTION is not UTF-8 text" in got
    got = raw(triton_server.url, sid, "close", end=True)
    assert not isinstance(got, str) and int(got.as_numpy(p.CHUNK_INDEX)[0, 0]) == 1
