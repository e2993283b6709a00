"""``View``: the page's state, its encoder thread and uvicorn on a background thread, started
before the first push and shut down cleanly (SSE streams end first, then the server)."""

from __future__ import annotations

import socket
import threading
import time

from mirasol_edge.errors import UsageError

from .app import make_app
from .frames import Feed
from .state import ViewState

LOOPBACK = ("127.0.0.1", "localhost", "::1")


class View:
    def __init__(self, stream, host: str, port: int, token: str | None = None, facts: dict | None = None,
                 rate: float = 4.0) -> None:
        import uvicorn  # here: only a run with --view needs it

        self.stream, self.host, self.port = stream, host, port
        self.state = ViewState(facts)
        self.feed = Feed(self.state, rate)
        app = make_app(self.state, stream, token, self.feed.mel_type)
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                                lifespan="off", timeout_graceful_shutdown=3)
        self._server = uvicorn.Server(config)
        self._server.install_signal_handlers = lambda: None  # Ctrl-C stays the run's own
        self._thread = threading.Thread(target=self._serve, name="mirasol-view-http", daemon=True)

    def _serve(self) -> None:
        try:
            self._server.run()
        except SystemExit:  # uvicorn's way of saying it could not bind: start() reports it
            pass

    def start(self, timeout: float = 10.0) -> View:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.feed.close()
                raise UsageError(f"--view {self.host}:{self.port}: cannot serve there (in use, or not an "
                                 "address of this machine?)")
            time.sleep(0.02)
        if self.port == 0:  # a free port was asked for: which one it got
            self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        host = self.host if self.host not in ("0.0.0.0", "::") else socket.gethostname()
        return f"http://{'[' + host + ']' if ':' in host else host}:{self.port}/"

    def push(self, chunk, result, wait_ms: float | None = None, **live) -> None:
        """From the push loop: references handed over, the watches' standing and the source's counts
        (dropped chunks, reconnects, decoder) read: a few attributes. ``wait_ms``: how long the loop
        waited for this chunk (the decode, where decoding is the bottleneck)."""
        watches = [(w.name, w.question, w.answer, w.probability) for w in getattr(self.stream, "watches", ())]
        self.feed.put(chunk, result, (watches, {"chunks_seen": self.stream.chunks_seen, **live}),
                      {"decode_ms": None if wait_ms is None else round(wait_ms, 3), "wall": time.monotonic()})

    def answer(self, question: str, answer) -> None:
        self.state.add_answer(question, answer, "run")

    def close(self, timeout: float = 5.0) -> None:
        self.feed.close(timeout)
        self.state.stopping.set()  # the SSE streams end within a poll
        self._server.should_exit = True
        self._thread.join(timeout)
