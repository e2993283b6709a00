"""The stream: push chunks for hours, ask questions at any moment, at constant cost per push.

Each ``MirasolStream`` is one camera's state on the device, over shared ``MirasolEngines``
(``engines.py``). A push runs the chunk encoder and one AR step against that state and swaps the
new state in; nothing grows with the length of the video, on the device or in Python.

What ``ask`` sees: the state as of the last *completed* push. A push running in another
thread is not waited for beyond its state swap; ``Answer.chunks_seen`` says which state
answered. Questions longer than the engines' maximum are cut to it with a warning
(``Answer.truncated`` is set). Asking before any push answers from the empty state.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from mirasol_edge.errors import UsageError

from .decode.types import ChunkSpec
from .engines import MirasolEngines
from .generate import greedy
from .results import (
    Answer,
    ChunkResult,
    ChunkShapeError,
    PushTimings,
    RawChunk,
    check_max_new_tokens,
    check_question,
    preview,
)
from .snapshot import (
    read_snapshot,
    read_snapshot_bytes,
    read_snapshot_metadata,
    snapshot_bytes,
    snapshot_engine_dir,
    write_snapshot,
)
from .stream_protocol import Stream
from .tokenizer import prompt_ids
from .watch import Watch, WatchEvent, slug
from .watching import Watching

__all__ = ["Answer", "ChunkResult", "ChunkShapeError", "MirasolEngines", "MirasolStream", "PushTimings", "RawChunk",
           "Stream", "Watch", "WatchEvent"]
log = logging.getLogger(__name__)
_WARNED: set[int] = set()  # hashes of questions already warned about being cut (at most 64)


class MirasolStream:
    """One video's state on the device; push chunks, ask questions, snapshot and restore."""

    def __init__(self, engines: MirasolEngines, owns_engines: bool = False, name: str = "stream") -> None:
        self.engines = engines
        self.name = slug(name)  # names its events, their evidence files and MQTT topics
        self._owns_engines = owns_engines
        backend = engines.backend
        # Pushes and questions each run on their own lane, so an ask never lands in a push's capture.
        self._push = engines.push_path()
        self._ask_lane = backend.lane()
        self._prefill = backend.runner("text_prefill", self._ask_lane)
        self._decode = backend.runner("text_decode", self._ask_lane)
        self._lock = threading.Lock()  # the state and the runners that write it
        self._ask_lock = threading.Lock()  # the text runners
        self._ask_uploads: dict = {}  # the question path's input buffers, reused
        self._state = {name: backend.upload(a) for name, a in engines.initial_state.items()}
        self.chunks_seen = 0
        self.closed = False
        self._watching = Watching(self)

    @property
    def spec(self) -> ChunkSpec:
        """How to cut chunks for these engines (frames, size, audio)."""
        return self.engines.spec

    # ---- opening -------------------------------------------------------------------
    @classmethod
    def open(cls, engine_dir: str | Path, backend: str = "auto", device: str = "auto", *, name: str = "stream",
             **options) -> MirasolStream:
        return cls(MirasolEngines(engine_dir, backend, device, **options), owns_engines=True, name=name)

    def __enter__(self) -> MirasolStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        with self._ask_lock, self._lock:
            if self.closed:
                return
            self._state.clear()
            for runner in (self._prefill, self._decode):
                runner.close()
            if self._push is not self.engines._shared:  # its own (batch 1): the engines close a shared one
                self._push.close()
            self.closed = True
        if self._owns_engines:
            self.engines.close()

    def _check_open(self) -> None:
        if self.closed:
            raise UsageError("this stream is closed")

    # ---- pushing -------------------------------------------------------------------
    def push(self, chunk=None, *, frames: np.ndarray | None = None, mel: np.ndarray | None = None) -> ChunkResult:
        """Push a decoded ``Chunk`` (or ``frames=[F,H,W,3]``, ``mel=[T,n_mels]``) and advance the state."""
        if chunk is None:
            chunk = RawChunk(frames, mel)
        start = time.perf_counter()
        return self._finish(self.engines._push_group([self], [chunk])[0], chunk, start)

    # ---- watching ------------------------------------------------------------------
    def watch(self, question: str, answers=None, *, name: str | None = None, every: int = 1, threshold: float = 0.5,
              release: float | None = None, min_chunks: int = 1, cooldown_chunks: int = 0,
              evidence_seconds: float = 0, on_event=None) -> Watch:
        """A standing question answered on every ``every``-th push from now on (``runtime.watch``):
        closed-set with ``answers`` (its first is the one watched for), open without. Its events come
        back in each push's ``ChunkResult.events`` and go to ``on_event`` and the stream's listeners."""
        self._check_open()
        return self._watching.add(Watch(question, answers, name=name, every=every, threshold=threshold,
                                        release=release, min_chunks=min_chunks, cooldown_chunks=cooldown_chunks,
                                        evidence_seconds=evidence_seconds, on_event=on_event))

    def unwatch(self, watch: Watch | str) -> None:
        """Stop a watch (the ``Watch`` or its name)."""
        self._watching.remove(watch)

    @property
    def watches(self) -> tuple[Watch, ...]:
        return tuple(self._watching.watches)

    def on_event(self, listener) -> None:
        """Call ``listener(event)`` for every event of every watch of this stream (restored ones too)."""
        self._watching.listeners.append(listener)

    def keep_evidence(self, folder: str | Path, max_bytes: int | None = None) -> None:
        """Where watches with ``evidence_seconds`` write their clips (``runtime.evidence``; bounded on disk)."""
        self._watching.keep_evidence(folder, max_bytes)

    @property
    def _watches(self) -> list[Watch]:  # the engines read them to score a push group's watches together
        return self._watching.watches

    def _decide(self, result: ChunkResult, scored: list, start: float) -> ChunkResult:
        return self._watching.decide(result, scored, start)

    def _finish(self, result: ChunkResult, chunk, start: float) -> ChunkResult:
        return self._watching.finish(result, chunk, start)

    # ---- asking --------------------------------------------------------------------
    def ask(self, question: str, max_new_tokens: int | None = None,
            on_token: Callable[[str], None] | None = None) -> Answer:
        """Greedy answer from the state as of the last completed push (see the module docstring)."""
        start = time.perf_counter()
        engines, backend = self.engines, self.engines.backend
        tok = engines.tokenizer
        question = check_question(question)  # a string, not empty, at most MAX_QUESTION_BYTES
        max_new_tokens = check_max_new_tokens(max_new_tokens)
        limit = engines.dir.max_answer_tokens
        if max_new_tokens is not None:
            if max_new_tokens > limit:
                log.warning("max_new_tokens %d is over the engines' %d; answering %d at most",
                            max_new_tokens, limit, limit)
            limit = min(limit, max_new_tokens)
        max_q = engines.dir.max_question_tokens
        prompt = prompt_ids(tok, question, max_q)
        truncated = len(tok.encode(question)) > max_q
        if truncated and hash(question) not in _WARNED:  # once per question: cameras repeat theirs
            if len(_WARNED) < 64:  # bounded, like everything the runtime keeps
                _WARNED.add(hash(question))
            log.warning("question cut to the engines' maximum of %d tokens: %s", max_q, preview(question))
        prefill, decode = engines.contracts["text_prefill"], engines.contracts["text_decode"]

        with self._ask_lock:
            with self._lock:  # read the state once; pushes may go on while the answer decodes
                self._check_open()
                seen = self.chunks_seen
                tokens_in = self._upload_ask("tokens", np.array([prompt], dtype=np.int64))
                out = self._prefill.run({"tokens": tokens_in,
                                         **{inp: self._state[s] for inp, s in prefill.from_state.items()}})
                logits = backend.download(out["logits"])
            prefill_ms = (time.perf_counter() - start) * 1e3
            carried = {inp: out[src] for inp, src in decode.from_previous.items()}
            first_token_ms = decode_start = None
            tokens: list[int] = []
            text = ""

            def emitted(token: int) -> None:
                nonlocal first_token_ms, decode_start, text
                tokens.append(token)
                if first_token_ms is None:
                    first_token_ms = (time.perf_counter() - start) * 1e3
                    decode_start = time.perf_counter()
                if on_token is not None:
                    new_text = tok.decode(tokens)
                    on_token(new_text[len(text):])
                    text = new_text

            def step(token: int) -> np.ndarray:
                token_in = self._upload_ask("token", np.array([[token]], dtype=np.int64))
                out = self._decode.run({"token": token_in, **carried})
                carried.update({inp: out[src] for inp, src in decode.from_previous.items() if src in out})
                return backend.download(out["logits"])[0]

            greedy(logits[0], step, tok.eos_id, limit, emitted)
        total_ms = (time.perf_counter() - start) * 1e3
        decode_ms = (time.perf_counter() - decode_start) * 1e3 if decode_start else 0.0
        return Answer(tok.decode(tokens), tokens, seen, truncated, prefill_ms,
                      first_token_ms if first_token_ms is not None else total_ms, decode_ms, total_ms)

    def _upload_ask(self, name: str, array: np.ndarray):
        self._ask_uploads[name] = self.engines.backend.upload(array, self._ask_uploads.get(name), self._ask_lane)
        return self._ask_uploads[name]

    # ---- snapshot / restore --------------------------------------------------------
    def state(self) -> dict[str, np.ndarray]:
        """A host copy of the state (as of the last completed push)."""
        return self._host_state()[0]

    def _host_state(self) -> tuple[dict[str, np.ndarray], int]:
        with self._lock:
            self._check_open()
            return {name: self.engines.backend.download(v) for name, v in self._state.items()}, self.chunks_seen

    def snapshot(self, path: str | Path) -> Path:
        """Write the state and the watches atomically, tagged with the engines' model."""
        return write_snapshot(path, *self._host_state(), self.engines.dir, self._watching.to_data())

    def snapshot_bytes(self) -> bytes:
        """The snapshot ``snapshot`` writes, as bytes (a server returns it to its client)."""
        return snapshot_bytes(*self._host_state(), self.engines.dir, self._watching.to_data())

    @classmethod
    def restore(cls, path: str | Path, engine_dir: str | Path | None = None, backend: str = "auto",
                device: str = "auto", **options) -> MirasolStream:
        """Reopen the engines the snapshot names (or ``engine_dir``) and load the state into a new stream."""
        meta = read_snapshot_metadata(path)
        stream = cls.open(engine_dir or snapshot_engine_dir(meta, str(path)), backend, device, **options)
        try:
            stream.load_snapshot(path)
        except Exception:
            stream.close()
            raise
        return stream

    def load_snapshot(self, path: str | Path) -> None:
        self._load(*read_snapshot(path, self.engines.dir, self.engines.initial_state), str(path))

    def load_snapshot_bytes(self, data: bytes, where: str = "snapshot") -> None:
        self._load(*read_snapshot_bytes(data, self.engines.dir, self.engines.initial_state, where), where)

    def _load(self, host: dict[str, np.ndarray], seen: int, watches: list[dict] | None, where: str) -> None:
        backend = self.engines.backend
        restored = Watching(self)  # checked whole before anything of this stream changes
        restored.listeners, restored.evidence = self._watching.listeners, self._watching.evidence
        restored.watches = list(self._watching.watches)
        restored.load(watches, where)
        with self._lock:
            self._check_open()
            self._state = {name: backend.upload(host[name]) for name in self.engines.initial_state}
            self.chunks_seen = seen
            self._watching = restored
