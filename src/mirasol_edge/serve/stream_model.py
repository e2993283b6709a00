"""The stream model: a Python-backend Triton model under the sequence batcher that holds every
stream's state and runs ``MirasolStream`` on the engine models through BLS.

Why this and not Triton's implicit state on the AR-step model: implicit state lives inside
the ONNX Runtime / TensorRT backend, where a question cannot read the context it holds (and
the Python backend ignores it). Here the state is the runtime's own, so a stream can be
pushed to, asked, snapshotted and restored at any moment, with the code and the answers of
in-process ``MirasolStream``.

Each ``execute`` gets requests from many streams (the ``oldest`` strategy batches them); their
pushes run together through ``MirasolEngines.push_many``. START opens (or reopens) a stream's
state, END closes it, and a stream with no request for ``idle_seconds`` is released, as the
batcher releases its slot.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from mirasol_edge.runtime.engine_dir import EngineDir
from mirasol_edge.runtime.results import RawChunk, prepare_chunk
from mirasol_edge.runtime.stream import MirasolEngines, MirasolStream

from . import protocol as p
from .bls import BlsBackend


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        import triton_python_backend_utils as pb

        self.pb = pb
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.idle_seconds = float(params.get("idle_seconds", "60"))
        folder = Path(args["model_repository"]) / args["model_version"] / "engines"
        engines = EngineDir.open(folder, component_files=False)
        self.engines = MirasolEngines(engines, BlsBackend(pb, engines, params.get("state_memory", "cpu")))
        self.streams: dict[int, MirasolStream] = {}
        self.last_seen: dict[int, float] = {}

    def finalize(self) -> None:
        for stream in self.streams.values():
            stream.close()
        self.streams.clear()

    # ---- one batch of requests from any number of streams -----------------------------
    def execute(self, requests: list) -> list:
        self._release_idle()
        responses: list = [None] * len(requests)
        pushes: list[tuple[int, MirasolStream, RawChunk]] = []
        ending: list[int] = []
        for i, request in enumerate(requests):
            try:
                sid = request.correlation_id()
                op = self._text(request, p.OP)
                if op not in p.OPS:
                    raise ValueError(f"unknown op {op!r}; expected one of {', '.join(p.OPS)}")
                if self._flag(request, p.START):
                    self._open(sid)
                stream = self.streams.get(sid)
                if stream is None:
                    raise LookupError(f"stream {sid} {p.NOT_OPEN} (released after {self.idle_seconds:g} s idle, "
                                      "closed, or the server restarted); start it again or restore a snapshot")
                self.last_seen[sid] = time.monotonic()
                if self._flag(request, p.END):
                    ending.append(sid)
                if op == "push":
                    pushes.append((i, stream, self._chunk(request)))
                else:
                    responses[i] = self._respond(self._other(op, request, stream))
            except Exception as exc:  # one stream's bad request is its own error, not the batch's
                responses[i] = self._error(exc)
        self._push(pushes, responses)
        for sid in ending:
            self._close(sid)
        return responses

    def _push(self, pushes: list, responses: list) -> None:
        if not pushes:
            return
        try:
            results = self.engines.push_many([s for _, s, _ in pushes], [c for _, _, c in pushes])
        except Exception as exc:
            for i, _, _ in pushes:
                responses[i] = self._error(exc)
            return
        for (i, _, _), result in zip(pushes, results):
            t = result.timings
            responses[i] = self._respond({
                p.OUTPUTS: np.asarray(result.outputs)[None],
                p.CHUNK_INDEX: np.array([[result.index]], np.int64),
                p.TIMINGS: np.array([[t.upload_ms, t.encode_ms, t.ar_ms, t.total_ms]], np.float64)})

    def _other(self, op: str, request, stream: MirasolStream) -> dict:
        if op == "ask":
            limit = self._optional(request, p.MAX_TOKENS)
            answer = stream.ask(self._text(request, p.QUESTION), int(limit.flat[0]) or None if limit is not None else None)
            return {p.ANSWER: p.strings(json.dumps(dataclasses.asdict(answer)))}
        if op == "snapshot":
            return {p.SNAPSHOT_OUT: p.strings(stream.snapshot_bytes())}
        if op == "restore":
            data = self._optional(request, p.SNAPSHOT_IN)
            if data is None:
                raise ValueError(f"restore needs {p.SNAPSHOT_IN}")
            stream.load_snapshot_bytes(bytes(data.flat[0]), where=f"snapshot sent for stream {request.correlation_id()}")
        return {p.CHUNK_INDEX: np.array([[stream.chunks_seen]], np.int64)}  # restore, close

    # ---- streams ------------------------------------------------------------------------
    def _open(self, sid: int) -> None:
        self._close(sid)
        self.streams[sid] = self.engines.stream()
        self.last_seen[sid] = time.monotonic()

    def _close(self, sid: int) -> None:
        stream = self.streams.pop(sid, None)
        self.last_seen.pop(sid, None)
        if stream is not None:
            stream.close()

    def _release_idle(self) -> None:
        now = time.monotonic()
        for sid in [s for s, t in self.last_seen.items() if now - t > self.idle_seconds]:
            self._close(sid)

    # ---- tensors ------------------------------------------------------------------------
    def _optional(self, request, name: str) -> np.ndarray | None:
        tensor = self.pb.get_input_tensor_by_name(request, name)
        return None if tensor is None else tensor.as_numpy()

    def _text(self, request, name: str) -> str:
        value = self._optional(request, name)
        if value is None:
            raise ValueError(f"input {name} not given")
        item = value.flat[0]
        return item.decode() if isinstance(item, bytes) else str(item)

    def _flag(self, request, name: str) -> bool:
        value = self._optional(request, name)
        return value is not None and bool(value.flat[0])

    def _chunk(self, request) -> RawChunk:
        video = self._optional(request, p.VIDEO)
        if video is None:
            raise ValueError(f"push needs {p.VIDEO}")
        mel = self._optional(request, p.MEL)
        chunk = RawChunk(video[0], None if mel is None else mel[0])
        engines = self.engines
        prepare_chunk(chunk, engines.video_shape, engines.video_dtype, engines.mel_shape)  # its own error, early
        return chunk

    def _respond(self, tensors: dict):
        return self.pb.InferenceResponse([self.pb.Tensor(name, value) for name, value in tensors.items()])

    def _error(self, exc: Exception):
        return self.pb.InferenceResponse(error=self.pb.TritonError(f"{type(exc).__name__}: {exc}"))

