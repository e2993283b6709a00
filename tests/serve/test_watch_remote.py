"""Watches on a real tritonserver (the CPU twin): registered through RemoteStream, scored by the
server on each push (several streams' pushes batched in one execute), their events in the push's
response equal to an in-process stream's, carried by the server's snapshots."""

import concurrent.futures as cf

import pytest

from mirasol_edge.assets import SAMPLE_CLIP
from mirasol_edge.errors import UsageError
from mirasol_edge.runtime.decode.chunks import chunks
from mirasol_edge.runtime.stream import MirasolStream

pytest.importorskip("tritonclient.grpc")
WATCHES = [("is the square red?", ("yes", "no")), ("what colour is the square?", None),
           ("how many beeps?", ("one", "two", "three"))]


def _register(stream, seen: list) -> None:
    stream.on_event(seen.append)
    for question, answers in WATCHES:
        stream.watch(question, answers, threshold=0.4)


def _run(stream, decoded) -> list[tuple]:
    out = []
    for chunk in decoded * 2:
        result = stream.push(chunk)
        out += [(e.watch.name, e.answer, e.previous, e.chunk_index, e.t0,
                 None if e.probability is None else round(e.probability, 4)) for e in result.events]
    return out


def test_remote_watches_fire_as_in_process_ones(triton_server, tiny_engines, tmp_path):
    from mirasol_edge.serve.client import RemoteStream

    with MirasolStream.open(tiny_engines) as local:
        decoded = list(chunks(SAMPLE_CLIP, local.spec))
        seen_here: list = []
        _register(local, seen_here)
        want = _run(local, decoded)
    assert want and seen_here  # something fires: the comparison below can fail

    def remote(i: int):
        seen: list = []
        with RemoteStream(triton_server.url, f"watch-cam-{i}", recovery=None) as stream:
            _register(stream, seen)
            got = _run(stream, decoded)
            stream.snapshot(tmp_path / f"cam-{i}.state")
            return got, [e.watch.name for e in seen], [w.name for w in stream.watches]

    with cf.ThreadPoolExecutor(3) as pool:  # three streams at once: the server batches their pushes
        results = list(pool.map(remote, range(3)))
    for got, listened, names in results:
        assert [g[:5] for g in got] == [w[:5] for w in want]
        for g, w in zip(got, want):
            assert g[5] == pytest.approx(w[5], abs=1e-3) if w[5] is not None else g[5] is None
        assert listened == [w[0] for w in want]
        assert names == ["is-the-square-red", "what-colour-is-the-square", "how-many-beeps"]
    # The server's snapshot carries its watches: an in-process stream watches on from it.
    with MirasolStream.restore(tmp_path / "cam-0.state", tiny_engines) as restored:
        assert [w.name for w in restored.watches] == names
        assert restored.watches[1].answer == [w for w in want if w[0] == "what-colour-is-the-square"][-1][1]


def test_remote_watch_arguments_are_checked_before_anything_is_sent(triton_server):
    from mirasol_edge.serve.client import RemoteStream, ServerError

    with RemoteStream(triton_server.url, "watch-bad", recovery=None) as stream:
        with pytest.raises(UsageError, match="threshold"):
            stream.watch("is it?", ("yes", "no"), threshold=2)
        with pytest.raises(UsageError, match="evidence_seconds"):
            stream.watch("is it?", ("yes", "no"), evidence_seconds=3)
        assert not stream._started  # nothing reached the server
        with pytest.raises(ServerError, match="max_question_tokens"):  # the server's own check, named back
            stream.watch("x" * 300, ("yes", "no"))
        stream.watch("is it?", ("yes", "no"), name="it")
        stream.unwatch("it")
        assert stream.watches == ()
