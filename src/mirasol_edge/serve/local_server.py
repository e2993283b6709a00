"""A real ``tritonserver`` on this machine, for the CPU twin: the binary that nvidia-pytriton
ships (Triton 2.51, Python backend only), started on free localhost ports.

Production serves the repository from NVIDIA's Triton container; this is for the tests, the
benchmark and a laptop. The server's Python is its own environment (``MIRASOL_TRITON_PYTHON``,
default ``.venv-triton/bin/python``) with nvidia-pytriton, numpy < 2 (the backend stub's
numpy: with numpy 2 outputs came back empty) and mirasol-edge installed. Two more things the
stub needs, found the hard way: that interpreter's libpython on ``LD_LIBRARY_PATH``, and its
bin folder first on ``PATH``.

Triton's security is opt-in, so this server is locked down by default: every endpoint (gRPC,
HTTP) binds 127.0.0.1 unless ``host`` says otherwise, metrics are off, and the repository is
fixed (``--model-control-mode=none``). ``tls`` (``ServerTLS``) puts gRPC on TLS or mutual TLS;
``restricted`` (``Restricted``) makes API groups need a shared header value, as the deploy files do
for the admin endpoints.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mirasol_edge.errors import MirasolError, UsageError

from .tls import ServerTLS

__all__ = ["ADMIN_GROUPS", "GRPC_HEADER_PREFIX", "GROUPS", "LocalServerError", "LocalTriton", "Restricted", "ServerTLS",
           "free_port", "server_python"]

DEFAULT_PYTHON = Path(".venv-triton/bin/python")
_PROBE = """import json, sys, sysconfig, pathlib, pytriton
root = pathlib.Path(pytriton.__file__).parent
print(json.dumps({"dist": str(root / "tritonserver"), "libs": str(root.parent / "nvidia_pytriton.libs"),
                  "version": "%d.%d" % sys.version_info[:2], "libdir": sysconfig.get_config_var("LIBDIR")}))"""


# Triton 2.51's API groups (--grpc-restricted-protocol, --http-restricted-api).
GROUPS = ("health", "metadata", "inference", "shared-memory", "model-config", "model-repository", "statistics",
          "trace", "logging")
# What only an operator should reach. RemoteStream uses inference and model-config (its open
# reads the stream model's config), a router's and Kubernetes' probes use health: those stay open.
ADMIN_GROUPS = ("shared-memory", "model-repository", "statistics", "trace", "logging")
GRPC_HEADER_PREFIX = "triton-grpc-protocol-"  # Triton prepends it to a restricted key on gRPC (measured, 2.51)


class LocalServerError(MirasolError, RuntimeError):
    exit_code = 9


@dataclass(frozen=True)
class Restricted:
    """API groups that answer only requests carrying the header ``value`` (one shared secret, not per
    client): tritonserver's ``--grpc-restricted-protocol`` and ``--http-restricted-api``, whose syntax
    is ``<group>,<group>:<key>=<value>``. Over HTTP the header is ``key`` itself; over gRPC Triton 2.51
    expects ``triton-grpc-protocol-<key>`` (``grpc_header``). Refusals: HTTP 403, gRPC UNAVAILABLE
    "This protocol is restricted"."""

    value: str
    header: str = "triton-admin-key"
    groups: tuple[str, ...] = ADMIN_GROUPS

    def __post_init__(self) -> None:
        object.__setattr__(self, "groups", tuple(self.groups))
        unknown = sorted(set(self.groups) - set(GROUPS))
        if unknown or not self.groups:
            raise UsageError(f"restricted groups {unknown or '(none)'}: choose from {', '.join(GROUPS)}")
        if not self.header or any(c in self.header for c in ":=, ") or self.header != self.header.lower():
            raise UsageError(f"restricted header {self.header!r}: a lower-case header name without ':', '=', ',' or spaces")
        if not self.value or any(c.isspace() for c in self.value):
            raise UsageError("the restricted header's value is empty or has spaces")

    @property
    def grpc_header(self) -> str:
        return GRPC_HEADER_PREFIX + self.header

    def args(self) -> list[str]:
        spec = f"{','.join(self.groups)}:{self.header}={self.value}"
        return [f"--grpc-restricted-protocol={spec}", f"--http-restricted-api={spec}"]


def server_python() -> Path | None:
    """The server environment's interpreter, or None where there is none."""
    path = Path(os.environ.get("MIRASOL_TRITON_PYTHON", DEFAULT_PYTHON))
    return path if path.is_file() else None


def free_port() -> int:
    """A localhost TCP port nobody listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalTriton:
    """``host``: the address every endpoint binds (127.0.0.1: this machine only; 0.0.0.0: every
    interface, as in a container). ``tls``: gRPC over TLS (mutual with ``ServerTLS.client_ca``).
    ``restricted``: groups behind a header value (one ``Restricted`` or several). ``args``: more
    tritonserver flags, appended."""

    def __init__(self, repo: str | Path, python: str | Path | None = None, *, host: str = "127.0.0.1",
                 tls: ServerTLS | None = None, restricted: Restricted | Sequence[Restricted] = (),
                 args: Sequence[str] = ()) -> None:
        self.repo = Path(repo).resolve()
        self.host, self.tls, self.extra_args = host, tls, list(args)
        self.restricted = [restricted] if isinstance(restricted, Restricted) else list(restricted)
        python = Path(python) if python else server_python()
        if python is None:
            raise LocalServerError(f"no server Python: set MIRASOL_TRITON_PYTHON or create {DEFAULT_PYTHON} "
                                   "(make triton-venv)")
        self.python = python
        self.process: subprocess.Popen | None = None
        self.workdir = Path(tempfile.mkdtemp(prefix="mirasol-triton-"))
        self.log_path = self.workdir / "server.log"
        self.grpc_port = self.http_port = 0

    @property
    def url(self) -> str:
        """Where clients connect (gRPC): the bound address (loopback for a wildcard bind). Not
        ``localhost``: it may resolve to ::1 first, where a server bound to 127.0.0.1 is not, and
        gRPC then reports that refusal instead of the real one (a TLS certificate refused)."""
        return self._address(self.grpc_port)

    def _address(self, port: int) -> str:
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def __enter__(self) -> LocalTriton:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def start(self, timeout_s: float = 120.0) -> LocalTriton:
        probe = subprocess.run([str(self.python), "-c", _PROBE], capture_output=True, text=True, timeout=60)
        if probe.returncode != 0:
            raise LocalServerError(f"{self.python}: no nvidia-pytriton there ({probe.stderr.strip()[-300:]})")
        info = json.loads(probe.stdout)
        server = self.workdir / "tritonserver"
        if not server.exists():  # the stub for the server Python's version goes beside the backend
            shutil.copytree(info["dist"], server, ignore=shutil.ignore_patterns("python_backend_stubs"))
            stub = Path(info["dist"]) / "python_backend_stubs" / info["version"] / "triton_python_backend_stub"
            shutil.copy2(stub, server / "backends" / "python" / stub.name)
        env = dict(os.environ)
        env["PATH"] = f"{self.python.parent}:{env.get('PATH', '')}"
        env["LD_LIBRARY_PATH"] = ":".join(filter(None, [info["libdir"], info["libs"], env.get("LD_LIBRARY_PATH")]))
        if not self.grpc_port:  # a restart keeps its ports, as a real server behind a fixed address would
            self.grpc_port, self.http_port = free_port(), free_port()
        command = [str(server / "bin" / "tritonserver"), *self.flags(),
                   f"--backend-directory={server / 'backends'}", f"--cache-directory={server / 'caches'}"]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                            start_new_session=True)
        self._wait_ready(timeout_s)
        return self

    def flags(self) -> list[str]:
        """tritonserver's flags for this server (the binary's own folders aside)."""
        flags = [f"--model-repository={self.repo}", "--model-control-mode=none", f"--grpc-address={self.host}",
                 f"--grpc-port={self.grpc_port}", f"--http-address={self.host}", f"--http-port={self.http_port}",
                 "--allow-metrics=false", "--exit-timeout-secs=5"]
        if self.tls:
            flags += self.tls.args()
        for restricted in self.restricted:
            flags += restricted.args()
        return flags + self.extra_args

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        url = f"http://{self._address(self.http_port)}/v2/health/ready"
        headers = {r.header: r.value for r in self.restricted if "health" in r.groups}
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise LocalServerError(f"tritonserver exited ({self.process.returncode}) while loading {self.repo}:\n"
                                       + self.log_tail())
            try:
                with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.5)
        self.stop()
        raise LocalServerError(f"tritonserver not ready after {timeout_s:g} s serving {self.repo}:\n" + self.log_tail())

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def kill(self) -> None:
        """As a crash would: no goodbye to the clients."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()
