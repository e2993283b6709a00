"""The shipped NGINX router (deploy/nginx/nginx.conf) in front of two real tritonservers: every
stream's requests reach one server (else its state would be missing there), and both serve."""

import concurrent.futures as cf
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from mirasol_edge.serve import protocol as p
from mirasol_edge.serve.client import RemoteStream
from mirasol_edge.serve.local_server import LocalTriton, free_port
from tests.conftest import triton_python

CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "nginx" / "nginx.conf"


def _nginx() -> str:
    path = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").is_file() else None)
    if path is None:
        import os

        if os.environ.get("MIRASOL_REQUIRE_TRITON"):
            pytest.fail("nginx is not installed (make test installs Debian's nginx-light)")
        pytest.skip("nginx is not installed")
    return path



def _inferences(url: str) -> int:
    import tritonclient.grpc as grpcclient

    stats = grpcclient.InferenceServerClient(url).get_inference_statistics(p.STREAM_MODEL, as_json=True)
    return int(stats["model_stats"][0].get("inference_count", 0))


def test_streams_are_pinned_to_one_server_by_their_id(triton_server, twin_repository, tmp_path):
    from tritonclient.grpc import InferenceServerClient

    nginx = _nginx()
    with LocalTriton(twin_repository, triton_python()) as second:
        servers = [triton_server.url, second.url]
        port = free_port()
        text = CONFIG.read_text()
        text = re.sub(r"(?m)^(\s*)server triton-0\.triton:8001;.*$", rf"\1server {servers[0]};", text)
        text = re.sub(r"(?m)^(\s*)server triton-1\.triton:8001;.*$", rf"\1server {servers[1]};", text)
        text = text.replace("listen 8001 http2;", f"listen 127.0.0.1:{port} http2;")
        assert all(s in text for s in servers)
        (tmp_path / "nginx.conf").write_text(text)
        (tmp_path / "logs").mkdir()
        router = subprocess.Popen([nginx, "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"), "-g",
                                   f"daemon off; pid {tmp_path}/nginx.pid; error_log {tmp_path}/logs/error.log;"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            url = f"127.0.0.1:{port}"
            deadline = time.monotonic() + 30
            while not InferenceServerClient(url).is_server_live():  # through the router
                assert router.poll() is None and time.monotonic() < deadline, router.stderr.read()
                time.sleep(0.2)
            before = [_inferences(s) for s in servers]

            def stream(i: int) -> list[int]:
                import numpy as np

                with RemoteStream(url, f"camera-{i}", connect_retry_s=10) as remote:
                    rng = np.random.default_rng(i)
                    frames = rng.integers(0, 256, remote.video_shape, dtype=np.uint8)
                    mel = rng.standard_normal(remote.mel_shape).astype(np.float32)
                    return [remote.push(frames=frames, mel=mel).index for _ in range(3)]

            with cf.ThreadPoolExecutor(8) as pool:
                indices = [f.result(timeout=240) for f in [pool.submit(stream, i) for i in range(16)]]
            # A push that reached the other server would find no state there and fail (StreamLost).
            assert indices == [[0, 1, 2]] * 16
            served = [_inferences(s) - b for s, b in zip(servers, before)]
            assert sum(served) == 16 * (3 + 1)  # three pushes and a close per stream
            assert min(served) > 0, f"one server took every stream: {served}"
        finally:
            router.terminate()
            router.wait(timeout=30)
