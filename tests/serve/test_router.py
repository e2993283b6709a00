"""The shipped NGINX routers in front of two real tritonservers: every stream's requests reach one
server (else its state would be missing there), and both serve. deploy/nginx/nginx.conf in
plaintext; deploy/nginx/nginx-tls.conf with TLS on both sides (mutual: cameras to the router, the
router to the servers), which also keeps Triton's admin header from passing."""

import concurrent.futures as cf
import contextlib
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from mirasol_edge.serve import protocol as p
from mirasol_edge.serve.client import RemoteStream, ServerError
from mirasol_edge.serve.local_server import LocalTriton, Restricted, ServerTLS, free_port
from mirasol_edge.serve.tls import ClientTLS
from tests.conftest import triton_python

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "nginx"
STREAMS, PUSHES = 16, 3
SECRET = "router-test-admin-key"


def _nginx() -> str:
    path = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").is_file() else None)
    if path is None:
        import os

        if os.environ.get("MIRASOL_REQUIRE_TRITON"):
            pytest.fail("nginx is not installed (make test installs Debian's nginx-light)")
        pytest.skip("nginx is not installed")
    return path


def _config(name: str, servers: list[str], listen: str, port: int, tmp_path: Path, tls_dir: Path | None = None) -> Path:
    """The shipped config with this machine's servers, port and (TLS) certificate folder."""
    text = (DEPLOY / name).read_text()
    for i, server in enumerate(servers):
        text, n = re.subn(rf"(?m)^(\s*)server triton-{i}\.triton:8001;.*$", rf"\1server {server};", text)
        assert n == 1, f"{name}: no upstream line for triton-{i}"
    text, n = re.subn(rf"listen {listen} ", f"listen 127.0.0.1:{port} ", text)
    assert n == 1, f"{name}: no 'listen {listen}' line"
    if tls_dir is not None:
        assert "/etc/nginx/tls/" in text
        text = text.replace("/etc/nginx/tls/", f"{tls_dir}/")
    path = tmp_path / "nginx.conf"
    path.write_text(text)
    return path


@contextlib.contextmanager
def _router(config: Path, url: str, tls: ClientTLS | None = None):
    """NGINX on ``config``, once it forwards a health request (bounded wait); stopped after."""
    from tritonclient.grpc import InferenceServerClient

    folder = config.parent
    (folder / "logs").mkdir(exist_ok=True)
    router = subprocess.Popen([_nginx(), "-p", str(folder), "-c", str(config), "-g",
                               f"daemon off; pid {folder}/nginx.pid; error_log {folder}/logs/error.log;"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        client = InferenceServerClient(url, **(tls.client_options() if tls else {}))
        deadline = time.monotonic() + 30
        while True:
            assert router.poll() is None, router.stderr.read()
            try:
                if client.is_server_live(client_timeout=5):
                    break
            except Exception:
                assert time.monotonic() < deadline, (folder / "logs" / "error.log").read_text()
            time.sleep(0.2)
        yield router
    finally:
        router.terminate()
        router.wait(timeout=30)


def _pinned(url: str, servers: list[str], inferences, tls: ClientTLS | None = None) -> None:
    """16 streams through the router: each one's pushes all reach the server holding its state."""
    before = [inferences(s) for s in servers]

    def stream(i: int) -> list[int]:
        import numpy as np

        with RemoteStream(url, f"camera-{i}", connect_retry_s=10, recovery=None, tls=tls) as remote:  # a miss shows
            rng = np.random.default_rng(i)
            frames = rng.integers(0, 256, remote.video_shape, dtype=np.uint8)
            mel = rng.standard_normal(remote.mel_shape).astype(np.float32)
            return [remote.push(frames=frames, mel=mel).index for _ in range(PUSHES)]

    with cf.ThreadPoolExecutor(8) as pool:
        indices = [f.result(timeout=240) for f in [pool.submit(stream, i) for i in range(STREAMS)]]
    # A push that reached the other server would find no state there and fail (StreamLost).
    assert indices == [list(range(PUSHES))] * STREAMS
    deadline = time.monotonic() + 10  # Triton counts a request just after it answers: wait for the last ones
    while sum(served := [inferences(s) - b for s, b in zip(servers, before)]) < STREAMS * (PUSHES + 1):
        if time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert sum(served) == STREAMS * (PUSHES + 1)  # the pushes and a close per stream
    assert min(served) > 0, f"one server took every stream: {served}"


def _inference_count(client, headers=None) -> int:
    stats = client.get_inference_statistics(p.STREAM_MODEL, as_json=True, headers=headers, client_timeout=10)
    return int(stats["model_stats"][0].get("inference_count", 0))


def test_streams_are_pinned_to_one_server_by_their_id(triton_server, twin_repository, tmp_path):
    from tritonclient.grpc import InferenceServerClient

    with LocalTriton(twin_repository, triton_python()) as second:
        servers = [triton_server.url, second.url]
        port = free_port()
        with _router(_config("nginx.conf", servers, "8001", port, tmp_path), f"127.0.0.1:{port}"):
            _pinned(f"127.0.0.1:{port}", servers, lambda s: _inference_count(InferenceServerClient(s)))


def test_streams_are_pinned_over_tls_on_both_sides(twin_repository, tmp_path):
    """Cameras -> NGINX: mutual TLS with the fleet's CA. NGINX -> servers: mutual TLS with the
    servers' CA (here one CA signs everything; the files are the config's own names)."""
    from tritonclient.grpc import InferenceServerClient
    from tritonclient.utils import InferenceServerException

    from tests.serve.test_tls import make_certs

    certs = make_certs(tmp_path / "made")
    tls_dir = tmp_path / "tls"
    tls_dir.mkdir()
    for ours, theirs in ((certs.server, "router.crt"), (certs.server_key, "router.key"), (certs.ca, "fleet-ca.crt"),
                         (certs.router, "upstream.crt"), (certs.router_key, "upstream.key"), (certs.ca, "triton-ca.crt")):
        shutil.copy(ours, tls_dir / theirs)
    server_tls = ServerTLS(certs.server, certs.server_key, client_ca=certs.ca)
    restricted = Restricted(SECRET)
    admin = ClientTLS(certs.ca, certs.router, certs.router_key)  # straight to a server, as the router is
    with contextlib.ExitStack() as stack:
        backends = [LocalTriton(twin_repository, triton_python(), tls=server_tls, restricted=restricted) for _ in range(2)]
        for backend in backends:
            stack.callback(backend.__exit__, None, None, None)
        with cf.ThreadPoolExecutor(2) as pool:  # both start at once (each start is bounded)
            list(pool.map(LocalTriton.start, backends))
        servers = [b.url for b in backends]  # 127.0.0.1: the certificate names it, localhost and `triton`
        port = free_port()
        url = f"127.0.0.1:{port}"  # the router's certificate (the same one here) names it too
        camera = ClientTLS(certs.ca, certs.client, certs.client_key)
        config = _config("nginx-tls.conf", servers, "8443", port, tmp_path, tls_dir)
        with _router(config, url, camera):
            direct = {s: InferenceServerClient(s, **admin.client_options()) for s in servers}
            _pinned(url, servers, lambda s: _inference_count(direct[s], {restricted.grpc_header: SECRET}), camera)
            # The router takes cameras with a certificate from the fleet's CA only ...
            for refused in (ClientTLS(certs.ca), ClientTLS(certs.ca, certs.stranger, certs.stranger_key)):
                start = time.monotonic()
                with pytest.raises(ServerError, match="a TLS router refused this client"):
                    RemoteStream(url, "no-certificate", tls=refused, timeout_s=10, connect_retry_s=1, recovery=None)
                assert time.monotonic() - start < 8
            # ... and drops the admin header: the servers' statistics stay closed through it.
            through = InferenceServerClient(url, **camera.client_options())
            with pytest.raises(InferenceServerException, match="This protocol is restricted"):
                _inference_count(through, {restricted.grpc_header: SECRET})
