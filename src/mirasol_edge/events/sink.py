"""What every event sink is (``Sink``), and the part the spooling sinks share (``SpoolingSink``).

A spooling sink's ``send`` only appends the event to its on-disk ``Spool`` and wakes its sender
thread: it never waits on the network. It does wait on the local disk: one small file, fsynced
with its folder (measured on a VM's ext4: 8 ms median, 55 ms p99). ``fsync=False`` makes that
0.2 ms and still survives the process crashing (the rename is atomic), not a power cut.
The thread delivers the spool's head, and only then removes it, so delivery is at-least-once: an
event whose delivery succeeded but whose acknowledgement was lost (the connection or the process
died at that moment) is sent again, and that can only ever be the one head in flight.
Nothing overtakes the head, so order is kept.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any, Protocol, runtime_checkable

from mirasol_edge.events.spool import Spool

log = logging.getLogger(__name__)


@runtime_checkable
class Sink(Protocol):
    """Where watch events go: ``send`` takes an event dict (``WatchEvent.to_dict()``)."""

    def send(self, event: dict[str, Any]) -> None: ...

    def close(self, timeout_s: float = 5.0) -> None: ...

    def stats(self) -> dict[str, Any]: ...


class SpoolingSink:
    """A spool plus one sender thread; subclasses write ``_deliver_loop`` (the thread's body)."""

    thread_name = "event-sink"

    def __init__(self, spool_dir: str | os.PathLike[str], *, max_events: int = 10_000,
                 max_bytes: int = 32 * 1024 * 1024, fsync: bool = True):
        self.spool = Spool(spool_dir, max_events=max_events, max_bytes=max_bytes, fsync=fsync)
        self._stop = threading.Event()
        self._counts_lock = threading.Lock()
        self._counts = {"sent": 0, "rejected": 0, "retries": 0}
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)

    def _start(self) -> None:
        """Subclasses call this at the end of their constructor, once everything is set up."""
        self._thread.start()

    def _count(self, key: str, n: int = 1) -> None:
        with self._counts_lock:
            self._counts[key] += n

    def send(self, event: dict[str, Any]) -> None:
        """Queue ``event`` for delivery and return (full spool: dropped and counted in ``stats``)."""
        if self._closed:
            raise RuntimeError(f"{type(self).__name__} is closed")
        self.spool.append(event)  # wakes the sender thread waiting in spool.wait

    def _run(self) -> None:
        try:
            self._deliver_loop()
        except Exception:  # a bug: say so rather than die silently with events piling up
            log.exception("%s: the sender thread failed; events stay in %s", type(self).__name__, self.spool.folder)

    def _deliver_loop(self) -> None:
        raise NotImplementedError

    def _next(self, poll_s: float = 1.0):
        """The head to deliver, waiting for one; ``None`` once the sink is stopping."""
        while not self._stop.is_set():
            entry = self.spool.peek()
            if entry is not None:
                return entry
            self.spool.wait(poll_s)
        return None

    def stats(self) -> dict[str, Any]:
        with self._counts_lock:
            counts = dict(self._counts)
        spool = self.spool.stats()
        return {**counts, "pending": spool["pending"], "dropped": spool["dropped"]}

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop the sender thread (waiting up to ``timeout_s`` for a delivery in flight to end);
        undelivered events stay in the spool folder for the next sink on it."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self.spool.wake()
        self._interrupt()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        if self._thread.is_alive():
            log.warning("%s: the sender thread is still busy after %.1f s; leaving it (events stay spooled)",
                        type(self).__name__, timeout_s)
        self._release()
        self.spool.close()

    def _interrupt(self) -> None:
        """Hook: make a delivery in flight end sooner (called by ``close``)."""

    def _release(self) -> None:
        """Hook: free the subclass's resources (connections) after the thread stopped."""

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
