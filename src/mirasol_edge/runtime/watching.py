"""A stream's watches: registering them against its engines' limits, deciding on each push, the
evidence ring, and handing events to listeners.

The closed-set watches of a push group are scored by the engines in one call while the group's
state is at hand (``MirasolEngines._score_watches``) and decided here (``decide``). Open watches
answer greedily once the push has swapped its state in (``finish``), and so do the evidence and
the listeners: a listener that raises is logged and the stream goes on.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from mirasol_edge.errors import UsageError

from .results import ChunkResult
from .tokenizer import prompt_ids
from .watch import MAX_WATCHES, Watch, WatchEvent, score_row

if TYPE_CHECKING:
    from .stream import MirasolStream

log = logging.getLogger(__name__)
Listener = Callable[[WatchEvent], None]


class Watching:
    def __init__(self, stream: MirasolStream) -> None:
        self.stream = stream
        self.watches: list[Watch] = []
        self.listeners: list[Listener] = []
        self.lock = threading.Lock()  # the list of watches (pushes read it, watch/unwatch change it)
        self.evidence = None  # an EvidenceStore, once keep_evidence names a folder
        self.ring = None  # the last chunks, as long as the longest evidence_seconds asks

    # ---- registering --------------------------------------------------------------------
    def add(self, watch: Watch) -> Watch:
        engines = self.stream.engines
        tok, max_q = engines.tokenizer, engines.dir.max_question_tokens
        if len(tok.encode(watch.question)) > max_q:
            raise UsageError(f"watch {watch.question[:60]!r}: {len(tok.encode(watch.question))} tokens, more than the "
                             f"engines' max_question_tokens ({max_q}); a watch's question is never cut")
        if watch.closed:
            longest = engines.dir.max_answer_tokens - 1
            for answer in watch.answers:
                if len(tok.encode(answer)) > longest:
                    raise UsageError(f"watch {watch.question!r}: answer {answer!r} is {len(tok.encode(answer))} tokens; "
                                     f"these engines score answers of at most {longest}")
            watch._row = score_row(prompt_ids(tok, watch.question, max_q), [tok.encode(a) for a in watch.answers],
                                   tok.eos_id)
        if watch.evidence_seconds and self.evidence is None:
            raise UsageError(f"watch {watch.question!r}: evidence_seconds={watch.evidence_seconds} needs a folder: "
                             "call stream.keep_evidence(folder) first (mirasol-run: --evidence DIR)")
        with self.lock:
            if len(self.watches) >= MAX_WATCHES:
                raise UsageError(f"this stream has {MAX_WATCHES} watches, the most one stream takes; unwatch one first")
            if any(w.name == watch.name for w in self.watches):
                raise UsageError(f"this stream already has a watch named {watch.name!r}; give another name=")
            self.watches = [*self.watches, watch]  # a new list: a push in flight keeps the one it read
        self._size_ring()
        return watch

    def remove(self, watch: Watch | str) -> None:
        with self.lock:
            kept = [w for w in self.watches if w is not watch and w.name != watch]
            if len(kept) == len(self.watches):
                raise UsageError(f"no watch {getattr(watch, 'name', watch)!r} on this stream")
            self.watches = kept
        self._size_ring()

    def keep_evidence(self, folder: str | Path, max_bytes: int | None = None) -> None:
        from .evidence import EvidenceStore

        self.evidence = EvidenceStore(folder, self.stream.name, **({} if max_bytes is None else {"max_bytes": max_bytes}))
        self._size_ring()

    def _size_ring(self) -> None:
        seconds = max((w.evidence_seconds for w in self.watches), default=0.0)
        if not seconds or self.evidence is None:
            self.ring = None
            return
        from .evidence import EvidenceRing

        chunk_seconds = self.stream.spec.chunk_seconds
        if self.ring is None or self.ring.seconds != seconds + chunk_seconds:  # the window and the chunk that fired
            self.ring = EvidenceRing(seconds + chunk_seconds, chunk_seconds)

    # ---- on each push -------------------------------------------------------------------
    def decide(self, result: ChunkResult, scored: list, start: float) -> ChunkResult:
        """The closed-set watches' decisions for this push (the engines scored them)."""
        events = []
        for watch, probabilities in scored:
            fired = watch.update_closed(probabilities)
            if fired is not None:
                events.append(self._event(watch, fired, result, start))
        return replace(result, events=tuple(events)) if events else result

    def finish(self, result: ChunkResult, chunk, start: float) -> ChunkResult:
        """Open watches, evidence and listeners, once the push's state is in."""
        events = list(result.events)
        for watch in self.watches:
            if not watch.closed and watch.due(result.index):
                fired = watch.update_open(self.stream.ask(watch.question).text)
                if fired is not None:
                    events.append(self._event(watch, fired, result, start))
        if self.ring is not None:
            self.ring.add(chunk)
        if not events:
            return result
        events = [self._with_evidence(e) for e in events]
        for event in events:
            for listener in (event.watch.on_event, *self.listeners):
                if listener is None:
                    continue
                try:
                    listener(event)
                except Exception:  # a listener's failure is its own: the stream goes on
                    log.exception("watch %r: an on_event listener raised; the stream goes on", event.watch.name)
        return replace(result, events=tuple(events))

    def _event(self, watch: Watch, fired, result: ChunkResult, start: float) -> WatchEvent:
        answer, previous, probability = fired
        return WatchEvent(watch, answer, previous, probability, result.index, result.t0, result.t1, time.time(),
                          (time.perf_counter() - start) * 1e3, self.stream.name)

    def _with_evidence(self, event: WatchEvent) -> WatchEvent:
        if not event.watch.evidence_seconds or self.ring is None:
            return event
        spec = self.stream.spec
        keep = math.ceil(event.watch.evidence_seconds / spec.chunk_seconds - 1e-9) + 1  # the window and the chunk that fired
        try:
            path = self.evidence.save(self.ring.chunks()[-keep:], event.watch.name, event.chunk_index, spec.fps,
                                      spec.sample_rate)
        except Exception:  # evidence is for people: a full disk must not stop the stream or lose the event
            log.exception("watch %r: evidence for chunk %d could not be written", event.watch.name, event.chunk_index)
            return event
        return replace(event, evidence=str(path))

    # ---- as data ------------------------------------------------------------------------
    def to_data(self) -> list[dict]:
        return [w.to_dict() for w in self.watches]

    def load(self, data: list[dict] | None, where: str) -> None:
        """The watches of a snapshot replace these (None: the snapshot carried none; these stay)."""
        if data is None:
            return
        restored = [Watch.from_dict(d, f"{where}: watch {i}") for i, d in enumerate(data)]
        with self.lock:
            self.watches = []
        for watch in restored:
            self.add(watch)
