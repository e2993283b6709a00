"""Streams that survive a server: 16 streams through the shipped NGINX router to two real
tritonservers serving different builds of the same model (batch 1 and batch 2); one server is
killed mid-stream, and every stream finishes on the other (RemoteStream restores its portable
snapshot there and replays the chunks since), every chunk index once, with the answers of
uninterrupted in-process streams."""

import concurrent.futures as cf
import threading
import time

import pytest

from mirasol_edge.assets import BUNDLED_CHECKPOINT, SAMPLE_CLIP
from mirasol_edge.runtime.decode.chunks import chunks
from mirasol_edge.runtime.stream import MirasolStream
from mirasol_edge.serve.client import RemoteStream
from mirasol_edge.serve.local_server import LocalTriton, free_port
from mirasol_edge.serve.recovery import Recovery
from mirasol_edge.serve.repository import ServeOptions, write_repository
from mirasol_edge.toolkit.build import build
from mirasol_edge.toolkit.recipe import load_recipe
from tests.conftest import triton_python
from tests.serve.test_router import _config, _router

pytest.importorskip("tritonclient.grpc")
STREAMS, BEFORE, AFTER = 16, 4, 8  # pushes before the kill and after it
QUESTION = "what colour is the square?"


@pytest.fixture(scope="module")
def two_builds(tmp_path_factory):
    folder = tmp_path_factory.mktemp("failover")
    one = folder / "batch1"
    two = folder / "batch2"
    build(load_recipe("cpu"), one, checkpoint=BUNDLED_CHECKPOINT)
    build(load_recipe("cpu", ["build.batch=2"]), two, checkpoint=BUNDLED_CHECKPOINT)
    repos = [write_repository(engines, folder / f"repo-{engines.name}", ServeOptions(idle_seconds=120), twin=True)
             for engines in (one, two)]
    return one, repos


def test_every_stream_finishes_on_the_other_server_when_one_dies(two_builds, tmp_path):
    engines, repos = two_builds
    decoded = list(chunks(SAMPLE_CLIP, MirasolStream.open(engines).spec))
    sequence = [decoded[i % len(decoded)] for i in range(BEFORE + AFTER)]
    with MirasolStream.open(engines) as local:  # what an uninterrupted stream makes of the same chunks
        want_outputs = [local.push(c).outputs for c in sequence]
        want_answer = local.ask(QUESTION).text
    first, second = LocalTriton(repos[0], triton_python()), LocalTriton(repos[1], triton_python())
    first.start()
    try:
        second.start()
        port = free_port()
        url = f"127.0.0.1:{port}"
        with _router(_config("nginx.conf", [first.url, second.url], "8001", port, tmp_path), url):
            killed = threading.Barrier(STREAMS + 1, timeout=240)

            def stream(i: int):
                policy = Recovery(snapshot_every=3, keep_chunks=8, retry_s=0.5)
                with RemoteStream(url, f"camera-{i}", connect_retry_s=10, timeout_s=60, recovery=policy) as remote:
                    results = [remote.push(c) for c in sequence[:BEFORE]]
                    killed.wait()  # a server dies here
                    start = time.perf_counter()
                    results.append(remote.push(sequence[BEFORE]))
                    first_push_s = time.perf_counter() - start
                    results += [remote.push(c) for c in sequence[BEFORE + 1 :]]
                    return results, remote.ask(QUESTION).text, remote.recoveries, first_push_s

            with cf.ThreadPoolExecutor(STREAMS) as pool:
                futures = [pool.submit(stream, i) for i in range(STREAMS)]
                killed.wait()
                first.kill()
                done = [f.result(timeout=300) for f in futures]
    finally:
        first.stop()
        second.stop()
    recovered = [d for d in done if d[2] > 0]
    assert 0 < len(recovered) < STREAMS, "the killed server held some streams, not all"
    for results, answer, _, _ in done:
        assert [r.index for r in results] == list(range(BEFORE + AFTER))  # every index once, in order
        for got, want in zip(results, want_outputs):
            assert abs(got.outputs - want).max() <= 1e-3 * abs(want).max()
        assert answer == want_answer
    slowest = max(d[3] for d in recovered)
    print(f"recovered {len(recovered)} of {STREAMS} streams; first push after the kill took at most {slowest:.2f} s")
