"""The engines of one build, opened once and shared by any number of streams (cameras), like
whisper.cpp's context; they run the pushes, a batched group of streams at a time.

Which tensors are a stream's state, and under which names they travel in and out of each
engine, is the component contract's to say (``components.contracts``): nothing here names a
state tensor. Bad input is refused before any state changes, and a stream's state is swapped in
only once its push has run.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mirasol_edge.errors import UsageError

from .backends import Backend, create_backend, open_engines
from .components import MAX_SCORE_ROWS, ComponentContract, contracts
from .config import MirasolConfig
from .decode.types import ChunkSpec
from .engine_dir import EngineDir
from .manifest import ManifestError
from .results import ChunkResult, PushTimings, prepare_chunk
from .watch import candidate_probabilities, score_feeds

if TYPE_CHECKING:
    from .stream import MirasolStream


@dataclass
class PushPath:
    """What a push runs through: the encoder and AR runners, their lane, and the input buffers
    they reuse (fixed device addresses). Each stream has its own with a batch-1 build; a batched
    build's streams share the engines' one, a group at a time."""

    encoder: object
    ar: object
    lane: object | None
    uploads: dict = field(default_factory=dict)
    score: object | None = None  # the text_score runner, opened with the first watch

    def close(self) -> None:
        for runner in (self.encoder, self.ar, self.score):
            if runner is not None:
                runner.close()


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
        self.spec = ChunkSpec.from_config(self.dir.config)
        self.contracts: dict[str, ComponentContract] = contracts(
            MirasolConfig.from_dict(self.dir.config), self.batch, self.dir.max_question_tokens,
            self.dir.max_answer_tokens)
        encoder_inputs = self.dir.components["chunk_encoder"].inputs
        self.video_shape = tuple(encoder_inputs["video"].shape[1:])
        self.video_dtype = encoder_inputs["video"].np_dtype
        self.mel_shape = tuple(encoder_inputs["mel"].shape[1:]) if "mel" in encoder_inputs else None
        self.initial_state = self.dir.initial_state()
        carried = {s for name in ("chunk_encoder", "ar_step") for s in self.contracts[name].state}
        if carried != set(self.initial_state):
            raise ManifestError(f"{self.dir.path}: the initial state holds {sorted(self.initial_state)}, the "
                                f"contract's stream state is {sorted(carried)}; rebuild with this version")
        # A batched build's runners are shared by every stream: one group at a time through them.
        self.batch_lock = threading.Lock()
        self._shared: PushPath | None = None

    def stream(self, name: str = "stream") -> MirasolStream:
        from .stream import MirasolStream  # the stream module builds on this one

        return MirasolStream(self, name=name)

    def push_path(self) -> PushPath:
        """A new stream's push path: its own with batch 1, else the engines' shared one."""
        if self.batch == 1:
            lane = self.backend.lane()
            return PushPath(self.backend.runner("chunk_encoder", lane), self.backend.runner("ar_step", lane), lane)
        if self._shared is None:
            lane = self.backend.lane()
            self._shared = PushPath(self.backend.runner("chunk_encoder", lane), self.backend.runner("ar_step", lane),
                                    lane)
        return self._shared

    def push_many(self, streams: Sequence[MirasolStream], chunks: Sequence) -> list[ChunkResult]:
        """One chunk per stream, run together in batches of the engines' batch size."""
        if len(streams) != len(chunks):
            raise UsageError(f"{len(streams)} streams but {len(chunks)} chunks")
        if len(set(map(id, streams))) != len(streams):
            raise UsageError("a stream appears twice in one push_many; push its chunks in order instead")
        results = []
        for start in range(0, len(streams), self.batch):
            began = time.perf_counter()
            group, cut = list(streams[start : start + self.batch]), list(chunks[start : start + self.batch])
            results += [s._finish(r, c, began) for s, r, c in zip(group, self._push_group(group, cut), cut)]
        return results

    def _push_group(self, streams: list[MirasolStream], chunks: list) -> list[ChunkResult]:
        """Encode + one AR step for up to ``batch`` streams at once; each stream keeps its own state.
        Bad input is refused before any state changes; the state is swapped in only at the end."""
        start = time.perf_counter()
        prepared = [prepare_chunk(c, self.video_shape, self.video_dtype, self.mel_shape) for c in chunks]
        with self._locked(streams):
            path = streams[0]._push
            backend, lane = self.backend, path.lane
            marks = [backend.mark(lane)]
            feeds = {"video": self._upload(path, "video", [v for v, _ in prepared])}
            if self.mel_shape is not None:
                feeds["mel"] = self._upload(path, "mel", [m for _, m in prepared])
            encoder, ar = self.contracts["chunk_encoder"], self.contracts["ar_step"]
            feeds.update(self._state_in(encoder, streams, lane))
            marks.append(backend.mark(lane))
            encoded = path.encoder.run(feeds)
            marks.append(backend.mark(lane))
            stepped = path.ar.run({"latents": encoded["latents"], **self._state_in(ar, streams, lane)})
            marks.append(backend.mark(lane))
            new_states = {**_state_out(encoder, encoded), **_state_out(ar, stepped)}
            outputs = backend.download(stepped["outputs"])  # the push's one wait for the device
            watch_start = time.perf_counter()
            scored = self._score_watches(path, streams, new_states)
            watch_ms = (time.perf_counter() - watch_start) * 1e3 if scored else 0.0
            per_stream = self._scatter(streams, new_states, lane)
            upload_ms, encode_ms, ar_ms = (backend.elapsed_ms(a, b) for a, b in zip(marks, marks[1:]))
            timings = PushTimings(upload_ms, encode_ms, ar_ms, (time.perf_counter() - start) * 1e3, watch_ms)
            results = []
            for i, (s, chunk) in enumerate(zip(streams, chunks)):
                s._state = per_stream[i]  # the swap: ask sees the new state from here on
                result = ChunkResult(s.chunks_seen, outputs[i], timings, getattr(chunk, "t0", None),
                                     getattr(chunk, "t1", None), int(getattr(chunk, "flags", 0)))
                results.append(s._decide(result, scored.get(i, []), start))
                s.chunks_seen += 1
            return results

    def _score_watches(self, path: PushPath, streams: list[MirasolStream], new_states: dict) -> dict[int, list]:
        """Every closed-set watch due on this push, for every stream of the group, teacher-forced in
        one text_score call (several past MAX_SCORE_ROWS watches) against the group's new state, a
        row per watch: stream index -> [(watch, candidate probabilities)]."""
        due = [(i, w) for i, s in enumerate(streams) for w in s._watches if w.closed and w.due(s.chunks_seen)]
        if not due:
            return {}
        if path.score is None:
            path.score = self.backend.runner("text_score", path.lane)
        state_feeds = {inp: new_states[s] for inp, s in self.contracts["text_score"].from_state.items()}
        out: dict[int, list] = {}
        for start in range(0, len(due), MAX_SCORE_ROWS):
            part = due[start : start + MAX_SCORE_ROWS]
            feeds = {name: self.backend.upload(array, None, path.lane)
                     for name, array in score_feeds([w._row for _, w in part], self.tokenizer.pad_id).items()}
            feeds["row_stream"] = self.backend.upload(np.array([i for i, _ in part], np.int64), None, path.lane)
            table = self.backend.download(path.score.run({**feeds, **state_feeds})["score_logprobs"])
            for (i, w), logprobs in zip(part, table):
                out.setdefault(i, []).append((w, candidate_probabilities(logprobs, w._row)))
        return out

    @contextlib.contextmanager
    def _locked(self, streams: list[MirasolStream]):
        locks = sorted((s._lock for s in streams), key=id)
        if self.batch > 1:
            locks.append(self.batch_lock)  # taken last, so every group takes its locks in one order
        with contextlib.ExitStack() as held:
            for lock in locks:
                held.enter_context(lock)
            for s in streams:
                s._check_open()
            yield

    def _upload(self, path: PushPath, name: str, arrays: list):
        """A group's input as one batch; frames decoded on the GPU go device to device where the
        backend can take them so, through the host otherwise."""
        backend = self.backend
        if hasattr(arrays[0], "copy_into"):  # DeviceFrames (DALI NVDEC)
            if self.batch == 1 and backend.takes_device_frames:
                path.uploads[name] = backend.upload_device(arrays[0], path.uploads.get(name), path.lane)
                return path.uploads[name]
            arrays = [np.asarray(a) for a in arrays]
        pad = [np.zeros_like(arrays[0])] * (self.batch - len(arrays))
        batch = arrays[0][None] if self.batch == 1 else np.stack(arrays + pad)  # batch 1: a view, no copy
        path.uploads[name] = backend.upload(batch, path.uploads.get(name), path.lane)
        return path.uploads[name]

    def _state_in(self, contract: ComponentContract, streams: list[MirasolStream], lane) -> dict:
        """The state ``contract`` carries, under its input names (stacked for a batched group)."""
        return {inp: self._gather(streams, s, lane) for s, (inp, _) in contract.state.items()}

    def _gather(self, streams: list[MirasolStream], state: str, lane):
        values = [s._state[state] for s in streams]
        return values[0] if self.batch == 1 else self.backend.stack(values, self.batch, key=state, lane=lane)

    def _scatter(self, streams: list[MirasolStream], new_states: dict, lane) -> list[dict]:
        if self.batch == 1:
            return [new_states]
        # into each stream's previous state buffers: consumed above, so free to overwrite
        split = {s: self.backend.unstack(v, len(streams), [st._state[s] for st in streams], lane)
                 for s, v in new_states.items()}
        return [{s: split[s][i] for s in new_states} for i in range(len(streams))]

    def close(self) -> None:
        if self._shared is not None:
            self._shared.close()
            self._shared = None
        self.backend.close()


def _state_out(contract: ComponentContract, outputs: dict) -> dict:
    """The state a step gave back, by state name."""
    return {s: outputs[out] for s, (_, out) in contract.state.items()}
