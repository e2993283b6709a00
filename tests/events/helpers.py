"""What the events tests share: events, bounded waits, a real HTTP receiver, free ports."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def event(i: int, stream: str = "cam-7", watch: str = "door") -> dict:
    """An event as ``WatchEvent.to_dict()`` makes it; the answer flips every chunk."""
    answer, previous = ("yes", "no") if i % 2 == 0 else ("no", "yes")
    return {"stream": stream, "watch": watch, "question": "is anyone at the door?", "answer": answer,
            "previous": previous if i else None, "probability": round(0.5 + (i % 50) / 100, 2),
            "chunk_index": i, "t0": float(i), "t1": float(i + 1), "time": 1764630000.123 + i,
            "latency_ms": 3.2, "evidence": None}


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.02)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Receiver:
    """A webhook receiver on 127.0.0.1: records every POST (the attempts) and answers ``respond(event)``.

    ``hold``, when set to an Event, makes each request wait (bounded) until it is set."""

    def __init__(self, port: int | None = None):
        self.port = port or free_port()
        self.attempts: list[tuple[dict, str | None]] = []  # (event, Content-Type), every request
        self.delivered: list[dict] = []  # events answered 2xx
        self.respond: Callable[[dict], int] = lambda event: 200
        self.hold: threading.Event | None = None
        self.in_request = threading.Event()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                payload = json.loads(body)
                receiver.in_request.set()
                if receiver.hold is not None:
                    receiver.hold.wait(15)
                status = receiver.respond(payload)
                with receiver._lock:
                    receiver.attempts.append((payload, self.headers.get("Content-Type")))
                    if 200 <= status < 300:
                        receiver.delivered.append(payload)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            if self.hold is not None:
                self.hold.set()
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(5)
            self._server = None

    def chunks(self) -> list[int]:
        with self._lock:
            return [e["chunk_index"] for e in self.delivered]

    def attempted(self) -> list[int]:
        with self._lock:
            return [e["chunk_index"] for e, _ in self.attempts]
