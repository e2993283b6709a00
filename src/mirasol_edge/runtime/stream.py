"""The stream: push chunks for hours, ask questions at any moment, at constant cost per push.

``MirasolEngines`` is the shared context (engines loaded once, like whisper.cpp's context);
each ``MirasolStream`` is one camera's state on the device. A push runs the chunk encoder
and one AR step against that state and swaps the new state in; nothing grows with the
length of the video, on the device or in Python.

What ``ask`` sees: the state as of the last *completed* push. A push running in another
thread is not waited for beyond its state swap; ``Answer.chunks_seen`` says which state
answered. Questions longer than the engines' maximum are cut to it with a warning
(``Answer.truncated`` is set). Asking before any push answers from the empty state.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from mirasol_edge.errors import UsageError

from .backends import Backend, create_backend, open_engines
from .components import state_input, state_output
from .engine_dir import EngineDir
from .generate import greedy
from .results import Answer, ChunkResult, ChunkShapeError, PushTimings, RawChunk, prepare_chunk
from .snapshot import read_snapshot, read_snapshot_bytes, read_snapshot_metadata, snapshot_bytes, write_snapshot

__all__ = ["Answer", "ChunkResult", "ChunkShapeError", "MirasolEngines", "MirasolStream", "PushTimings", "RawChunk"]
log = logging.getLogger(__name__)
_WARNED: set[str] = set()  # questions already warned about being cut


class MirasolEngines:
    """Engines opened once and shared by any number of streams (cameras)."""

    def __init__(self, engine_dir: str | Path | EngineDir, backend: str | Backend = "auto", device: str = "auto",
                 **options) -> None:
        """``engine_dir`` is a directory or an opened one (the toolkit's reference passes its own, with
        its ``backend`` instance)."""
        if isinstance(engine_dir, (str, Path)):
            engine_dir = open_engines(engine_dir, backend if isinstance(backend, str) else "auto")
        self.dir = engine_dir
        self.backend: Backend = (backend if isinstance(backend, Backend)
                                 else create_backend(self.dir, backend, device, **options))
        self.tokenizer = self.dir.tokenizer()
        self.batch = self.dir.batch
        encoder_inputs = self.dir.components["chunk_encoder"].inputs
        self.video_shape = tuple(encoder_inputs["video"].shape[1:])
        self.video_dtype = encoder_inputs["video"].dtype
        self.mel_shape = tuple(encoder_inputs["mel"].shape[1:]) if "mel" in encoder_inputs else None
        self.initial_state = self.dir.initial_state()
        self._shared: dict = {}
        # A batched build's runners are shared by every stream: one group at a time through them.
        self.batch_lock = threading.Lock()
        self._shared_lane = self.backend.lane() if self.batch > 1 else None
        self._uploads: dict = {}

    def stream(self) -> MirasolStream:
        return MirasolStream(self)

    def shared_runner(self, component: str):
        if component not in self._shared:
            self._shared[component] = self.backend.runner(component, self._shared_lane)
        return self._shared[component]

    def push_many(self, streams: Sequence[MirasolStream], chunks: Sequence) -> list[ChunkResult]:
        """One chunk per stream, run together in batches of the engines' batch size."""
        if len(streams) != len(chunks):
            raise UsageError(f"{len(streams)} streams but {len(chunks)} chunks")
        if len(set(map(id, streams))) != len(streams):
            raise UsageError("a stream appears twice in one push_many; push its chunks in order instead")
        results = []
        for start in range(0, len(streams), self.batch):
            group = list(streams[start : start + self.batch])
            results += _push_group(self, group, list(chunks[start : start + self.batch]))
        return results

    def close(self) -> None:
        for runner in self._shared.values():
            runner.close()
        self._shared.clear()
        self.backend.close()


class MirasolStream:
    """One video's state on the device; push chunks, ask questions, snapshot and restore."""

    def __init__(self, engines: MirasolEngines, owns_engines: bool = False) -> None:
        self.engines = engines
        self._owns_engines = owns_engines
        backend = engines.backend
        single = engines.batch == 1  # a batch engine runs through the engines' shared runners
        # Pushes and questions each run on their own lane, so an ask never lands in a push's capture.
        self._push_lane, self._ask_lane = (backend.lane() if single else None), backend.lane()
        self._encoder = backend.runner("chunk_encoder", self._push_lane) if single else None
        self._ar = backend.runner("ar_step", self._push_lane) if single else None
        self._prefill = backend.runner("text_prefill", self._ask_lane)
        self._decode = backend.runner("text_decode", self._ask_lane)
        self._lock = threading.Lock()  # the state and the runners that write it
        self._ask_lock = threading.Lock()  # the text runners
        self._uploads: dict = {}  # the push path's input buffers, reused (fixed device addresses)
        self._ask_uploads: dict = {}  # the question path's
        self._state = {name: backend.upload(a) for name, a in engines.initial_state.items()}
        self.chunks_seen = 0
        self.closed = False

    # ---- opening -------------------------------------------------------------------
    @classmethod
    def open(cls, engine_dir: str | Path, backend: str = "auto", device: str = "auto", **options) -> MirasolStream:
        return cls(MirasolEngines(engine_dir, backend, device, **options), owns_engines=True)

    def __enter__(self) -> MirasolStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        with self._ask_lock, self._lock:
            if self.closed:
                return
            self._state.clear()
            self._uploads.clear()
            for runner in (self._encoder, self._ar, self._prefill, self._decode):
                if runner is not None:
                    runner.close()
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
        return _push_group(self.engines, [self], [chunk])[0]

    # ---- asking --------------------------------------------------------------------
    def ask(self, question: str, max_new_tokens: int | None = None,
            on_token: Callable[[str], None] | None = None) -> Answer:
        """Greedy answer from the state as of the last completed push (see the module docstring)."""
        start = time.perf_counter()
        engines, backend = self.engines, self.engines.backend
        tok = engines.tokenizer
        if not isinstance(question, str) or not question.strip():
            raise UsageError("question is empty")
        limit = engines.dir.max_answer_tokens
        if max_new_tokens is not None:
            if max_new_tokens < 1:
                raise UsageError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
            if max_new_tokens > limit:
                log.warning("max_new_tokens %d is over the engines' %d; answering %d at most",
                            max_new_tokens, limit, limit)
            limit = min(limit, max_new_tokens)
        ids = tok.encode(question)
        max_q = engines.dir.max_question_tokens
        truncated = len(ids) > max_q
        if truncated and question not in _WARNED:  # once per question: cameras repeat theirs
            if len(_WARNED) < 64:  # bounded, like everything the runtime keeps
                _WARNED.add(question)
            log.warning("question of %d tokens cut to the engines' maximum of %d: %r", len(ids), max_q, question)
        prompt = np.array([[tok.bos_id, *ids[:max_q], tok.sep_id]], dtype=np.int64)

        with self._ask_lock:
            with self._lock:  # read the state once; pushes may go on while the answer decodes
                self._check_open()
                seen = self.chunks_seen
                tokens_in = self._ask_uploads["tokens"] = backend.upload(prompt, self._ask_uploads.get("tokens"),
                                                                         self._ask_lane)
                out = self._prefill.run({"tokens": tokens_in, "context": self._state["context"],
                                         "pos": self._state["pos"]})
                logits = backend.download(out["logits"])
            prefill_ms = (time.perf_counter() - start) * 1e3
            depth = sum(1 for n in out if n.startswith("cross.") and n.endswith(".key"))
            cross = {n: v for n, v in out.items() if n.startswith("cross")}
            past = {f"past.{i}.{p}": out[f"present.{i}.{p}"] for i in range(depth) for p in ("key", "value")}
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
                nonlocal past
                token_in = self._ask_uploads["token"] = backend.upload(
                    np.array([[token]], dtype=np.int64), self._ask_uploads.get("token"), self._ask_lane)
                out = self._decode.run({"token": token_in, **past, **cross})
                past = {n.replace("present.", "past.", 1): v for n, v in out.items() if n.startswith("present.")}
                return backend.download(out["logits"])[0]

            greedy(logits[0], step, tok.eos_id, limit, emitted)
        total_ms = (time.perf_counter() - start) * 1e3
        decode_ms = (time.perf_counter() - decode_start) * 1e3 if decode_start else 0.0
        return Answer(tok.decode(tokens), tokens, seen, truncated, prefill_ms,
                      first_token_ms if first_token_ms is not None else total_ms, decode_ms, total_ms)

    # ---- snapshot / restore --------------------------------------------------------
    def state(self) -> dict[str, np.ndarray]:
        """A host copy of the state (as of the last completed push)."""
        with self._lock:
            self._check_open()
            return {name: self.engines.backend.download(v) for name, v in self._state.items()}

    def snapshot(self, path: str | Path) -> Path:
        """Write the state atomically, tagged with the engines' manifest hash."""
        with self._lock:
            self._check_open()
            host = {name: self.engines.backend.download(v) for name, v in self._state.items()}
            seen = self.chunks_seen
        return write_snapshot(path, host, seen, self.engines.dir)

    def snapshot_bytes(self) -> bytes:
        """The snapshot ``snapshot`` writes, as bytes (a server returns it to its client)."""
        with self._lock:
            self._check_open()
            host = {name: self.engines.backend.download(v) for name, v in self._state.items()}
            seen = self.chunks_seen
        return snapshot_bytes(host, seen, self.engines.dir)

    @classmethod
    def restore(cls, path: str | Path, engine_dir: str | Path | None = None, backend: str = "auto",
                device: str = "auto", **options) -> MirasolStream:
        """Reopen the engines the snapshot names (or ``engine_dir``) and load the state into a new stream."""
        meta = read_snapshot_metadata(path)
        stream = cls.open(engine_dir or meta["engine_dir"], backend, device, **options)
        try:
            stream.load_snapshot(path)
        except Exception:
            stream.close()
            raise
        return stream

    def load_snapshot(self, path: str | Path) -> None:
        self._load(*read_snapshot(path, self.engines.dir, self.engines.initial_state))

    def load_snapshot_bytes(self, data: bytes, where: str = "snapshot") -> None:
        self._load(*read_snapshot_bytes(data, self.engines.dir, self.engines.initial_state, where))

    def _load(self, host: dict[str, np.ndarray], seen: int) -> None:
        backend = self.engines.backend
        with self._lock:
            self._check_open()
            self._state = {name: backend.upload(host[name]) for name in self.engines.initial_state}
            self.chunks_seen = seen


def _push_group(engines: MirasolEngines, streams: list[MirasolStream], chunks: list) -> list[ChunkResult]:
    """Encode + one AR step for up to ``batch`` streams at once; each stream keeps its own state."""
    start = time.perf_counter()
    # Bad input is refused before any state changes.
    prepared = [prepare_chunk(c, engines.video_shape, engines.video_dtype, engines.mel_shape) for c in chunks]
    backend, batch = engines.backend, engines.batch
    locks = sorted((s._lock for s in streams), key=id)
    if batch > 1:
        locks.append(engines.batch_lock)  # taken last, so every group takes its locks in one order
    for lock in locks:
        lock.acquire()
    try:
        for s in streams:
            s._check_open()
        lead = streams[0]
        encoder = lead._encoder or engines.shared_runner("chunk_encoder")
        ar = lead._ar or engines.shared_runner("ar_step")
        lane = lead._push_lane if batch == 1 else engines._shared_lane
        uploads = lead._uploads if batch == 1 else engines._uploads

        def batched(arrays: list[np.ndarray]) -> np.ndarray:
            if batch == 1:
                return arrays[0][None]  # a view: no copy of the chunk on the common path
            pad = [np.zeros_like(arrays[0])] * (batch - len(arrays))
            return np.stack(arrays + pad)

        def state(name: str):
            values = [s._state[name] for s in streams]
            return values[0] if batch == 1 else backend.stack(values, batch, key=name, lane=lane)

        def upload(name: str, arrays: list[np.ndarray]):
            if hasattr(arrays[0], "copy_into"):  # frames on the GPU (DALI NVDEC)
                if batch == 1 and hasattr(backend, "upload_device"):  # device to device into the input
                    uploads[name] = backend.upload_device(arrays[0], uploads.get(name), lane)
                    return uploads[name]
                arrays = [np.asarray(a) for a in arrays]  # a backend without a device path: via the host
            uploads[name] = backend.upload(batched(arrays), uploads.get(name), lane)
            return uploads[name]

        marks = [backend.mark(lane)]
        feeds = {"video": upload("video", [v for v, _ in prepared])}
        if engines.mel_shape is not None:
            feeds["mel"] = upload("mel", [m for _, m in prepared])
        if "memory" in engines.initial_state:
            feeds["past.memory"] = state("memory")
        marks.append(backend.mark(lane))
        encoded = encoder.run(feeds)
        marks.append(backend.mark(lane))
        ar_feeds = {"latents": encoded["latents"]}
        for name in engines.initial_state:
            if name != "memory":
                ar_feeds[state_input(name)] = state(name)
        stepped = ar.run(ar_feeds)
        marks.append(backend.mark(lane))
        outputs = backend.download(stepped["outputs"])  # the push's one wait for the device

        new_states = {name: (encoded if name == "memory" else stepped)[state_output(name)]
                      for name in engines.initial_state}
        if batch == 1:
            per_stream = [new_states]
        else:  # into each stream's previous state buffers: consumed above, so free to overwrite
            split = {name: backend.unstack(v, len(streams), [s._state[name] for s in streams], lane)
                     for name, v in new_states.items()}
            per_stream = [{name: split[name][i] for name in new_states} for i in range(len(streams))]
        results = []
        upload_ms, encode_ms, ar_ms = (backend.elapsed_ms(a, b) for a, b in zip(marks, marks[1:]))
        timings = PushTimings(upload_ms, encode_ms, ar_ms, (time.perf_counter() - start) * 1e3)
        for i, (s, chunk) in enumerate(zip(streams, chunks)):
            s._state = per_stream[i]  # the swap: ask sees the new state from here on
            results.append(ChunkResult(s.chunks_seen, outputs[i], timings, getattr(chunk, "t0", None),
                                       getattr(chunk, "t1", None), int(getattr(chunk, "flags", 0))))
            s.chunks_seen += 1
        return results
    finally:
        for lock in reversed(locks):
            lock.release()
