"""Who may open which streams on a server: the access file and its check.

``ACCESS.toml`` (given to ``mirasol-build triton --access``) names each client with its token and
the stream IDs it may open, as glob patterns::

    [clients.yard-cameras]
    token = "a long random secret"   # 24+ characters: python -c "import secrets; print(secrets.token_urlsafe())"
    streams = ["yard-*", "gate"]

The repository keeps only a salted hash of each token (``access.json`` beside the stream model),
never the token. The stream model checks the token and the stream ID on every request; a refusal
says the same whatever the reason (no token, a wrong one, a stream not allowed), so it never
tells whether a stream exists. Without an access file a repository is a single-tenant lab
setup: any client that reaches the server may open any stream (the stream keys still keep one
client's stream from being used by another: see ``stream_model``).
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import json
import os
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path

from mirasol_edge.errors import MirasolError, UsageError

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10 (JetPack 6)
    import tomli as tomllib

ACCESS_FILE = "access.json"
MIN_TOKEN_CHARS = 24
ITERATIONS = 200_000  # PBKDF2-SHA256: a leaked access.json does not give the tokens away cheaply
MAX_CLIENTS = 4096
MAX_PATTERNS = 256
MAX_TOKEN_BYTES = 1024


class AccessDenied(MirasolError, PermissionError):
    """A request for a stream its client may not use; the message never says whether it exists."""

    exit_code = 11


@dataclass(frozen=True)
class Client:
    name: str
    salt: str  # hex
    digest: str  # hex PBKDF2-SHA256 of the token
    streams: tuple[str, ...]

    def allows(self, stream_id: str) -> bool:
        return any(fnmatch.fnmatchcase(stream_id, pattern) for pattern in self.streams)


def _digest(token: str, salt: bytes) -> str:
    return hashlib.pbkdf2_hmac("sha256", token.encode("utf-8"), salt, ITERATIONS).hex()


def read_access_file(path: str | Path) -> list[Client]:
    """``ACCESS.toml`` checked whole (every error names the file and the key), tokens hashed."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the access file ({exc.strerror or exc})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: not valid TOML ({exc})") from None
    unknown = sorted(set(data) - {"clients"})
    if unknown:
        raise UsageError(f"{path}: unknown table {unknown[0]!r}; an access file has [clients.NAME] tables only")
    clients = data.get("clients")
    if not isinstance(clients, dict) or not clients:
        raise UsageError(f"{path}: no [clients.NAME] tables: name at least one client")
    if len(clients) > MAX_CLIENTS:
        raise UsageError(f"{path}: {len(clients)} clients; at most {MAX_CLIENTS}")
    out, tokens = [], set()
    for name, entry in clients.items():
        where = f"{path}: clients.{name}"
        if not isinstance(entry, dict):
            raise UsageError(f"{where}: expected a table with token and streams")
        extra = sorted(set(entry) - {"token", "streams"})
        if extra:
            raise UsageError(f"{where}.{extra[0]}: unknown key (a client has token and streams)")
        token, streams = entry.get("token"), entry.get("streams")
        if not isinstance(token, str) or len(token) < MIN_TOKEN_CHARS or len(token.encode()) > MAX_TOKEN_BYTES:
            raise UsageError(f"{where}.token: a string of {MIN_TOKEN_CHARS} to {MAX_TOKEN_BYTES} characters is "
                             "needed (python -c \"import secrets; print(secrets.token_urlsafe())\")")
        if token in tokens:
            raise UsageError(f"{where}.token: the same token as another client; give each its own")
        tokens.add(token)
        if (not isinstance(streams, list) or not streams or len(streams) > MAX_PATTERNS
                or not all(isinstance(s, str) and s.strip() for s in streams)):
            raise UsageError(f"{where}.streams: a list of 1 to {MAX_PATTERNS} stream ID patterns is needed "
                             '(e.g. ["yard-*", "gate"])')
        salt = os.urandom(16)
        out.append(Client(name, salt.hex(), _digest(token, salt), tuple(streams)))
    return out


def access_json(clients: list[Client]) -> dict:
    return {"format": "mirasol-access/1", "clients": [
        {"name": c.name, "salt": c.salt, "digest": c.digest, "streams": list(c.streams)} for c in clients]}


class AccessCheck:
    """The stream model's side: a token and a stream ID -> the client, or ``AccessDenied``.
    Tokens that passed are remembered by their SHA-256 (bounded), so PBKDF2 runs once per token."""

    def __init__(self, data: dict | None) -> None:
        self.single_tenant = data is None
        self.clients = [Client(c["name"], c["salt"], c["digest"], tuple(c["streams"]))
                        for c in (data or {}).get("clients", [])]
        self._known: dict[str, Client | None] = {}

    @classmethod
    def load(cls, folder: Path) -> AccessCheck:
        path = folder / ACCESS_FILE
        return cls(json.loads(path.read_text()) if path.is_file() else None)

    def check(self, token: str | None, stream_id: str) -> str | None:
        """The client's name (None in a single-tenant setup), or ``AccessDenied``."""
        if self.single_tenant:
            return None
        client = self._client(token) if token else None
        if client is None or not client.allows(stream_id):
            raise AccessDenied(f"stream {stream_id!r}: access denied (a missing or wrong token, or a stream this "
                               "client may not use)")
        return client.name

    def _client(self, token: str) -> Client | None:
        key = hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()
        if key not in self._known:
            found = next((c for c in self.clients
                          if hmac.compare_digest(_digest(token, bytes.fromhex(c.salt)), c.digest)), None)
            if len(self._known) >= 1024:  # bounded, like everything the server keeps
                self._known.clear()
            self._known[key] = found
        return self._known[key]


def new_stream_key() -> str:
    """128 bits the server mints when a stream opens; only its opener has them."""
    return secrets.token_hex(16)


def same_key(given: str | None, held: str) -> bool:
    return bool(given) and hmac.compare_digest(given.encode(), held.encode())
