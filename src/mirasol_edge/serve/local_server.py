"""A real ``tritonserver`` on this machine, for the CPU twin: the binary that nvidia-pytriton
ships (Triton 2.51, Python backend only), started on free localhost ports.

Production serves the repository from NVIDIA's Triton container; this is for the tests, the
benchmark and a laptop. The server's Python is its own environment (``MIRASOL_TRITON_PYTHON``,
default ``.venv-triton/bin/python``) with nvidia-pytriton, numpy < 2 (the backend stub's
numpy: with numpy 2 outputs came back empty) and mirasol-edge installed. Two more things the
stub needs, found the hard way: that interpreter's libpython on ``LD_LIBRARY_PATH``, and its
bin folder first on ``PATH``.
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
from pathlib import Path

from mirasol_edge.errors import MirasolError

DEFAULT_PYTHON = Path(".venv-triton/bin/python")
_PROBE = """import json, sys, sysconfig, pathlib, pytriton
root = pathlib.Path(pytriton.__file__).parent
print(json.dumps({"dist": str(root / "tritonserver"), "libs": str(root.parent / "nvidia_pytriton.libs"),
                  "version": "%d.%d" % sys.version_info[:2], "libdir": sysconfig.get_config_var("LIBDIR")}))"""


class LocalServerError(MirasolError, RuntimeError):
    exit_code = 9


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
    def __init__(self, repo: str | Path, python: str | Path | None = None) -> None:
        self.repo = Path(repo).resolve()
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
        return f"localhost:{self.grpc_port}"

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
        command = [str(server / "bin" / "tritonserver"), f"--model-repository={self.repo}",
                   f"--backend-directory={server / 'backends'}", f"--cache-directory={server / 'caches'}",
                   f"--grpc-port={self.grpc_port}", f"--http-port={self.http_port}", "--allow-metrics=false",
                   "--exit-timeout-secs=5"]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                            start_new_session=True)
        self._wait_ready(timeout_s)
        return self

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        url = f"http://127.0.0.1:{self.http_port}/v2/health/ready"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise LocalServerError(f"tritonserver exited ({self.process.returncode}) while loading {self.repo}:\n"
                                       + self.log_tail())
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
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
