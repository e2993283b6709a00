"""``RemoteStream``: ``MirasolStream``'s API against a Triton server (tritonclient, gRPC).

The stream's state lives on the server, in the ``mirasol`` model, under the stream's
correlation ID; the first request carries START, ``close`` carries END. Every request also
carries the stream ID as a gRPC header, so a router in front of several servers can pin the
stream to one of them by hashing it. A server that restarted (or released the stream after
its idle timeout) no longer has the state: the client raises ``StreamLost``, and ``restore``
from the last snapshot continues where it was.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import numpy as np

from mirasol_edge.errors import MirasolError, UsageError
from mirasol_edge.runtime.files import write_bytes_atomic
from mirasol_edge.runtime.results import Answer, ChunkResult, PushTimings, RawChunk, prepare_chunk

from . import protocol as p

NUMPY_TYPES = {"TYPE_UINT8": np.uint8, "TYPE_FP32": np.float32, "TYPE_FP16": np.float16}
LOST_MARKERS = (p.NOT_OPEN, "must specify the START flag")  # ours, and Triton's sequence batcher's
GONE_STATUSES = ("StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED", "StatusCode.CANCELLED")


class ServerError(MirasolError, RuntimeError):
    """The server could not be reached, or refused a request; the message names the server and stream."""

    exit_code = 9


class StreamLost(ServerError):
    """The server no longer holds this stream's state (restarted, idle timeout, closed)."""


class RemoteStream:
    def __init__(self, url: str, stream_id: str | int | None = None, model: str = p.STREAM_MODEL,
                 timeout_s: float = 120.0, connect_retry_s: float = 5.0) -> None:
        import tritonclient.grpc as grpcclient

        self.url, self.model, self.timeout_s, self.connect_retry_s = url, model, timeout_s, connect_retry_s
        self.stream_id = stream_id if stream_id is not None else uuid.uuid4().hex
        self.sequence_id = p.sequence_id(self.stream_id)
        self._grpc = grpcclient
        self._client = grpcclient.InferenceServerClient(url)
        config = self._call("open", lambda: self._client.get_model_config(model, as_json=True, client_timeout=timeout_s))
        inputs = {t["name"]: t for t in config["config"]["input"]}
        video = inputs[p.VIDEO]
        self.video_shape = tuple(int(d) for d in video["dims"])
        self.video_dtype = np.dtype(NUMPY_TYPES[video["data_type"]])
        self.mel_shape = tuple(int(d) for d in inputs[p.MEL]["dims"]) if p.MEL in inputs else None
        # The model's config (chunk length, sizes), so a caller can cut chunks as the engines expect.
        self.config = json.loads(config["config"]["parameters"][p.MODEL_CONFIG]["string_value"])
        self.chunks_seen = 0
        self._started = False
        self.closed = False

    def __enter__(self) -> RemoteStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def describe(self) -> dict:
        return {"backend": "triton", "server": self.url, "model": self.model, "stream_id": str(self.stream_id)}

    # ---- the stream API -------------------------------------------------------------------
    def push(self, chunk=None, *, frames: np.ndarray | None = None, mel: np.ndarray | None = None) -> ChunkResult:
        if chunk is None:
            chunk = RawChunk(frames, mel)
        video, mel_in = prepare_chunk(chunk, self.video_shape, self.video_dtype, self.mel_shape)
        start = time.perf_counter()
        inputs = [self._input(p.VIDEO, video[None])]
        if mel_in is not None:
            inputs.append(self._input(p.MEL, mel_in[None]))
        out = self._infer("push", inputs)
        index = int(out.as_numpy(p.CHUNK_INDEX)[0, 0])
        self.chunks_seen = index + 1
        upload_ms, encode_ms, ar_ms, _ = out.as_numpy(p.TIMINGS)[0].tolist()  # the server's stages
        timings = PushTimings(upload_ms, encode_ms, ar_ms, (time.perf_counter() - start) * 1e3)  # total: the round trip
        return ChunkResult(index, out.as_numpy(p.OUTPUTS)[0], timings, getattr(chunk, "t0", None),
                           getattr(chunk, "t1", None), int(getattr(chunk, "flags", 0)))

    def ask(self, question: str, max_new_tokens: int | None = None) -> Answer:
        if not isinstance(question, str) or not question.strip():
            raise UsageError("question is empty")
        inputs = [self._input(p.QUESTION, p.strings(question)),
                  self._input(p.MAX_TOKENS, np.array([[max_new_tokens or 0]], np.int32))]
        out = self._infer("ask", inputs)
        return Answer(**json.loads(out.as_numpy(p.ANSWER)[0, 0]))

    def snapshot(self, path: str | Path) -> Path:
        """The server's state for this stream, written here atomically (the format of ``MirasolStream.snapshot``)."""
        out = self._infer("snapshot", [])
        write_bytes_atomic(path, bytes(out.as_numpy(p.SNAPSHOT_OUT)[0, 0]))
        return Path(path)

    def load_snapshot(self, path: str | Path) -> None:
        """Start this stream again on the server from a snapshot (after ``StreamLost``, or to move it)."""
        path = Path(path)
        if not path.is_file():
            raise UsageError(f"{path}: no such snapshot")
        self._started = False  # a restore opens the stream anew
        out = self._infer("restore", [self._input(p.SNAPSHOT_IN, p.strings(path.read_bytes()))])
        self.chunks_seen = int(out.as_numpy(p.CHUNK_INDEX)[0, 0])

    @classmethod
    def restore(cls, path: str | Path, url: str, stream_id: str | int | None = None, **kwargs) -> RemoteStream:
        stream = cls(url, stream_id, **kwargs)
        stream.load_snapshot(path)
        return stream

    def close(self) -> None:
        """End the stream: the server releases its state."""
        if self.closed:
            return
        self.closed = True
        try:
            if self._started:
                self._infer("close", [], end=True)
        finally:
            self._client.close()

    # ---- one request ------------------------------------------------------------------------
    def _input(self, name: str, array: np.ndarray):
        dtype = "BYTES" if array.dtype == np.object_ else self._grpc.np_to_triton_dtype(array.dtype)
        tensor = self._grpc.InferInput(name, list(array.shape), dtype)
        tensor.set_data_from_numpy(array)
        return tensor

    def _infer(self, op: str, inputs: list, end: bool = False):
        if self.closed and op != "close":
            raise UsageError("this stream is closed")
        inputs = [self._input(p.OP, p.strings(op)), *inputs]
        outputs = [self._grpc.InferRequestedOutput(name) for name in p.OUTPUTS_OF[op]]
        result = self._call(op, lambda: self._client.infer(
            self.model, inputs, outputs=outputs, sequence_id=self.sequence_id, sequence_start=not self._started,
            sequence_end=end, client_timeout=self.timeout_s, headers={p.STREAM_HEADER: str(self.stream_id)}))
        self._started = True
        return result

    def _call(self, what: str, fn):
        from tritonclient.utils import InferenceServerException

        deadline = time.monotonic() + self.connect_retry_s
        while True:
            try:
                return fn()
            except InferenceServerException as exc:
                # Never delivered (gRPC backs off after a refused connection, e.g. while a server
                # restarts): safe to send again, for a bounded time. Anything else is raised.
                if not _not_delivered(exc) or time.monotonic() > deadline:
                    self._raise(what, exc)
                time.sleep(0.25)

    def _raise(self, what: str, exc) -> None:
        message, status = exc.message() or str(exc), str(exc.status())
        where = f"{self.url}, model {self.model!r}, stream {self.stream_id!r}"
        if any(marker in message for marker in LOST_MARKERS):
            raise StreamLost(f"{where}: the server no longer holds this stream (restarted, idle timeout, or "
                             f"closed); restore it from its last snapshot ({message})") from None
        if status in GONE_STATUSES:
            raise ServerError(f"{where}: server unreachable during {what} ({status}: {message}); if it "
                              "restarted, the stream's state is gone: restore from its last snapshot") from None
        raise ServerError(f"{where}: {what} refused: {message}") from None


def _not_delivered(exc) -> bool:
    message = exc.message() or ""
    return str(exc.status()) == "StatusCode.UNAVAILABLE" and ("failed to connect" in message or "refused" in message)
