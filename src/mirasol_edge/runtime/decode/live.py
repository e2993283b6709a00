"""Live sources (cameras, RTSP/HTTP streams): decode in a thread, never hang, never fall behind.

``LiveSource`` wraps ``chunks()``:

- **Timeouts.** Opening and each read are bounded (PyAV's open/read timeouts), and a
  consumer waits at most ``chunk_timeout`` seconds for the next chunk: a dead camera
  raises ``SourceTimeout`` instead of hanging the caller.
- **Reconnects.** When the source fails (or ends, for a live stream), it is reopened up
  to ``max_reconnects`` times in a row, ``reconnect_delay`` seconds apart; each attempt
  is logged and counted. Then ``SourceLost`` says what happened last.
- **Back-pressure.** At most ``queue_chunks`` chunks wait. When the model is slower than
  real time, ``drop="oldest"`` drops the oldest waiting chunk (answers stay current),
  ``drop="newest"`` drops the new one (what was queued stays contiguous), ``drop="none"``
  makes the decoder wait (for files). Every drop is counted in ``stats``.

Chunk indices and times keep counting across reconnects and drops, so a gap in
``Chunk.index`` is exactly the chunks that were dropped or lost: each reconnect resumes
``chunks()`` from the next index and the last chunk's end (the assembler numbers and times them).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from mirasol_edge.errors import UsageError

from .chunks import Chunk, ChunkSpec, DecodeError, _describe, chunks

log = logging.getLogger(__name__)
DROP_POLICIES = ("oldest", "newest", "none")


class SourceTimeout(DecodeError):
    """No chunk arrived within the timeout."""


class SourceLost(DecodeError):
    """The source failed and reconnecting did not bring it back."""


@dataclass
class LiveStats:
    chunks: int = 0  # decoded
    delivered: int = 0
    dropped: int = 0
    reconnects: int = 0
    errors: collections.deque = field(default_factory=lambda: collections.deque(maxlen=10))  # the latest ten

    @property
    def last_error(self) -> str | None:
        return self.errors[-1] if self.errors else None


_END = object()


class LiveSource:
    def __init__(self, source: Any, spec: ChunkSpec, *, queue_chunks: int = 2, drop: str = "oldest",
                 max_reconnects: int = 3, reconnect_delay: float = 1.0, reconnect_on_end: bool = True,
                 open_timeout: float = 10.0, read_timeout: float = 5.0, chunk_timeout: float | None = 30.0,
                 last: str = "drop", decoder: str = "auto", audio: Any = None, audio_offset: float = 0.0) -> None:
        if drop not in DROP_POLICIES:
            raise UsageError(f"drop must be one of {DROP_POLICIES}, got {drop!r}")
        if queue_chunks < 1:
            raise UsageError(f"queue_chunks must be at least 1, got {queue_chunks}")
        self.source, self.spec, self.name = source, spec, _describe(source)
        self.queue_chunks, self.drop = queue_chunks, drop
        self.max_reconnects, self.reconnect_delay = max_reconnects, reconnect_delay
        self.reconnect_on_end = reconnect_on_end
        self.timeouts = (open_timeout, read_timeout)
        self.chunk_timeout, self.last = chunk_timeout, last
        # As chunks() takes them: the decoder, a second audio source and its offset.
        self.decoder, self.audio, self.audio_offset = decoder, audio, audio_offset
        self.stats = LiveStats()
        self._queue: collections.deque = collections.deque()
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._failure: Exception | None = None
        self._thread = threading.Thread(target=self._run, name=f"decode {self.name}", daemon=True)
        self._thread.start()

    # ---- consumer side -------------------------------------------------------------
    def __iter__(self) -> LiveSource:
        return self

    def __next__(self) -> Chunk:
        deadline = None if self.chunk_timeout is None else time.monotonic() + self.chunk_timeout
        with self._cond:
            while not self._queue:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise SourceTimeout(f"{self.name}: no chunk for {self.chunk_timeout:g} s "
                                        f"(last error: {self.stats.last_error or 'none'})")
                self._cond.wait(remaining)
            item = self._queue.popleft()
            self._cond.notify_all()
        if item is _END:
            with self._cond:
                self._queue.appendleft(_END)  # stay ended
            if self._failure is not None:
                raise self._failure
            raise StopIteration
        self.stats.delivered += 1
        return item

    def close(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        self._thread.join(timeout=max(self.timeouts) + 1)

    def __enter__(self) -> LiveSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- decode thread -------------------------------------------------------------
    def _put(self, item) -> None:
        with self._cond:
            if item is not _END:
                while len(self._queue) >= self.queue_chunks and not self._stop.is_set():
                    if self.drop == "oldest":
                        self._queue.popleft()
                        self.stats.dropped += 1
                    elif self.drop == "newest":
                        self.stats.dropped += 1
                        return
                    else:
                        self._cond.wait(0.1)
            self._queue.append(item)
            self._cond.notify_all()

    def _run(self) -> None:
        resume, failures = None, 0  # (index, t0) of the next chunk, once one came
        try:
            while not self._stop.is_set():
                reason = "ended"
                try:
                    for chunk in chunks(self.source, self.spec, last=self.last, timeout=self.timeouts,
                                        decoder=self.decoder, audio=self.audio, audio_offset=self.audio_offset,
                                        resume=resume):
                        if self._stop.is_set():
                            return
                        self.stats.chunks += 1
                        failures = 0  # it works again
                        resume = (chunk.index + 1, chunk.t1)
                        self._put(chunk)
                    if not self.reconnect_on_end:
                        return
                except DecodeError as exc:
                    if not self.max_reconnects and not self.reconnect_on_end:
                        self._failure = exc  # a file: its own error, as chunks() would raise it
                        return
                    reason = str(exc)
                    self.stats.errors.append(reason)
                failures += 1
                if failures > self.max_reconnects:
                    self._failure = SourceLost(
                        f"{self.name}: gave up after {failures} failed attempt(s) in a row "
                        f"({self.max_reconnects} reconnects allowed); last: {reason}"
                    )
                    return
                self.stats.reconnects += 1
                log.warning("%s; reconnect %d/%d in %.1f s", reason if reason != "ended" else f"{self.name}: ended",
                            failures, self.max_reconnects, self.reconnect_delay)
                if self._stop.wait(self.reconnect_delay):
                    return
        except Exception as exc:  # never let the thread die silently: the consumer gets it
            self._failure = exc
        finally:
            self._put(_END)


def decode_ahead(source: Any, spec: ChunkSpec, last: str = "pad", queue_chunks: int = 2, decoder: str = "auto",
                 audio: Any = None, audio_offset: float = 0.0) -> LiveSource:
    """``chunks(source, spec)`` decoded on its own thread, up to ``queue_chunks`` ahead, so the next
    chunk decodes while the engines run this one. Nothing is dropped: the decoder waits for the
    engines. Errors are ``chunks()``'s own. Close it (or use ``with``) when done early."""
    return LiveSource(source, spec, queue_chunks=queue_chunks, drop="none", max_reconnects=0,
                      reconnect_on_end=False, chunk_timeout=None, last=last, decoder=decoder, audio=audio,
                      audio_offset=audio_offset)
