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
from collections.abc import Callable
from pathlib import Path

import numpy as np

from mirasol_edge.errors import MirasolError, UsageError
from mirasol_edge.runtime.decode.types import ChunkSpec
from mirasol_edge.runtime.files import write_bytes_atomic
from mirasol_edge.runtime.results import (
    Answer,
    ChunkResult,
    PushTimings,
    RawChunk,
    check_max_new_tokens,
    check_question,
    prepare_chunk,
)
from mirasol_edge.runtime.snapshot import read_snapshot_metadata, snapshot_destination, snapshot_file

from . import protocol as p
from .access import AccessDenied
from .recovery import Journal, Recovery
from .remote_watches import RemoteWatches, WatchingRemote, first_item
from .tls import ClientTLS, tls_hint

NUMPY_TYPES = {"TYPE_UINT8": np.uint8, "TYPE_FP32": np.float32, "TYPE_FP16": np.float16}
BATCHER_LOST = "must specify the START flag"  # Triton's sequence batcher: it holds no such sequence
LOST_MARKERS = (p.NOT_OPEN, BATCHER_LOST)  # ours, and the batcher's
GONE_STATUSES = ("StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED", "StatusCode.CANCELLED")


class ServerError(MirasolError, RuntimeError):
    """The server could not be reached, or refused a request; the message names the server and stream."""

    exit_code = 9


class ServerGone(ServerError):
    """The server did not answer (down, restarting, or its connection dropped mid-request)."""


class StreamLost(ServerError):
    """The server no longer holds this stream's state (restarted, idle timeout, closed)."""


class ServerFull(ServerError):
    """The server holds its maximum of open streams and refused a new one (at START, at once)."""

    exit_code = 10


MAX_TOKENS_SENT = 2**31 - 1  # MAX_TOKENS is INT32; the server caps it to its engines' limit anyway


class RemoteStream(WatchingRemote):
    def __init__(self, url: str, stream_id: str | int | None = None, model: str = p.STREAM_MODEL,
                 timeout_s: float = 120.0, connect_retry_s: float = 5.0, token: str | None = None,
                 takeover: bool = False, recovery: Recovery | None = Recovery(), tls: ClientTLS | None = None) -> None:
        """``token``: this client's access token (a server built with ``--access``), sent with every
        request. ``takeover``: open the stream even if another client holds it (it loses it).
        ``recovery``: how the stream rebuilds itself where its server's state was lost (``recovery.py``);
        None: a loss is ``StreamLost`` for the caller to handle. ``tls``: connect over TLS (``ClientTLS``:
        the CA that signed the server's certificate, and this client's certificate for mutual TLS)."""
        import tritonclient.grpc as grpcclient

        self.token, self.takeover = token, takeover
        self.recovery, self.recoveries = recovery, 0
        self._journal = Journal(recovery) if recovery is not None else None
        self._key = ""  # the stream key the server minted for us: sent with every request after the first

        self.url, self.model, self.timeout_s, self.connect_retry_s = url, model, timeout_s, connect_retry_s
        self.stream_id = stream_id if stream_id is not None else uuid.uuid4().hex
        self.sequence_id = p.sequence_id(self.stream_id)
        self._grpc = grpcclient
        self.tls = tls
        self._client = self._connect()
        try:
            config = self._call("open", lambda: self._client.get_model_config(model, as_json=True, client_timeout=timeout_s))
        except ServerError as exc:
            if not tls_hint(str(exc), tls):
                raise
            raise ServerError(f"{exc}; {tls_hint(str(exc), tls)}") from None
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
        self._watches = RemoteWatches()

    def __enter__(self) -> RemoteStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def describe(self) -> dict:
        # "device": where the stream runs, as every backend's describe() says (here: the server)
        return {"backend": "triton", "device": self.url, "server": self.url, "model": self.model,
                "stream_id": str(self.stream_id), "recoveries": self.recoveries}

    # ---- the stream API -------------------------------------------------------------------
    def push(self, chunk=None, *, frames: np.ndarray | None = None, mel: np.ndarray | None = None) -> ChunkResult:
        if chunk is None:
            chunk = RawChunk(frames, mel)
        video, mel_in = prepare_chunk(chunk, self.video_shape, self.video_dtype, self.mel_shape)
        start = time.perf_counter()
        out = self._recovering(lambda: self._push_once(video, mel_in))
        index = self.chunks_seen - 1
        if self._journal is not None:
            self._journal.pushed(video, mel_in)
            if self._journal.due(self.chunks_seen):
                try:
                    self._journal.taken(self._snapshot_bytes())
                except ServerError:  # kept in the journal; the next push tries again
                    pass
        upload_ms, encode_ms, ar_ms, _ = out.as_numpy(p.TIMINGS)[0].tolist()  # the server's stages
        timings = PushTimings(upload_ms, encode_ms, ar_ms, (time.perf_counter() - start) * 1e3)  # total: the round trip
        t0, t1 = getattr(chunk, "t0", None), getattr(chunk, "t1", None)
        events = self._watches.events(first_item(out.as_numpy(p.EVENTS)), self.name, t0, t1)
        return ChunkResult(index, out.as_numpy(p.OUTPUTS)[0], timings, t0, t1, int(getattr(chunk, "flags", 0)), events)

    def _push_once(self, video: np.ndarray, mel: np.ndarray | None):
        inputs = [self._input(p.VIDEO, video[None])]
        if mel is not None:
            inputs.append(self._input(p.MEL, mel[None]))
        out = self._infer("push", inputs)
        self.chunks_seen = int(out.as_numpy(p.CHUNK_INDEX)[0, 0]) + 1
        return out

    def _snapshot_bytes(self) -> bytes:
        return bytes(self._infer("snapshot", []).as_numpy(p.SNAPSHOT_OUT)[0, 0])

    def _recovering(self, request):
        """``request()``, and where the server's state for this stream was lost (or the server is gone,
        and a router may send the next request elsewhere), the stream rebuilt from the journal first."""
        try:
            return request()
        except (StreamLost, ServerGone) as lost:
            if self._journal is None:
                raise
            self._recover(lost)
            return request()

    def _recover(self, lost: ServerError) -> None:
        why = self._journal.why_not()
        if why is not None:
            raise StreamLost(f"{lost}; could not recover: {why}") from lost
        snapshot, last = self._journal.snapshot, lost
        for attempt in range(self.recovery.attempts):
            try:
                self._started = False  # whichever server answers now: open the stream there
                if snapshot is None:
                    self._key, self.chunks_seen = "", 0  # lost before the first snapshot: from the start
                    for watch in list(self._watches.watches.values()):  # and its watches with it
                        out = self._infer("watch", [self._input(p.WATCH, p.strings(self._watches.payload(watch)))])
                        self._watches.answered(first_item(out.as_numpy(p.WATCHES)), watch)
                else:
                    out = self._infer("restore", [self._input(p.SNAPSHOT_IN, p.strings(snapshot))])
                    self.chunks_seen = int(out.as_numpy(p.CHUNK_INDEX)[0, 0])
                for video, mel in list(self._journal.chunks):  # as the lost state had them
                    self._push_once(video, mel)
                self.recoveries += 1
                return
            except AccessDenied as exc:  # another client holds it now (a takeover): not ours to rebuild
                raise StreamLost(f"{lost}; could not recover: {exc}") from lost
            except (StreamLost, ServerGone) as exc:
                last = exc
                if attempt + 1 < self.recovery.attempts:
                    time.sleep(self.recovery.retry_s)
        raise StreamLost(f"{lost}; could not recover in {self.recovery.attempts} attempts: {last}") from lost

    @property
    def spec(self) -> ChunkSpec:
        """How to cut chunks for the server's engines (as ``MirasolStream.spec``)."""
        return ChunkSpec.from_config(self.config)

    def ask(self, question: str, max_new_tokens: int | None = None,
            on_token: Callable[[str], None] | None = None) -> Answer:
        """The server's answer; ``on_token`` gets it whole once it arrives (the server does not stream tokens)."""
        question = check_question(question)  # before anything is sent
        wanted = min(check_max_new_tokens(max_new_tokens) or 0, MAX_TOKENS_SENT)
        inputs = [self._input(p.QUESTION, p.strings(question)),
                  self._input(p.MAX_TOKENS, np.array([[wanted]], np.int32))]
        out = self._recovering(lambda: self._infer("ask", inputs))
        answer = Answer(**json.loads(out.as_numpy(p.ANSWER)[0, 0]))
        if on_token is not None and answer.text:
            on_token(answer.text)
        return answer

    def snapshot(self, path: str | Path) -> Path:
        """The server's state for this stream, written here atomically (the format of ``MirasolStream.snapshot``)."""
        path = snapshot_destination(path)  # before the server is asked
        write_bytes_atomic(path, self._recovering(self._snapshot_bytes))
        return Path(path)

    def load_snapshot(self, path: str | Path) -> None:
        """Start this stream again on the server from a snapshot (after ``StreamLost``, or to move it).

        Atomic: the server checks the snapshot whole before it replaces the stream's state, so a bad
        one leaves the stream as it was. The file is checked here first (size, header), before
        anything is sent; a stream open on the server is restored without a START, and START is
        sent only where the server no longer holds it."""
        path = snapshot_file(path)
        read_snapshot_metadata(path)
        data = path.read_bytes()
        inputs = [self._input(p.SNAPSHOT_IN, p.strings(data))]
        try:
            out = self._infer("restore", inputs)
        except StreamLost:
            if not self._started:
                raise
            self._started = False  # the server lost it: open it anew, from the snapshot
            out = self._infer("restore", inputs)
        self.chunks_seen = int(out.as_numpy(p.CHUNK_INDEX)[0, 0])
        if self._journal is not None:
            self._journal.taken(data)  # the history to rebuild from starts here now

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
        try:
            return self._send(op, inputs, end)
        except StreamLost as lost:
            # The batcher forgot the sequence (another client's END on its correlation ID, or its idle
            # timeout) while the stream model still holds the stream for our key: START again with it.
            if not (self._key and self._started and BATCHER_LOST in str(lost)):
                raise
            self._started = False
            return self._send(op, inputs, end)

    def _send(self, op: str, inputs: list, end: bool):
        start = not self._started
        sent = [self._input(p.OP, p.strings(op)), self._input(p.STREAM_ID, p.strings(p.stream_name(self.stream_id))),
                *inputs]
        if self.token:
            sent.append(self._input(p.TOKEN, p.strings(self.token)))
        if self._key:
            sent.append(self._input(p.STREAM_KEY, p.strings(self._key)))
        if start and self.takeover:
            sent.append(self._input(p.TAKEOVER, np.array([[True]])))
        outputs = [self._grpc.InferRequestedOutput(name) for name in p.OUTPUTS_OF[op]]
        try:
            result = self._call(op, lambda: self._client.infer(
                self.model, sent, outputs=outputs, sequence_id=self.sequence_id, sequence_start=start,
                sequence_end=end, client_timeout=self.timeout_s, headers={p.STREAM_HEADER: str(self.stream_id)}))
        except (ServerFull, AccessDenied):
            if start and not end:
                self._end_refused()
            raise
        self._started = True
        key = result.as_numpy(p.STREAM_KEY_OUT)
        if key is not None and key.size and key.flat[0]:
            self._key = key.flat[0].decode() if isinstance(key.flat[0], bytes) else str(key.flat[0])
        return result

    def _end_refused(self) -> None:
        """After a refused START, end the sequence, so the server's batcher frees its slot at once."""
        from tritonclient.utils import InferenceServerException

        try:
            self._client.infer(self.model, [self._input(p.OP, p.strings("close"))], sequence_id=self.sequence_id,
                               sequence_start=False, sequence_end=True, client_timeout=self.timeout_s,
                               headers={p.STREAM_HEADER: str(self.stream_id)})
        except InferenceServerException:
            pass  # it goes at the batcher's idle timeout instead

    def _connect(self):
        return self._grpc.InferenceServerClient(self.url, **(self.tls.client_options() if self.tls else {}))

    def _call(self, what: str, fn):
        from tritonclient.utils import InferenceServerException

        deadline = time.monotonic() + self.connect_retry_s
        while True:
            try:
                return fn()
            except InferenceServerException as exc:
                # Never delivered (refused, e.g. while a server restarts): safe to send again, for a
                # bounded time, on a new channel (one that saw refusals backs off for up to minutes,
                # even once the server is back). Anything else is raised.
                if not _not_delivered(exc) or time.monotonic() > deadline:
                    self._raise(what, exc)
                time.sleep(0.25)
                old, self._client = self._client, self._connect()
                old.close()

    def _raise(self, what: str, exc) -> None:
        message, status = exc.message() or str(exc), str(exc.status())
        where = f"{self.url}, model {self.model!r}, stream {self.stream_id!r}"
        if p.FULL in message:
            raise ServerFull(f"{where}: refused a new stream: {message}") from None
        if p.DENIED in message:
            raise AccessDenied(f"{where}: {message.split(': ', 1)[-1]}") from None
        if any(marker in message for marker in LOST_MARKERS):
            raise StreamLost(f"{where}: the server no longer holds this stream (restarted, idle timeout, or "
                             f"closed); restore it from its last snapshot ({message})") from None
        if status in GONE_STATUSES:
            raise ServerGone(f"{where}: server unreachable during {what} ({status}: {message}); if it "
                              "restarted, the stream's state is gone: restore from its last snapshot") from None
        raise ServerError(f"{where}: {what} refused: {message}") from None


def _not_delivered(exc) -> bool:
    message = exc.message() or ""
    return str(exc.status()) == "StatusCode.UNAVAILABLE" and ("failed to connect" in message or "refused" in message)

