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

What one stream does is its own: every step of a request (reading its inputs, preparing its
chunk, its push, its response) runs inside that request's error handling, and a batched group
that fails is run again one stream at a time, so the others get their answers. A push that
fails leaves its stream's state as it was (the runtime swaps the state in only on success), so
a retry never pushes twice. At most ``max_streams`` streams are open: a START beyond that is
refused at once (``ServerFull`` at the client), never left waiting; the batcher is given room
for more sequences than that, so the refusal comes from here. A restore replaces a stream only
once its snapshot has been checked whole: a bad one leaves the stream as it was.

Streams belong to whoever opened them. Every request names its stream (``STREAM_ID``, whose hash
must be the correlation ID) and, where the repository has an access file, carries its client's
token, checked against the stream IDs that client may open (``access.py``). Opening a stream
mints a 128-bit key that only its opener receives; every later request must carry it, or it gets
what a stream that does not exist gets: nothing, whatever its correlation ID. A START on an open
stream is refused unless it carries the key (then the stream goes on: the batcher forgot the
sequence, not us) or asks to take the stream over. Only the key's holder closes a stream.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from mirasol_edge.errors import UsageError
from mirasol_edge.runtime.engine_dir import EngineDir
from mirasol_edge.runtime.results import (
    MAX_QUESTION_BYTES,
    RawChunk,
    check_max_new_tokens,
    check_question,
    prepare_chunk,
    preview,
)
from mirasol_edge.runtime.stream import MirasolEngines, MirasolStream
from mirasol_edge.runtime.watch import Watch

from . import protocol as p
from .access import MAX_TOKEN_BYTES, AccessCheck, AccessDenied, new_stream_key, same_key
from .bls import BlsBackend
from .client import ServerFull

MAX_OP_BYTES = 16
MAX_STREAM_ID_BYTES = 256
KEY_BYTES = 32  # a stream key: 128 bits as hex


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        import triton_python_backend_utils as pb

        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        folder = Path(args["model_repository"]) / args["model_version"] / "engines"
        engines = EngineDir.open(folder, component_files=False)
        access = AccessCheck.load(folder.parent)
        if access.single_tenant:
            pb.Logger.log_warn("mirasol: no access file in this repository: a single-tenant lab setup, any client "
                               "that reaches the server may open any stream (mirasol-build triton --access)")
        self.setup(pb, MirasolEngines(engines, BlsBackend(pb, engines, params.get("state_memory", "cpu"))),
                   float(params.get("idle_seconds", "60")), int(params.get("max_streams", "64")), access)

    def setup(self, pb, engines: MirasolEngines, idle_seconds: float, max_streams: int,
              access: AccessCheck | None = None) -> None:
        """``pb`` is ``triton_python_backend_utils`` (or what stands in for it in a test)."""
        self.pb, self.engines = pb, engines
        self.idle_seconds, self.max_streams = idle_seconds, max_streams
        self.access = access or AccessCheck(None)
        self.keys: dict[int, str] = {}  # each open stream's key: only its opener has it
        self.streams: dict[int, MirasolStream] = {}
        self.last_seen: dict[int, float] = {}
        self._released = False  # streams closed since the heap was last given back

    def finalize(self) -> None:
        for stream in self.streams.values():
            stream.close()
        self.streams.clear()

    # ---- one batch of requests from any number of streams -----------------------------
    def execute(self, requests: list) -> list:
        responses: list = [None] * len(requests)
        try:
            self._execute(requests, responses)
        except Exception as exc:  # a bug here must not fail the batch: each request still gets an answer
            for i, response in enumerate(responses):
                if response is None:
                    responses[i] = self._error(exc)
        finally:
            self._give_back_memory()
        return responses

    def _execute(self, requests: list, responses: list) -> None:
        self._release_idle()
        pushes: list[tuple[int, MirasolStream, RawChunk]] = []
        ending: list[int] = []
        for i, request in enumerate(requests):
            try:  # one stream's bad request is its own error, not the batch's
                responses[i] = self._request(i, request, pushes, ending)
            except Exception as exc:
                responses[i] = self._error(exc)
        self._push(pushes, responses)
        for sid in ending:
            self._close(sid)

    def _request(self, i: int, request, pushes: list, ending: list):
        """The response to one request, or None for a push (queued to run with the others)."""
        sid = request.correlation_id()
        name = self._stream_name(request, sid)
        self.access.check(self._given(request, p.TOKEN, MAX_TOKEN_BYTES), name)  # before anything is looked up
        held, key = sid in self.streams, self._given(request, p.STREAM_KEY, KEY_BYTES)
        owner = held and same_key(key, self.keys[sid])
        if self._flag(request, p.END) and (owner or not held):
            ending.append(sid)  # only the key's holder closes a stream
        op = self._text(request, p.OP, MAX_OP_BYTES)
        if op not in p.OPS:
            raise UsageError(f"unknown op {preview(op)}; expected one of {', '.join(p.OPS)}")
        start = self._flag(request, p.START)
        if held and not owner and (start or op == "restore"):
            if not self._flag(request, p.TAKEOVER):
                raise AccessDenied(f"stream {name!r}: {p.DENIED}: it is open on this server by another client "
                                   "(its stream key); RemoteStream(..., takeover=True) replaces it")
            self._close(sid)  # taken over: the holder's key no longer opens it
            held = owner = False
        if op == "restore":
            return self._restore(sid, request, owner)
        if not owner and op == "close":
            return self._index(0, "")  # nothing of the caller's held here: closing it is done
        opened = start and not held and key is None  # a START with a key reattaches: it never opens a fresh state
        if opened:
            self._open(sid)
        elif not owner:  # what a stream that does not exist gets, whatever its correlation ID
            raise LookupError(f"stream {name!r} {p.NOT_OPEN} (released after {self.idle_seconds:g} s idle, "
                              "closed, taken over, or the server restarted); start it again or restore a snapshot")
        stream, key = self.streams[sid], self.keys[sid]
        self.last_seen[sid] = time.monotonic()
        try:
            if op == "push":
                np.int64(stream.chunks_seen)  # its response can be made: checked before the state moves
                pushes.append((i, stream, self._chunk(request), key))
                return None
            return self._respond(self._other(op, request, stream), key)
        except Exception:
            if opened:  # its opener never got the key: a stream left open would lock it out
                self._close(sid)
            raise

    def _stream_name(self, request, sid: int) -> str:
        """The stream's name; a name whose hash is not the correlation ID is refused (a request may not
        borrow another stream's name for its access check). Single-tenant, it may be left out."""
        name = self._given(request, p.STREAM_ID, MAX_STREAM_ID_BYTES)
        if name is None:
            if self.access.single_tenant:
                return f"#{sid}"
            raise AccessDenied(f"stream #{sid}: {p.DENIED}: the request names no stream ({p.STREAM_ID})")
        try:  # "#123": the integer correlation ID 123 itself; any other name: its hash
            number = name[1:] if name.startswith("#") else None
            matches = p.sequence_id(int(number) if number and number.isdigit() else name) == sid
        except ValueError:
            matches = False
        if not matches:
            raise AccessDenied(f"stream {preview(name)}: {p.DENIED}: its name does not match its correlation ID")
        return name

    def _push(self, pushes: list, responses: list) -> None:
        batch = self.engines.batch
        for at in range(0, len(pushes), batch):
            self._push_group(pushes[at : at + batch], responses)

    def _push_group(self, group: list, responses: list) -> None:
        try:
            results = self.engines.push_many([s for _, s, _, _ in group], [c for _, _, c, _ in group])
        except Exception as exc:
            if len(group) == 1:
                responses[group[0][0]] = self._error(exc)
                return
            for item in group:  # a group fails whole: each stream alone, so the others still answer
                self._push_group([item], responses)
            return
        for (i, _, _, key), result in zip(group, results):
            try:
                t = result.timings
                responses[i] = self._respond({
                    p.OUTPUTS: np.asarray(result.outputs)[None],
                    p.CHUNK_INDEX: np.array([[result.index]], np.int64),
                    p.TIMINGS: np.array([[t.upload_ms, t.encode_ms, t.ar_ms, t.total_ms]], np.float64),
                    p.EVENTS: p.strings(json.dumps([e.to_dict() for e in result.events]))}, key)
            except Exception as exc:
                responses[i] = self._error(exc)

    def _other(self, op: str, request, stream: MirasolStream) -> dict:
        if op == "ask":
            question = check_question(self._text(request, p.QUESTION, MAX_QUESTION_BYTES))
            limit = self._optional(request, p.MAX_TOKENS)
            wanted = int(limit.flat[0]) if limit is not None and limit.size else 0
            answer = stream.ask(question, check_max_new_tokens(wanted or None))  # 0: the engines' limit
            return {p.ANSWER: p.strings(json.dumps(dataclasses.asdict(answer)))}
        if op == "snapshot":
            return {p.SNAPSHOT_OUT: p.strings(stream.snapshot_bytes())}
        if op == "watch":  # evidence stays with the client: a server writes no files for it
            text = self._text(request, p.WATCH, p.MAX_WATCH_BYTES)
            try:
                settings = json.loads(text)
            except ValueError as exc:
                raise UsageError(f"input {p.WATCH} is not JSON ({exc})") from None
            if not isinstance(settings, dict) or settings.get("evidence_seconds", 0):
                raise UsageError(f"input {p.WATCH}: a watch's settings as a JSON object, without evidence_seconds")
            stream._watching.add(Watch.from_dict(settings, f"input {p.WATCH}"))
            return {p.WATCHES: p.strings(json.dumps(stream._watching.to_data()))}
        if op == "unwatch":
            stream.unwatch(self._text(request, p.WATCH, p.MAX_WATCH_BYTES))
            return {p.WATCHES: p.strings(json.dumps(stream._watching.to_data()))}
        return {p.CHUNK_INDEX: np.array([[stream.chunks_seen]], np.int64)}  # close

    def _restore(self, sid: int, request, owner: bool):
        """The stream from a snapshot, replacing what it held only once the snapshot is checked whole;
        its holder keeps its key, a stream opened by the restore gets a new one."""
        data = self._optional(request, p.SNAPSHOT_IN)
        if data is None or not data.size:
            raise UsageError(f"restore needs {p.SNAPSHOT_IN}")
        if sid not in self.streams:
            self._check_room()
        fresh = self.engines.stream()
        try:
            fresh.load_snapshot_bytes(bytes(data.flat[0]), where=f"snapshot sent for stream {sid}")
        except Exception:
            fresh.close()
            raise
        key = self.keys[sid] if owner else new_stream_key()
        self._close(sid)
        self.streams[sid], self.last_seen[sid], self.keys[sid] = fresh, time.monotonic(), key
        return self._index(fresh.chunks_seen, key)

    # ---- streams ------------------------------------------------------------------------
    def _check_room(self) -> None:
        if len(self.streams) >= self.max_streams:
            raise ServerFull(f"{p.FULL}: {len(self.streams)} of its {self.max_streams} streams are open; a stream "
                             f"is released when closed or after {self.idle_seconds:g} s idle: try again later "
                             "or another server")

    def _open(self, sid: int) -> None:
        if sid not in self.streams:
            self._check_room()
        self._close(sid)
        self.streams[sid] = self.engines.stream()
        self.last_seen[sid], self.keys[sid] = time.monotonic(), new_stream_key()

    def _close(self, sid: int) -> None:
        stream = self.streams.pop(sid, None)
        self.last_seen.pop(sid, None)
        self.keys.pop(sid, None)
        if stream is not None:
            self._released = True
            stream.close()

    def _release_idle(self) -> None:
        now = time.monotonic()
        for sid in [s for s, t in self.last_seen.items() if now - t > self.idle_seconds]:
            self._close(sid)

    def _give_back_memory(self) -> None:
        """After streams closed, the heap they used goes back to the system (glibc keeps freed
        memory otherwise: 2,000 streams' worth stayed held after they were released)."""
        if not self._released:
            return
        self._released = False
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # not glibc: nothing to ask
            pass

    # ---- tensors ------------------------------------------------------------------------
    def _optional(self, request, name: str) -> np.ndarray | None:
        tensor = self.pb.get_input_tensor_by_name(request, name)
        return None if tensor is None else tensor.as_numpy()

    def _text(self, request, name: str, limit: int) -> str:
        value = self._optional(request, name)
        if value is None or not value.size:
            raise UsageError(f"input {name} not given")
        item = value.flat[0]
        raw = item if isinstance(item, bytes) else str(item).encode("utf-8", "surrogatepass")
        if len(raw) > limit:
            raise UsageError(f"input {name} is {len(raw)} bytes; at most {limit} are taken")
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise UsageError(f"input {name} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None

    def _given(self, request, name: str, limit: int) -> str | None:
        """An optional text input: None when not given."""
        value = self._optional(request, name)
        return None if value is None or not value.size else self._text(request, name, limit)

    def _flag(self, request, name: str) -> bool:
        value = self._optional(request, name)
        return value is not None and value.size > 0 and bool(value.flat[0])

    def _chunk(self, request) -> RawChunk:
        video = self._optional(request, p.VIDEO)
        if video is None:
            raise UsageError(f"push needs {p.VIDEO}")
        mel = self._optional(request, p.MEL)
        chunk = RawChunk(video[0], None if mel is None else mel[0])
        engines = self.engines
        prepare_chunk(chunk, engines.video_shape, engines.video_dtype, engines.mel_shape)  # its own error, early
        return chunk

    def _index(self, index: int, key: str):
        return self._respond({p.CHUNK_INDEX: np.array([[index]], np.int64)}, key)

    def _respond(self, tensors: dict, key: str):
        """A success, with the stream's key: only its holder (or its opener, just now) gets one."""
        tensors = {**tensors, p.STREAM_KEY_OUT: p.strings(key)}
        return self.pb.InferenceResponse([self.pb.Tensor(name, value) for name, value in tensors.items()])

    def _error(self, exc: Exception):
        return self.pb.InferenceResponse(error=self.pb.TritonError(f"{type(exc).__name__}: {exc}"))
