"""TLS and mutual TLS to real tritonservers, with certificates made here (trustme), and Triton's own
endpoints locked down: loopback only, admin groups behind a header (``Restricted``).

A refused client must get a ``ServerError`` that says what to check, quickly: every client here has
short timeouts, and each refusal is timed."""

import json
import os
import re
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import trustme
from click.testing import CliRunner

from mirasol_edge.cli.run import main as run_main
from mirasol_edge.errors import UsageError
from mirasol_edge.serve.client import RemoteStream, ServerError
from mirasol_edge.serve.local_server import LocalTriton, Restricted
from mirasol_edge.serve.tls import ClientTLS, ServerTLS
from tests.conftest import triton_python

SECRET = "s3cret-admin-key"
QUICK = dict(timeout_s=10.0, connect_retry_s=1.0, recovery=None)  # a refusal shows at once, not after retries
REFUSED_WITHIN_S = 8.0


def make_certs(folder: Path) -> SimpleNamespace:
    """A CA; a server certificate for localhost, 127.0.0.1 and ``triton`` (the name the TLS router
    checks); two client certificates from it; another CA and a client certificate from that one."""
    folder.mkdir(parents=True, exist_ok=True)
    ca, other = trustme.CA(), trustme.CA()
    files = {"ca": folder / "ca.pem", "other_ca": folder / "other-ca.pem"}
    ca.cert_pem.write_to_path(files["ca"])
    other.cert_pem.write_to_path(files["other_ca"])
    for name, issuer, identities in (("server", ca, ("localhost", "127.0.0.1", "triton")),
                                     ("client", ca, ("camera-1",)), ("router", ca, ("mirasol-router",)),
                                     ("stranger", other, ("camera-x",))):
        cert = issuer.issue_cert(*identities)
        files[name], files[f"{name}_key"] = folder / f"{name}.pem", folder / f"{name}.key"
        cert.cert_chain_pems[0].write_to_path(files[name])
        cert.private_key_pem.write_to_path(files[f"{name}_key"])
    return SimpleNamespace(**files)


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certs(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def tls_server(twin_repository, certs):
    with LocalTriton(twin_repository, triton_python(), tls=ServerTLS(certs.server, certs.server_key)) as server:
        yield server


@pytest.fixture(scope="module")
def mtls_server(twin_repository, certs):
    """Mutual TLS, and the admin groups behind a header, as the deploy files run it."""
    tls = ServerTLS(certs.server, certs.server_key, client_ca=certs.ca)
    with LocalTriton(twin_repository, triton_python(), tls=tls, restricted=Restricted(SECRET)) as server:
        yield server


def _chunk(remote, seed: int = 0):
    rng = np.random.default_rng(seed)
    return dict(frames=rng.integers(0, 256, remote.video_shape, dtype=np.uint8),
                mel=rng.standard_normal(remote.mel_shape).astype(np.float32))


def _session(url: str, stream_id: str, tls: ClientTLS | None) -> tuple[list[np.ndarray], str]:
    with RemoteStream(url, stream_id, tls=tls, **QUICK) as remote:
        outputs = [remote.push(**_chunk(remote, i)).outputs for i in range(3)]
        return outputs, remote.ask("what is there?").text


def _refused(url: str, tls: ClientTLS | None, match: str) -> ServerError:
    start = time.monotonic()
    with pytest.raises(ServerError, match=match) as info:
        RemoteStream(url, "refused", tls=tls, **QUICK)
    assert time.monotonic() - start < REFUSED_WITHIN_S, "a refusal should not wait out the timeouts"
    return info.value


def test_a_tls_client_pushes_and_answers_as_a_plaintext_one(triton_server, tls_server, certs):
    plain = _session(triton_server.url, "plain", None)
    secure = _session(tls_server.url, "secure", ClientTLS(certs.ca))
    for a, b in zip(plain[0], secure[0]):
        np.testing.assert_array_equal(a, b)
    assert secure[1] == plain[1]


def test_a_client_that_does_not_trust_the_servers_ca_is_refused(tls_server, certs):
    for ca in (None, certs.other_ca):  # gRPC's default roots; another CA
        error = _refused(tls_server.url, ClientTLS(ca), "CERTIFICATE_VERIFY_FAILED")
        assert "not signed by the CA given" in str(error) and tls_server.url in str(error)


def test_plaintext_to_a_tls_port_is_refused(tls_server):
    _refused(tls_server.url, None, r"if the server speaks TLS, connect with tls=ClientTLS\(ca\)")


def test_mutual_tls_takes_only_client_certificates_from_its_ca(mtls_server, certs):
    outputs, answer = _session(mtls_server.url, "mutual", ClientTLS(certs.ca, certs.client, certs.client_key))
    assert len(outputs) == 3 and isinstance(answer, str)
    _refused(mtls_server.url, ClientTLS(certs.ca), r"give one \(--tls-cert, --tls-key\)")
    _refused(mtls_server.url, ClientTLS(certs.ca, certs.stranger, certs.stranger_key),
             "did not accept the client certificate")


def test_mirasol_run_over_mutual_tls_answers_as_over_plaintext(triton_server, mtls_server, certs):
    def answers(*where):
        result = CliRunner().invoke(run_main, ["--sample", "--json", "--max-chunks", "2", *where])
        assert result.exit_code == 0, result.output
        return [(e["question"], e["answer"]) for e in map(json.loads, result.output.splitlines())
                if e.get("event") == "answer"]

    plain = answers("--server", triton_server.url, "--stream-id", "cli-plain")
    secure = answers("--server", mtls_server.url, "--stream-id", "cli-tls", "--tls-ca", str(certs.ca),
                     "--tls-cert", str(certs.client), "--tls-key", str(certs.client_key))
    assert secure == plain and plain


def test_restricted_groups_need_the_header_and_inference_stays_open(mtls_server, certs):
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    tls = ClientTLS(certs.ca, certs.client, certs.client_key)
    client = grpcclient.InferenceServerClient(mtls_server.url, **tls.client_options())
    key = Restricted(SECRET).grpc_header  # over gRPC Triton wants "triton-grpc-protocol-" + the key
    admin = [lambda h: client.get_inference_statistics(headers=h, client_timeout=10),
             lambda h: client.get_model_repository_index(headers=h, client_timeout=10)]
    for call in admin:
        for headers in (None, {key: "wrong"}, {"triton-admin-key": SECRET}):
            with pytest.raises(InferenceServerException, match="This protocol is restricted"):
                call(headers)
        call({key: SECRET})
    # Open to the router: health, metadata and the stream model's config (RemoteStream's open reads it).
    assert client.is_server_ready(client_timeout=10) and client.get_server_metadata(client_timeout=10)
    with pytest.raises(InferenceServerException, match="not allowed"):  # --model-control-mode=none: even with the key
        client.unload_model("mirasol", headers={key: SECRET}, client_timeout=10)
    with RemoteStream(mtls_server.url, "restricted", tls=tls, **QUICK) as remote:
        assert remote.push(**_chunk(remote)).index == 0
    base = f"http://127.0.0.1:{mtls_server.http_port}"
    for method, path in (("POST", "/v2/repository/index"), ("GET", "/v2/models/stats")):
        with pytest.raises(urllib.error.HTTPError, match="403"):
            urllib.request.urlopen(urllib.request.Request(base + path, method=method), timeout=10)
        request = urllib.request.Request(base + path, method=method, headers={"triton-admin-key": SECRET})
        assert urllib.request.urlopen(request, timeout=10).status == 200
    assert urllib.request.urlopen(base + "/v2/health/ready", timeout=10).status == 200


def _listening(pid: int) -> list[tuple[str, int]]:
    """The (address, port) of every TCP socket ``pid`` listens on, from /proc (no ss needed)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                address, port = fields[1].split(":")
                found.append((address, int(port, 16)))
    return found


def test_local_triton_listens_on_loopback_only_and_serves_no_metrics(tls_server):
    listening = _listening(tls_server.process.pid)
    assert sorted(port for _, port in listening) == sorted([tls_server.grpc_port, tls_server.http_port])
    # 127.0.0.1, the same mapped into IPv6, ::1 (as /proc writes them)
    loopback = ("0100007F", "0000000000000000FFFF00000100007F", "00000000000000000000000001000000")
    assert all(address in loopback for address, _ in listening), listening


def test_a_missing_or_unreadable_certificate_names_the_file_and_the_option(tmp_path, certs):
    missing = tmp_path / "nope.pem"
    with pytest.raises(UsageError, match=r"--tls-ca.*nope\.pem: no such file"):
        ClientTLS(missing)
    with pytest.raises(UsageError, match=r"--tls-key.*nope\.pem: no such file"):
        ClientTLS(certs.ca, certs.client, missing)
    with pytest.raises(UsageError, match="--tls-cert and --tls-key together"):
        ClientTLS(certs.ca, certs.client)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    with pytest.raises(UsageError, match=r"--grpc-server-cert.*garbage\.pem: not a PEM file"):
        ServerTLS(garbage, certs.server_key)
    with pytest.raises(UsageError, match=r"--grpc-root-cert.*nope\.pem"):
        ServerTLS(certs.server, certs.server_key, client_ca=missing)
    with pytest.raises(UsageError, match=r"--tls-ca.*folder.*cannot be read"):
        ClientTLS(tmp_path.joinpath("folder.pem").mkdir() or tmp_path / "folder.pem")
    result = CliRunner().invoke(run_main, ["--sample", "--server", "localhost:1", "--tls-ca", str(missing)])
    assert result.exit_code == 2 and "--tls-ca" in result.output and "nope.pem" in result.output
    result = CliRunner().invoke(run_main, ["--sample", "--engines", str(tmp_path), "--tls-ca", str(certs.ca)])
    assert result.exit_code == 2 and "go with --server" in result.output


def test_restricted_options_are_checked():
    assert Restricted(SECRET).args() == [
        f"--grpc-restricted-protocol=shared-memory,model-repository,statistics,trace,logging:triton-admin-key={SECRET}",
        f"--http-restricted-api=shared-memory,model-repository,statistics,trace,logging:triton-admin-key={SECRET}"]
    with pytest.raises(UsageError, match="choose from"):
        Restricted(SECRET, groups=("statistics", "admin"))
    with pytest.raises(UsageError, match="header"):
        Restricted(SECRET, header="Admin:Key")
    with pytest.raises(UsageError, match="empty"):
        Restricted("")


DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def _dockerfile_flags(tmp_path: Path, env: dict) -> subprocess.CompletedProcess:
    """deploy/triton/Dockerfile's CMD run by a real shell, with a stand-in tritonserver that prints its arguments."""
    text = (DEPLOY / "triton" / "Dockerfile").read_text().replace("\\\n", " ")
    cmd = re.search(r"(?m)^CMD (exec tritonserver .*)$", text).group(1)
    groups = re.search(r"(?m)^ENV TRITON_ADMIN_GROUPS=(\S+)$", text).group(1)
    fake = tmp_path / "bin" / "tritonserver"
    fake.parent.mkdir(exist_ok=True)
    fake.write_text('#!/bin/sh\nfor a in "$@"; do echo "$a"; done\n')
    fake.chmod(0o755)
    return subprocess.run(["/bin/sh", "-c", cmd], capture_output=True, text=True, timeout=30,
                          env={"PATH": f"{fake.parent}:/usr/bin:/bin", "TRITON_ADMIN_GROUPS": groups, **env})


def test_the_deploy_files_flags_run_on_tritonserver_and_lock_it_down(twin_repository, certs, tmp_path):
    refused = _dockerfile_flags(tmp_path, {})
    assert refused.returncode != 0 and "set TRITON_ADMIN_KEY" in refused.stderr  # no key: no server
    flags = _dockerfile_flags(tmp_path, {"TRITON_ADMIN_KEY": SECRET}).stdout.split()
    k8s = re.findall(r"(?m)^\s+- (--\S+)", (DEPLOY / "k8s" / "mirasol-triton.yaml").read_text())
    assert [f.replace("$(TRITON_ADMIN_KEY)", SECRET) for f in k8s if not f.startswith("--exit-timeout")] == flags
    files = {"/tls/tls.crt": certs.server, "/tls/tls.key": certs.server_key, "/tls/ca.crt": certs.ca}
    flags = [re.sub(r"/tls/\w+\.\w+", lambda m: str(files[m.group(0)]), f) for f in flags
             if not f.startswith("--model-repository=")]
    assert any(f.startswith("--grpc-use-ssl-mutual=true") for f in flags)
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    tls = ClientTLS(certs.ca, certs.client, certs.client_key)
    with LocalTriton(twin_repository, triton_python(), args=flags) as server:
        with RemoteStream(server.url, "deployed", tls=tls, **QUICK) as remote:
            assert remote.push(**_chunk(remote)).index == 0
        _refused(server.url, ClientTLS(certs.ca), "mutual TLS")
        client = grpcclient.InferenceServerClient(server.url, **tls.client_options())
        with pytest.raises(InferenceServerException, match="This protocol is restricted"):
            client.get_inference_statistics(client_timeout=10)
        base = f"http://127.0.0.1:{server.http_port}"
        for path in ("/v2/models/stats", "/v2/models/mirasol/config", "/v2"):  # HTTP: health only, without the key
            with pytest.raises(urllib.error.HTTPError, match="403"):
                urllib.request.urlopen(base + path, timeout=10)
            request = urllib.request.Request(base + path, headers={"triton-admin-key": SECRET})
            assert urllib.request.urlopen(request, timeout=10).status == 200
        assert urllib.request.urlopen(base + "/v2/health/ready", timeout=10).status == 200
