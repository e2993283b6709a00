"""A remote stream's watches: checked here as in-process (the same ``Watch``), registered on the
server, which scores them on each push (batched across the streams of one ``execute``); each
push's response carries its events, handed here to the stream's listeners.

The server's watches are the truth (they travel in its snapshots); the client keeps their
settings to register them again where a stream is rebuilt from its first chunk."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

from mirasol_edge.errors import UsageError
from mirasol_edge.runtime.watch import Watch, WatchEvent, slug

from . import protocol as p

log = logging.getLogger(__name__)


class RemoteWatches:
    def __init__(self) -> None:
        self.watches: dict[str, Watch] = {}  # by name, as the server last told us
        self.listeners: list[Callable[[WatchEvent], None]] = []

    @staticmethod
    def new(question: str, answers, settings: dict) -> Watch:
        watch = Watch(question, answers, **settings)  # every argument checked before anything is sent
        if watch.evidence_seconds:
            raise UsageError("evidence_seconds: a remote stream's server keeps no chunks to show; evidence is written "
                             "where the stream runs in-process (MirasolStream.keep_evidence)")
        return watch

    def payload(self, watch: Watch) -> str:
        return json.dumps({k: v for k, v in watch.to_dict().items() if k in ("question", "answers", "name", "every",
                           "threshold", "release", "min_chunks", "cooldown_chunks")})

    def answered(self, watches_json: bytes | str, added: Watch | None = None) -> None:
        """The server's list of this stream's watches, after a watch or unwatch."""
        listed = json.loads(watches_json)
        kept = {}
        for data in listed:
            mirror = Watch.from_dict(data, "the server's watch")
            if added is not None and mirror.name == added.name:
                mirror.on_event = added.on_event
            elif data.get("name") in self.watches:
                mirror.on_event = self.watches[data["name"]].on_event
            kept[mirror.name] = mirror
        self.watches = kept

    def events(self, events_json: bytes | str | None, stream: str, t0: float | None, t1: float | None
               ) -> tuple[WatchEvent, ...]:
        """A push's events as ``WatchEvent``s of this client's watches, at the chunk's media times (the
        client's: the server sees none); each listener called (one that raises is logged, and the stream
        goes on)."""
        if not events_json:
            return ()
        out = []
        for data in json.loads(events_json):
            watch = self.watches.get(data["watch"])
            if watch is None:  # restored from a snapshot with watches this client never registered
                watch = self.watches[data["watch"]] = Watch(data["question"], name=data["watch"])
            watch.answer, watch.probability = data["answer"], data.get("probability", watch.probability)
            event = WatchEvent(watch, data["answer"], data["previous"], data["probability"], data["chunk_index"],
                               t0, t1, data["time"], data["latency_ms"], stream, None)
            out.append(event)
            for listener in (watch.on_event, *self.listeners):
                if listener is None:
                    continue
                try:
                    listener(event)
                except Exception:
                    log.exception("watch %r: an on_event listener raised; the stream goes on", watch.name)
        return tuple(out)


def first_item(array) -> bytes | None:
    """A STRING output's one item (None when the server sent none)."""
    return None if array is None or not array.size else array.flat[0]


class WatchingRemote:
    """``RemoteStream``'s watch calls (it provides ``_watches``, ``_input``, ``_infer``, ``_recovering``)."""

    # ---- watching ---------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return slug(str(self.stream_id))

    def watch(self, question: str, answers=None, *, name: str | None = None, every: int = 1, threshold: float = 0.5,
              release: float | None = None, min_chunks: int = 1, cooldown_chunks: int = 0,
              evidence_seconds: float = 0, on_event=None) -> Watch:
        """As ``MirasolStream.watch``, evaluated on the server on every push; the events come back in
        each push's result. No evidence: the server keeps no chunks to show."""
        watch = self._watches.new(question, answers, dict(
            name=name, every=every, threshold=threshold, release=release, min_chunks=min_chunks,
            cooldown_chunks=cooldown_chunks, evidence_seconds=evidence_seconds, on_event=on_event))
        self._send_watch(watch)
        return self._watches.watches[watch.name]

    def _send_watch(self, watch: Watch) -> None:
        inputs = [self._input(p.WATCH, p.strings(self._watches.payload(watch)))]
        out = self._recovering(lambda: self._infer("watch", inputs))
        self._watches.answered(first_item(out.as_numpy(p.WATCHES)), watch)

    def unwatch(self, watch: Watch | str) -> None:
        name = watch if isinstance(watch, str) else watch.name
        out = self._recovering(lambda: self._infer("unwatch", [self._input(p.WATCH, p.strings(name))]))
        self._watches.answered(first_item(out.as_numpy(p.WATCHES)))

    @property
    def watches(self) -> tuple[Watch, ...]:
        return tuple(self._watches.watches.values())

    def on_event(self, listener) -> None:
        self._watches.listeners.append(listener)
