"""The CPU twin under a real tritonserver (nvidia-pytriton's binary): many streams through the
sequence batcher give what in-process streams give; lost streams and dead servers are named."""

import concurrent.futures as cf
import json
import time

import numpy as np
import pytest
from click.testing import CliRunner

from mirasol_edge.cli.run import main as run_main
from mirasol_edge.errors import UsageError
from mirasol_edge.runtime.decode.chunks import ChunkSpec, chunks
from mirasol_edge.runtime.results import ChunkShapeError
from mirasol_edge.runtime.snapshot import SnapshotError
from mirasol_edge.runtime.stream import MirasolStream
from mirasol_edge.serve import protocol as p
from mirasol_edge.serve.client import RemoteStream, ServerError, StreamLost
from tests.media import write_clip

pytest.importorskip("tritonclient.grpc")
QUESTION = "what colour is the square?"
WAIT_S = 240  # every wait is bounded


@pytest.fixture(scope="module")
def clips(tmp_path_factory, tiny_engines):
    """Four different real clips (H.264 + AAC), decoded once, and what in-process streams make of them."""
    folder = tmp_path_factory.mktemp("clips")
    spec = ChunkSpec.from_config(MirasolStream.open(tiny_engines).engines.dir.config)
    out = []
    for i in range(4):
        path = write_clip(folder / f"clip{i}.mp4", seconds=1.5 + 0.5 * i, beeps=(0.1 * i, 0.6 + 0.2 * i))
        decoded = list(chunks(str(path), spec))
        with MirasolStream.open(tiny_engines) as local:
            outputs = [local.push(c).outputs for c in decoded]
            answer = local.ask(QUESTION)
        out.append((decoded, outputs, answer))
    # The clips differ where the tests look: a stream given another stream's state or chunks would
    # show in its outputs (each pair differs beyond the tolerance the tests compare with).
    for i in range(4):
        for j in range(i + 1, 4):
            assert not np.allclose(out[i][1][0], out[j][1][0], rtol=1e-4, atol=1e-5), (i, j)
    return out


def _stream(url: str, i: int, clip) -> tuple[list, list, object]:
    decoded, _, _ = clip
    with RemoteStream(url, f"cam-{i}") as remote:
        results = [remote.push(c) for c in decoded]
        answer = remote.ask(QUESTION)
    return [r.index for r in results], [r.outputs for r in results], answer


def test_32_concurrent_streams_answer_as_in_process(triton_server, clips):
    import tritonclient.grpc as grpcclient

    with cf.ThreadPoolExecutor(32) as pool:
        futures = [pool.submit(_stream, triton_server.url, i, clips[i % 4]) for i in range(32)]
        done = [f.result(timeout=WAIT_S) for f in futures]
    for i, (indices, outputs, answer) in enumerate(done):
        _, want_outputs, want_answer = clips[i % 4]
        assert indices == list(range(len(want_outputs))), f"stream {i}: chunks lost, repeated or reordered"
        for got, want in zip(outputs, want_outputs):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
        assert (answer.text, answer.tokens, answer.chunks_seen) == \
            (want_answer.text, want_answer.tokens, want_answer.chunks_seen), f"stream {i}"
    stats = grpcclient.InferenceServerClient(triton_server.url).get_inference_statistics(p.STREAM_MODEL, as_json=True)
    model = stats["model_stats"][0]
    # The batcher ran requests of different streams together.
    assert int(model["inference_count"]) > int(model["execution_count"])


def test_an_idle_stream_is_released_and_a_recovering_client_goes_on(triton_server, clips):
    decoded, want_outputs, _ = clips[0]
    plain = RemoteStream(triton_server.url, "sleepy", recovery=None)
    recovering = RemoteStream(triton_server.url, "sleepy-recovering")  # the default: recovery on
    for stream in (plain, recovering):
        stream.push(decoded[0])
    time.sleep(3.0 + 2.0)  # the twin's idle timeout is 3 s
    with pytest.raises(StreamLost, match="sleepy.*restore it from its last snapshot"):
        plain.push(decoded[1])
    result = recovering.push(decoded[1])  # rebuilt from its snapshot after the first push
    assert result.index == 1 and recovering.recoveries == 1
    np.testing.assert_allclose(result.outputs, want_outputs[1], rtol=1e-4, atol=1e-5)
    recovering.close()


def test_bad_requests_are_named(triton_server, clips, tmp_path):
    import tritonclient.grpc as grpcclient

    with RemoteStream(triton_server.url, "bad") as remote:
        with pytest.raises(ChunkShapeError, match="expected shape"):
            remote.push(frames=np.zeros((1, 8, 8, 3), np.uint8), mel=None)
        with pytest.raises(UsageError, match="empty"):
            remote.ask(" ")
        junk = tmp_path / "junk.snapshot"
        junk.write_bytes(b"not a snapshot at all")
        with pytest.raises(SnapshotError, match="not a snapshot"):  # refused here, before it is sent
            remote.load_snapshot(junk)
    client = grpcclient.InferenceServerClient(triton_server.url)
    op = grpcclient.InferInput(p.OP, [1, 1], "BYTES")
    op.set_data_from_numpy(p.strings("explode"))
    with pytest.raises(Exception, match="unknown op 'explode'"):
        client.infer(p.STREAM_MODEL, [op], sequence_id=99, sequence_start=True)


def test_a_killed_server_is_reported_and_a_snapshot_restores_the_stream(twin_repository, tiny_engines, clips, tmp_path):
    from mirasol_edge.serve.local_server import LocalTriton
    from tests.conftest import triton_python

    decoded, want_outputs, want_answer = clips[3]
    server = LocalTriton(twin_repository, triton_python())
    try:
        server.start()
        remote = RemoteStream(server.url, "cam-restart", timeout_s=20, recovery=None)
        for c in decoded[:2]:
            remote.push(c)
        snap = remote.snapshot(tmp_path / "cam.snapshot")
        server.kill()
        with pytest.raises(ServerError, match=f"{server.url}.*unreachable"):
            remote.push(decoded[2])
        server.start()  # same ports: the stream's address did not change, its state is gone
        with pytest.raises(StreamLost, match="no longer holds this stream"):
            remote.push(decoded[2])
        remote.load_snapshot(snap)
        assert remote.chunks_seen == 2
        rest = [remote.push(c) for c in decoded[2:]]
        assert [r.index for r in rest] == list(range(2, len(decoded)))
        np.testing.assert_allclose(rest[-1].outputs, want_outputs[-1], rtol=1e-4, atol=1e-5)
        assert remote.ask(QUESTION).text == want_answer.text
        remote.close()
    finally:
        server.stop()
    # A server's snapshot is the runtime's: it restores into an in-process stream too.
    with MirasolStream.restore(snap, tiny_engines) as local:
        assert local.chunks_seen == 2
        outputs = [local.push(c).outputs for c in decoded[2:]]
    np.testing.assert_allclose(outputs[-1], want_outputs[-1], rtol=1e-4, atol=1e-5)


def test_mirasol_run_on_a_server_answers_as_it_does_here(triton_server, tiny_engines):
    def answers(*where):
        result = CliRunner().invoke(run_main, ["--sample", "--json", *where])
        assert result.exit_code == 0, result.output
        events = [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]
        summary = events[-1]
        return [(e["question"], e["answer"]) for e in events if e.get("event") == "answer"], summary

    local, _ = answers("--engines", str(tiny_engines))
    remote, summary = answers("--server", triton_server.url, "--stream-id", "cli")
    assert remote == local and len(local) == 6
    assert summary["backend"]["backend"] == "triton" and summary["chunks"] > 0
