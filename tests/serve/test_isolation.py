"""One stream's failure is its own. Against a real tritonserver: a client sending every kind of bad
request straight to the stream model (past RemoteStream's own checks) while four cameras push
gets its own clear errors, the cameras get every push answered once each (as in-process streams
would), and the bad stream's state is as it was. In-process, with the stream model's Triton utils
stood in for: a batched group that fails is run again stream by stream, and a request whose
response can't be made fails alone, before its state moves."""

import concurrent.futures as cf
import threading

import numpy as np
import pytest
from safetensors.numpy import load, save

from mirasol_edge.runtime.results import RawChunk
from mirasol_edge.runtime.stream import MirasolEngines, MirasolStream
from mirasol_edge.serve import protocol as p

pytest.importorskip("tritonclient.grpc")
CAMERAS, PUSHES = 4, 40


def _chunks(engines_dir, seed: int, count: int) -> list[RawChunk]:
    with MirasolStream.open(engines_dir) as s:
        video, mel = s.engines.video_shape, s.engines.mel_shape
    rng = np.random.default_rng(seed)
    return [RawChunk(rng.integers(0, 256, video, dtype=np.uint8), rng.standard_normal(mel).astype(np.float32))
            for _ in range(count)]


def _in_process(engines_dir, chunks) -> list[np.ndarray]:
    with MirasolStream.open(engines_dir) as s:
        return [s.push(c).outputs for c in chunks]


KEYS: dict[tuple[str, int], str] = {}  # the stream keys raw() was given, as a client keeps its own


def raw(url: str, sid: int, op, *, start: bool = False, end: bool = False, **tensors):
    """One request as any gRPC client could send it: the result, or the server's error message.
    It sends the stream key the server gave it for ``sid`` (as a well-behaved client would);
    pass ``STREAM_KEY`` to send another, or ``STREAM_KEY=None`` to send none."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException, np_to_triton_dtype

    client = grpcclient.InferenceServerClient(url)
    if p.STREAM_KEY not in tensors and (url, sid) in KEYS:
        tensors[p.STREAM_KEY] = KEYS[(url, sid)]
    tensors = {k: v for k, v in tensors.items() if v is not None}
    inputs = []
    for name, value in {p.OP: op, **tensors}.items():
        array = value if isinstance(value, np.ndarray) else np.array([[value]], dtype=np.object_)
        tensor = grpcclient.InferInput(name, list(array.shape),
                                       "BYTES" if array.dtype == np.object_ else np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    try:
        result = client.infer(p.STREAM_MODEL, inputs, sequence_id=sid, sequence_start=start, sequence_end=end,
                              client_timeout=60)
    except InferenceServerException as exc:
        return exc.message()
    finally:
        client.close()
    key = result.as_numpy(p.STREAM_KEY_OUT)
    if key is not None and key.size and key.flat[0]:
        KEYS[(url, sid)] = key.flat[0].decode()
    return result


def snapshot_variant(good: bytes, chunks_seen: str | None = None, change=None) -> bytes:
    """A snapshot's bytes rewritten: its chunk count and its tensors."""
    import json

    tensors = load(good)
    meta = json.loads(good[8 : 8 + int.from_bytes(good[:8], "little")])["__metadata__"]
    if chunks_seen is not None:
        meta["chunks_seen"] = chunks_seen
    if change:
        change(tensors)
    return save(tensors, metadata=meta)


def _pushes(chunk: RawChunk) -> dict:
    return {p.VIDEO: chunk.frames[None], p.MEL: chunk.mel[None]}


def test_a_misbehaving_client_fails_only_its_own_requests(triton_server, tiny_engines):
    url = triton_server.url
    cameras = [_chunks(tiny_engines, seed, PUSHES) for seed in range(CAMERAS)]
    wanted = [_in_process(tiny_engines, c) for c in cameras]
    bad_chunks = _chunks(tiny_engines, 99, 2)
    with MirasolStream.open(tiny_engines) as local:
        local.push(bad_chunks[0])
        good_snapshot = local.snapshot_bytes()
    nan_mel = RawChunk(bad_chunks[1].frames, np.full_like(bad_chunks[1].mel, np.nan))
    inf_mel = RawChunk(bad_chunks[1].frames, np.where(bad_chunks[1].mel > 1, np.inf, bad_chunks[1].mel))
    bad = [  # (request, what the error must say)
        ({"op": "push", **_pushes(nan_mel)}, "chunk mel: 3200 of 3200 values are NaN or infinite"),
        ({"op": "push", **_pushes(inf_mel)}, "values are NaN or infinite"),
        ({"op": "push", p.MEL: bad_chunks[1].mel[None]}, "push needs VIDEO"),
        ({"op": b"\xff\xfepush"}, "input OP is not UTF-8 text"),
        ({"op": "x" * 1000}, "input OP is 1000 bytes"),
        ({"op": "explode"}, "unknown op 'explode'"),
        ({"op": "ask", p.QUESTION: b"\xc3\x28?"}, "input QUESTION is not UTF-8 text"),
        ({"op": "ask", p.QUESTION: "x" * 100_000}, "input QUESTION is 100000 bytes; at most 4096"),
        ({"op": "ask", p.QUESTION: "   "}, "question is empty"),
        ({"op": "ask", p.QUESTION: "hi", p.MAX_TOKENS: np.array([[-5]], np.int32)}, "max_new_tokens must be at least 1"),
        ({"op": "restore"}, "restore needs SNAPSHOT_IN"),
        ({"op": "restore", p.SNAPSHOT_IN: b"junk"}, "not a snapshot"),
        ({"op": "restore", p.SNAPSHOT_IN: snapshot_variant(good_snapshot, "1" + "0" * 30)}, "chunks_seen"),
        ({"op": "restore", p.SNAPSHOT_IN: snapshot_variant(good_snapshot, "-7")}, "chunks_seen '-7'"),
        ({"op": "restore", p.SNAPSHOT_IN: snapshot_variant(good_snapshot, change=lambda t: t["kv.1.value"].fill(np.nan))},
         "'kv.1.value' has 8192 NaN or infinite values"),
        ({"op": "restore", p.SNAPSHOT_IN: snapshot_variant(good_snapshot, change=lambda t: t.update(pos=t["pos"] - 6))},
         "'pos' is [-5]"),
    ]
    bad_sid = p.sequence_id("misbehaving")
    opened = raw(url, bad_sid, "push", start=True, **_pushes(bad_chunks[0]))
    assert not isinstance(opened, str), opened
    done, wrong = threading.Event(), []

    def misbehave() -> int:
        sent = 0
        while not done.is_set():
            for request, message in bad:
                got = raw(url, bad_sid, **request)
                if not isinstance(got, str) or message not in got:
                    wrong.append((request.get("op"), message, got if isinstance(got, str) else "accepted"))
                sent += 1
        return sent

    def camera(i: int):
        from mirasol_edge.serve.client import RemoteStream

        with RemoteStream(url, f"bystander-{i}") as remote:
            return [remote.push(c) for c in cameras[i]]

    with cf.ThreadPoolExecutor(CAMERAS + 1) as pool:
        rogue = pool.submit(misbehave)
        futures = [pool.submit(camera, i) for i in range(CAMERAS)]
        try:
            results = [f.result(timeout=300) for f in futures]
        finally:
            done.set()
        sent = rogue.result(timeout=300)
    assert not wrong, wrong[:3]
    assert sent >= len(bad)
    for i, got in enumerate(results):
        assert [r.index for r in got] == list(range(PUSHES)), f"camera {i}: a push lost or applied twice"
        for r, want in zip(got, wanted[i]):
            np.testing.assert_allclose(r.outputs, want, rtol=1e-4, atol=1e-5)
    # The bad stream's state is as its one good push left it: none of the failures moved it.
    after = raw(url, bad_sid, "push", end=True, **_pushes(bad_chunks[1]))
    assert not isinstance(after, str), after
    assert int(after.as_numpy(p.CHUNK_INDEX)[0, 0]) == 1
    np.testing.assert_allclose(after.as_numpy(p.OUTPUTS)[0], _in_process(tiny_engines, bad_chunks)[1],
                               rtol=1e-4, atol=1e-5)


# ---- the stream model in-process, its Triton utils stood in for -----------------------------
class FakeTensor:
    def __init__(self, name: str, value) -> None:
        self._name, self.value = name, np.asarray(value)

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self.value


class FakePb:
    Tensor = FakeTensor

    class TritonError:
        def __init__(self, message: str) -> None:
            self.message = message

    class InferenceResponse:
        def __init__(self, tensors=None, error=None) -> None:
            self.tensors = {t.name(): t.as_numpy() for t in tensors or ()}
            self.error = error

    @staticmethod
    def get_input_tensor_by_name(request, name: str):
        return request.inputs.get(name)


class FakeRequest:
    def __init__(self, sid: int, op: str, start: bool = False, end: bool = False, chunk: RawChunk | None = None,
                 key: str | None = None):
        self.sid = sid
        self.inputs = {p.OP: FakeTensor(p.OP, np.array([[op.encode()]], np.object_)),
                       p.START: FakeTensor(p.START, [[int(start)]]), p.END: FakeTensor(p.END, [[int(end)]])}
        if key is not None:  # the stream key its opener was given
            self.inputs[p.STREAM_KEY] = FakeTensor(p.STREAM_KEY, np.array([[key.encode()]], np.object_))
        if chunk is not None:
            self.inputs.update({p.VIDEO: FakeTensor(p.VIDEO, chunk.frames[None]),
                                p.MEL: FakeTensor(p.MEL, chunk.mel[None])})

    def correlation_id(self) -> int:
        return self.sid


class GroupedEngines:
    """The real engines, grouped by 4 as a batch-4 build's are; a group holding the stream named
    bad fails whole (as an engine that errs on one row fails the batch)."""

    def __init__(self, real: MirasolEngines) -> None:
        self.real, self.batch, self.bad, self.calls = real, 4, None, []

    def __getattr__(self, name):
        return getattr(self.real, name)

    def push_many(self, streams, chunks):
        self.calls.append(len(streams))
        if any(s is self.bad for s in streams):
            raise RuntimeError("engine failed on one row")
        return self.real.push_many(streams, chunks)


@pytest.fixture
def model(tiny_engines):
    from mirasol_edge.serve.stream_model import TritonPythonModel

    real = MirasolEngines(tiny_engines)
    m = TritonPythonModel()
    m.setup(FakePb, GroupedEngines(real), idle_seconds=60, max_streams=8)
    yield m
    m.finalize()
    real.close()


def test_a_failed_group_answers_its_other_streams(model, tiny_engines):
    chunks = _chunks(tiny_engines, 3, 8)
    first = model.execute([FakeRequest(sid, "push", start=True, chunk=chunks[sid]) for sid in range(1, 5)])
    assert all(r.error is None for r in first)
    model.engines.bad = model.streams[3]
    second = model.execute([FakeRequest(sid, "push", chunk=chunks[4 + sid - 1], key=model.keys[sid])
                            for sid in range(1, 5)])
    assert [r.error is None for r in second] == [True, True, False, True]
    assert "engine failed on one row" in second[2].error.message
    assert [int(r.tensors[p.CHUNK_INDEX][0, 0]) for r in (second[0], second[1], second[3])] == [1, 1, 1]
    assert model.engines.calls == [4, 4, 1, 1, 1, 1]  # the group, then each stream alone
    assert [model.streams[sid].chunks_seen for sid in range(1, 5)] == [2, 2, 1, 2]  # the failed one did not move


def test_a_response_that_cannot_be_made_fails_alone_before_the_state_moves(model, tiny_engines):
    chunks = _chunks(tiny_engines, 4, 4)
    model.execute([FakeRequest(sid, "push", start=True, chunk=chunks[sid - 1]) for sid in (1, 2)])
    model.streams[2].chunks_seen = 2**63  # an index no INT64 output can carry
    before = model.streams[2].state()
    out = model.execute([FakeRequest(sid, "push", chunk=chunks[sid + 1], key=model.keys[sid]) for sid in (1, 2)])
    assert out[0].error is None and int(out[0].tensors[p.CHUNK_INDEX][0, 0]) == 1
    assert "OverflowError" in out[1].error.message
    for name, value in model.streams[2].state().items():
        np.testing.assert_array_equal(value, before[name])


def test_a_bug_answers_every_request_with_its_error_instead_of_failing_the_batch(model, tiny_engines, monkeypatch):
    def broken():
        raise RuntimeError("bug in the idle release")

    monkeypatch.setattr(model, "_release_idle", broken)
    out = model.execute([FakeRequest(sid, "push", start=True, chunk=_chunks(tiny_engines, 5, 1)[0]) for sid in (1, 2)])
    assert [r.error.message for r in out] == ["RuntimeError: bug in the idle release"] * 2


def test_end_closes_the_stream_even_when_its_request_fails(model, tiny_engines):
    chunk = _chunks(tiny_engines, 6, 1)[0]
    model.execute([FakeRequest(7, "push", start=True, chunk=chunk)])
    out = model.execute([FakeRequest(7, "explode", end=True, key=model.keys[7])])
    assert "unknown op 'explode'" in out[0].error.message
    assert 7 not in model.streams and 7 not in model.last_seen
