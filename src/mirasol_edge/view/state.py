"""What the ``--view`` page shows, in one thread-safe, bounded store: the run's facts, per-chunk
timings, the answers, the watches' probabilities over time, their events and the latest encoded
frame and mel image. Written by the encoder thread and the ask route; read by the SSE route."""

from __future__ import annotations

import threading
import time
from collections import deque
from pathlib import Path

POINTS = 600  # per-chunk timings the chart keeps
ANSWERS = 100
EVENTS = 200
EVIDENCE = 1000  # evidence files the page may ask for (the newest)


RATE_POINTS = 30  # the real-time factor is over the last this many chunks


def realtime_factor(first: dict, last: dict) -> float | None:
    """Seconds of media streamed per second of wall clock from point ``first`` to ``last`` (above 1:
    faster than real time); None where either lacks its times."""
    if None in (first.get("wall"), first.get("t1"), last.get("wall"), last.get("t1")) or last["wall"] <= first["wall"]:
        return None
    return round((last["t1"] - first["t1"]) / (last["wall"] - first["wall"]), 2)


class ViewState:
    def __init__(self, facts: dict | None = None) -> None:
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self.version = 0  # bumped on every change: the SSE route sends when it moves
        self.facts: dict = dict(facts or {})
        self.timings: deque = deque(maxlen=POINTS)
        self.answers: deque = deque(maxlen=ANSWERS)
        self.events: deque = deque(maxlen=EVENTS)
        self.watches: dict[str, dict] = {}  # name -> {question, answer, probability, history: [[chunk, p]]}
        self.summary: dict | None = None
        self.frame: bytes | None = None
        self.frame_version = 0
        self.mel: bytes | None = None
        self.counters = {"chunks": 0, "frames_encoded": 0, "frames_skipped": 0, "dropped_by_view": 0}
        self._evidence: dict[int, Path] = {}  # id -> a file this run wrote (the only files served)
        self._next_evidence = 0
        self.stopping = threading.Event()

    def _bump(self) -> None:
        self.version += 1
        self._changed.notify_all()

    def set_facts(self, **facts) -> None:
        with self._lock:
            self.facts.update(facts)
            self._bump()

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.counters[name] = self.counters.get(name, 0) + n

    def add_result(self, result: dict, watches: list[tuple[str, str, str | None, float | None]],
                   events: list[dict], live: dict | None = None) -> None:
        """One push: its timings, each watch's standing (name, question, answer, probability), its events,
        and the live facts (chunks seen, dropped chunks, reconnects)."""
        with self._lock:
            self.counters["chunks"] += 1
            self.facts.update(live or {})
            self.timings.append(result)
            rate = realtime_factor(self.timings[-min(len(self.timings), RATE_POINTS)], self.timings[-1])
            if rate is not None:
                self.facts["realtime_factor"] = rate
            for name, question, answer, probability in watches:
                entry = self.watches.setdefault(name, {"question": question, "history": deque(maxlen=POINTS)})
                entry.update(answer=answer, probability=probability)
                entry["history"].append([result["index"], probability])
            for event in events:
                event = dict(event)
                if event.get("evidence"):
                    self._evidence[self._next_evidence] = Path(event["evidence"])
                    event["evidence_id"] = self._next_evidence
                    self._next_evidence += 1
                    while len(self._evidence) > EVIDENCE:
                        del self._evidence[min(self._evidence)]
                self.events.append(event)
            self._bump()

    def set_images(self, frame: bytes | None, mel: bytes | None) -> None:
        with self._lock:
            if frame is not None:
                self.frame, self.frame_version = frame, self.frame_version + 1
            if mel is not None:
                self.mel = mel
            self.counters["frames_encoded"] += 1
            self._bump()

    def add_answer(self, question: str, answer, source: str) -> dict:
        item = {"question": question, "answer": answer.text, "chunks_seen": answer.chunks_seen,
                "first_token_ms": round(answer.first_token_ms, 2), "total_ms": round(answer.total_ms, 2),
                "from": source, "time": time.time()}
        with self._lock:
            self.answers.append(item)
            self._bump()
        return item

    def finish(self, summary: dict) -> None:
        with self._lock:
            self.summary = summary
            self._bump()

    def evidence(self, evidence_id: int) -> Path | None:
        with self._lock:
            return self._evidence.get(evidence_id)

    def wait(self, version: int, timeout: float) -> int:
        """Block until the version moves past ``version`` (or ``timeout`` seconds); the version now."""
        with self._lock:
            if self.version == version:
                self._changed.wait(timeout)
            return self.version

    def snapshot(self) -> dict:
        """JSON-able: everything but the images (the page fetches those by ``frame_version``)."""
        with self._lock:
            return {"version": self.version, "facts": dict(self.facts), "counters": dict(self.counters),
                    "timings": list(self.timings), "answers": list(self.answers), "events": list(self.events),
                    "watches": {name: {**{k: v for k, v in w.items() if k != "history"},
                                       "history": list(w["history"])} for name, w in self.watches.items()},
                    "summary": self.summary, "frame_version": self.frame_version, "has_mel": self.mel is not None}
