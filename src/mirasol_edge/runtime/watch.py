"""Watches: standing questions a stream answers on every chunk, and the events they fire.

A *closed-set* watch (``answers=("yes", "no")``) scores every candidate answer by teacher forcing
(the ``text_score`` engine: all watches due on a push in one call, a row each that holds the
prompt once and every candidate after it; no greedy loop) and takes each candidate's probability
among the candidates. It fires when ``answers[0]``'s probability reaches ``threshold`` for
``min_chunks`` chunks in a row, and fires again (the leading other candidate: "no") when it falls
below ``release``: hysteresis, so a probability hovering at the threshold does not chatter. An
*open* watch (``answers=None``) answers greedily each ``every`` chunks and fires when its answer
changes (the first answer too), once the new answer has held ``min_chunks`` evaluations. After an
event a watch stays quiet for ``cooldown_chunks`` chunks.

A watch's settings and where it stands are plain data (``to_dict`` / ``from_dict``): a stream's
snapshot carries them, so a restored stream watches on where it stopped. Callbacks are not data:
a restored watch has the stream's listeners only.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from mirasol_edge.errors import UsageError

from .components import MAX_CANDIDATES
from .results import check_question

HYSTERESIS = 0.1  # the default release: this far below the threshold (halfway to 0 for a threshold under 0.2)
MAX_WATCHES = 32  # per stream: each costs a share of every push


def slug(text: str) -> str:
    """A name fit for a file, an MQTT topic and a URL: lower-case letters, digits, '.', '_', '-'."""
    return re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-._")[:64] or "watch"


@dataclass(frozen=True)
class WatchEvent:
    """A watch's answer changed. ``probability``: ``answer``'s among the candidates (closed sets);
    ``latency_ms``: from the start of the push that fired it to the event; ``time``: wall clock."""

    watch: Watch
    answer: str
    previous: str | None
    probability: float | None
    chunk_index: int
    t0: float | None
    t1: float | None
    time: float
    latency_ms: float
    stream: str = "stream"
    evidence: str | None = None

    def to_dict(self) -> dict:
        """JSON-able: what the CLI prints and the webhook and MQTT sinks send."""
        return {"stream": self.stream, "watch": self.watch.name, "question": self.watch.question,
                "answer": self.answer, "previous": self.previous, "probability": self.probability,
                "chunk_index": self.chunk_index, "t0": self.t0, "t1": self.t1, "time": self.time,
                "latency_ms": round(self.latency_ms, 3), "evidence": self.evidence}


SETTINGS = ("question", "answers", "name", "every", "threshold", "release", "min_chunks", "cooldown_chunks",
            "evidence_seconds")
STANDING = ("answer", "probability", "streak", "pending", "quiet", "evaluated", "since")


class Watch:
    """One standing question on one stream (made by ``stream.watch``; see the module docstring)."""

    def __init__(self, question: str, answers=None, *, name: str | None = None, every: int = 1,
                 threshold: float = 0.5, release: float | None = None, min_chunks: int = 1,
                 cooldown_chunks: int = 0, evidence_seconds: float = 0.0,
                 on_event: Callable[[WatchEvent], None] | None = None) -> None:
        self.question = check_question(question)
        self.answers = _checked_answers(answers)
        self.name = slug(name if name is not None else question)
        self.every = _whole("every", every, 1)
        self.threshold = _fraction("threshold", threshold)
        self.release = (_fraction("release", release) if release is not None
                        else max(self.threshold - HYSTERESIS, self.threshold / 2))
        if self.release > self.threshold:
            raise UsageError(f"watch {question!r}: release {self.release} is above threshold {self.threshold}; "
                             "the answer must fall below the release to let go")
        self.min_chunks = _whole("min_chunks", min_chunks, 1)
        self.cooldown_chunks = _whole("cooldown_chunks", cooldown_chunks, 0)
        if isinstance(evidence_seconds, bool) or not isinstance(evidence_seconds, (int, float)) \
                or not math.isfinite(evidence_seconds) or not 0 <= evidence_seconds <= 3600:
            raise UsageError(f"watch {question!r}: evidence_seconds must be from 0 to 3600, got {evidence_seconds!r}")
        self.evidence_seconds = float(evidence_seconds)
        self.on_event = on_event
        # where it stands: the answer it last announced, its probability, a streak toward a change
        self.answer: str | None = None
        self.probability: float | None = None
        self.streak = 0
        self.pending: str | None = None  # open watches: the new answer the streak counts
        self.quiet = 0  # chunks of cooldown left
        self.evaluated = 0  # chunks this watch was evaluated on
        self.since: int | None = None  # the chunk index it started on (its `every` counts from here)

    @property
    def closed(self) -> bool:
        return self.answers is not None

    def due(self, chunk_index: int) -> bool:
        if self.since is None:
            self.since = chunk_index
        return (chunk_index - self.since) % self.every == 0

    def __repr__(self) -> str:
        return f"Watch({self.question!r}, {self.answers!r}, name={self.name!r}, answer={self.answer!r})"

    # ---- deciding -----------------------------------------------------------------
    def update_closed(self, probabilities: np.ndarray) -> tuple[str, str | None, float] | None:
        """Candidates' probabilities for one chunk -> (answer, previous, its probability) when it fires."""
        self.evaluated += 1
        p = float(probabilities[0])
        self.probability = p
        active = self.answer == self.answers[0]
        crossing = p < self.release if active else p >= self.threshold
        self.streak = self.streak + 1 if crossing else 0
        if self.quiet > 0:
            self.quiet -= 1
            return None
        if not crossing or (not active and self.streak < self.min_chunks):
            return None
        leader = 1 + int(np.argmax(probabilities[1:]))
        answer = self.answers[leader] if active else self.answers[0]
        return self._fire(answer, float(probabilities[leader]) if active else p)

    def update_open(self, text: str) -> tuple[str, str | None, None] | None:
        self.evaluated += 1
        if text == self.answer:
            self.pending, self.streak = None, 0
            return None
        self.streak = self.streak + 1 if text == self.pending else 1
        self.pending = text
        if self.quiet > 0:
            self.quiet -= 1
            return None
        if self.streak < self.min_chunks:
            return None
        fired = self._fire(text, None)
        self.pending = None
        return fired

    def _fire(self, answer: str, probability: float | None):
        previous, self.answer = self.answer, answer
        self.streak, self.quiet = 0, self.cooldown_chunks
        return answer, previous, probability

    # ---- as data (snapshots, the server) -----------------------------------------------
    def to_dict(self) -> dict:
        return {**{k: getattr(self, k) for k in SETTINGS}, **{k: getattr(self, k) for k in STANDING}}

    @classmethod
    def from_dict(cls, data: dict, where: str = "watch") -> Watch:
        """A watch from ``to_dict``'s data, every setting checked again (it came from a file or a client)."""
        if not isinstance(data, dict) or not isinstance(data.get("question"), str):
            raise UsageError(f"{where}: not a watch")
        answers = data.get("answers")
        watch = cls(data["question"], tuple(answers) if isinstance(answers, list) else answers,
                    **{k: data[k] for k in SETTINGS[2:] if k in data})
        answer, probability = data.get("answer"), data.get("probability")
        if answer is not None and (not isinstance(answer, str) or (watch.closed and answer not in watch.answers)):
            raise UsageError(f"{where}: its answer {answer!r} is none of its answers")
        if probability is not None and not (isinstance(probability, (int, float)) and 0 <= probability <= 1):
            raise UsageError(f"{where}: probability {probability!r} is not in [0, 1]")
        watch.answer, watch.probability = answer, probability
        for key in ("streak", "quiet", "evaluated"):
            setattr(watch, key, _whole(key, data.get(key, 0), 0))
        since = data.get("since")
        watch.since = None if since is None else _whole("since", since, 0)
        pending = data.get("pending")
        watch.pending = pending if isinstance(pending, str) else None
        return watch


def _checked_answers(answers) -> tuple[str, ...] | None:
    if answers is None:
        return None
    if isinstance(answers, str) or not isinstance(answers, (list, tuple)):
        raise UsageError(f"answers must be a list of at least two strings (e.g. ('yes', 'no')), got {answers!r}")
    if len(answers) < 2 or len(answers) > MAX_CANDIDATES:
        raise UsageError(f"answers: a closed-set watch takes 2 to {MAX_CANDIDATES} answers, got {len(answers)}")
    for a in answers:
        if not isinstance(a, str) or not a.strip():
            raise UsageError(f"answers: {a!r} is not a non-empty string")
    if len(set(answers)) != len(answers):
        raise UsageError(f"answers: {list(answers)} has duplicates")
    return tuple(answers)


def _whole(name: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or value > 2**62:
        raise UsageError(f"{name} must be a whole number of at least {low}, got {value!r}")
    return int(value)


def _fraction(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise UsageError(f"{name} must be a probability strictly between 0 and 1, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class ScoreRow:
    """One watch's candidates packed into one text_score row. The prompt comes once (segment 0), then
    each candidate's answer tokens (segment c + 1) at the positions they would have after the prompt;
    a token sees the prompt and its own candidate only, so each answer is scored exactly as if it
    followed the prompt alone, for the prompt's cost once. The prompt's last token scores every
    candidate's first token; each answer token scores the next one (its last: EOS)."""

    tokens: tuple[int, ...]
    positions: tuple[int, ...]
    segments: tuple[int, ...]
    score_at: tuple[int, ...]  # which token's output scores each scored token
    score_tokens: tuple[int, ...]
    candidate: tuple[int, ...]  # whose answer each scored token is

    @property
    def candidates(self) -> int:
        return self.candidate[-1] + 1


def score_row(prompt: list[int], answers: list[list[int]], eos: int) -> ScoreRow:
    tokens, positions, segments = list(prompt), list(range(len(prompt))), [0] * len(prompt)
    at: list[int] = []
    scored: list[int] = []
    owner: list[int] = []
    for c, answer in enumerate(answers):
        previous = len(prompt) - 1
        for k, token in enumerate([*answer, eos]):
            at.append(previous)
            scored.append(token)
            owner.append(c)
            if k < len(answer):  # EOS is only scored, never fed
                tokens.append(token)
                positions.append(len(prompt) + k)
                segments.append(c + 1)
                previous = len(tokens) - 1
    return ScoreRow(tuple(tokens), tuple(positions), tuple(segments), tuple(at), tuple(scored), tuple(owner))


def score_feeds(rows: list[ScoreRow], pad: int) -> dict[str, np.ndarray]:
    """text_score's row inputs for ``rows``, padded to the longest (padding is never scored)."""
    width, scored = max(len(r.tokens) for r in rows), max(len(r.score_at) for r in rows)
    n = len(rows)
    feeds = {"tokens": np.full((n, width), pad, np.int64), "positions": np.zeros((n, width), np.int64),
             "segments": np.zeros((n, width), np.int64), "score_at": np.zeros((n, scored), np.int64),
             "score_tokens": np.full((n, scored), pad, np.int64)}
    for j, row in enumerate(rows):
        for name in feeds:
            values = getattr(row, name)
            feeds[name][j, : len(values)] = values
    return feeds


def candidate_probabilities(logprobs: np.ndarray, row: ScoreRow) -> np.ndarray:
    """One row of score_logprobs -> each candidate's probability among the candidates (its answer's
    tokens and EOS, summed, then a softmax over the candidates)."""
    scores = np.bincount(row.candidate, weights=logprobs[: len(row.candidate)].astype(np.float64),
                         minlength=row.candidates)
    scores -= scores.max()
    e = np.exp(scores)
    return e / e.sum()
