"""TLS on the gRPC connection to Triton, both ends: ``ClientTLS`` for ``RemoteStream`` (and
``mirasol-run --tls-ca/--tls-cert/--tls-key``), ``ServerTLS`` for tritonserver's own flags
(``LocalTriton``; the deploy files pass the same ones).

Triton's security is opt-in: without ``--grpc-use-ssl`` it speaks plaintext gRPC, and without
``--grpc-use-ssl-mutual`` any client that trusts its CA may connect. Each certificate file is
checked when the option is made (it exists, is readable, holds PEM), so a wrong path is an error
that names the file and the option before anything connects.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mirasol_edge.errors import UsageError


def pem_file(path: str | Path, what: str) -> Path:
    """``path`` resolved, once it is known to be a readable PEM file; else a ``UsageError`` naming it and ``what``."""
    path = Path(path).expanduser()
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"{what}: {path}: no such file") from None
    except OSError as exc:
        raise UsageError(f"{what}: {path}: cannot be read ({exc.strerror or exc})") from None
    if b"-----BEGIN " not in data:
        raise UsageError(f"{what}: {path}: not a PEM file (no -----BEGIN line)")
    return path.resolve()


@dataclass(frozen=True)
class ClientTLS:
    """How a client checks the server and, for mutual TLS, proves who it is.

    ``ca``: the CA certificate(s) that signed the server's (or the router's) certificate; None takes
    gRPC's default roots. ``cert`` and ``key``: this client's certificate chain and private key, for a
    server that asks for one (mutual TLS); both or neither."""

    ca: str | Path | None
    cert: str | Path | None = None
    key: str | Path | None = None

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise UsageError("a client certificate needs its key: give --tls-cert and --tls-key together")
        for name, option, what in (("ca", "--tls-ca", "CA certificate"), ("cert", "--tls-cert", "client certificate"),
                                   ("key", "--tls-key", "client key")):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, pem_file(getattr(self, name), f"{what} ({option})"))

    def client_options(self) -> dict:
        """The keyword arguments of ``tritonclient.grpc.InferenceServerClient`` (which takes file paths)."""
        return {"ssl": True, "root_certificates": _str(self.ca), "certificate_chain": _str(self.cert),
                "private_key": _str(self.key)}


@dataclass(frozen=True)
class ServerTLS:
    """tritonserver's gRPC endpoint over TLS: its certificate and key; with ``client_ca``, mutual TLS
    (a client must present a certificate that CA signed)."""

    cert: str | Path
    key: str | Path
    client_ca: str | Path | None = None

    def __post_init__(self) -> None:
        for name, flag, what in (("cert", "--grpc-server-cert", "server certificate"),
                                 ("key", "--grpc-server-key", "server key"),
                                 ("client_ca", "--grpc-root-cert", "client CA certificate")):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, pem_file(getattr(self, name), f"{what} ({flag})"))

    @property
    def mutual(self) -> bool:
        return self.client_ca is not None

    def args(self) -> list[str]:
        """tritonserver's flags (2.51): ``--grpc-use-ssl-mutual`` preempts ``--grpc-use-ssl``."""
        args = ["--grpc-use-ssl=true", f"--grpc-server-cert={self.cert}", f"--grpc-server-key={self.key}"]
        if self.mutual:
            args += ["--grpc-use-ssl-mutual=true", f"--grpc-root-cert={self.client_ca}"]
        return args


def tls_hint(message: str, tls: ClientTLS | None) -> str:
    """What to check when a connection failed in its TLS handshake, or was closed before any answer
    (tritonserver refuses plaintext on a TLS port, and a client without an accepted certificate under
    mutual TLS, by closing the socket; NGINX answers the latter with HTTP 400); "" for other failures."""
    if "with status: 400" in message and tls is not None:  # NGINX answers HTTP 400 to a certificate it refuses
        return ("a TLS router refused this client: it takes only client certificates from its CA "
                f"({'none given: --tls-cert, --tls-key' if tls.cert is None else tls.cert})")
    if "andshake" not in message and "Socket closed" not in message:
        return ""
    if tls is None:
        return "if the server speaks TLS, connect with tls=ClientTLS(ca) (mirasol-run --tls-ca)"
    if "CERTIFICATE_VERIFY_FAILED" in message or "certificate" in message.lower():
        return (f"the server's certificate is not signed by the CA given ({tls.ca or 'the system roots'}) "
                "or not for this host")
    if tls.cert is None:
        return "if the server asks for client certificates (mutual TLS), give one (--tls-cert, --tls-key)"
    return (f"the server did not accept the client certificate {tls.cert} (signed by a CA it does not trust?), "
            "or it does not speak TLS")


def _str(path: Path | None) -> str | None:
    return None if path is None else str(path)
