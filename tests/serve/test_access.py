"""Streams belong to whoever opened them, against a real tritonserver serving a repository built
with an access file: tokens checked against the stream IDs each client may open, the stream key
the server mints on START, no silent resets, refusals that never tell whether a stream exists,
and no token anywhere in the repository."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from mirasol_edge.cli.build import main as build_main
from mirasol_edge.serve import protocol as p
from mirasol_edge.serve.access import AccessDenied, read_access_file
from tests.serve.test_isolation import _chunks, raw

pytest.importorskip("tritonclient.grpc")
YARD, GATE = "yard-token-0123456789-abcdefghij", "gate-token-9876543210-zyxwvutsrq"
ACCESS = f"""
[clients.yard]
token = "{YARD}"
streams = ["yard-*"]

[clients.gate]
token = "{GATE}"
streams = ["gate", "yard-3"]
"""


@pytest.fixture(scope="module")
def guarded(tmp_path_factory, tiny_engines):
    from mirasol_edge.serve.local_server import LocalTriton
    from tests.conftest import triton_python

    folder = tmp_path_factory.mktemp("access")
    (folder / "access.toml").write_text(ACCESS)
    repo = folder / "repo"
    result = CliRunner().invoke(build_main, ["triton", str(tiny_engines), "--out", str(repo), "--twin",
                                             "--access", str(folder / "access.toml"), "--idle-seconds", "30"])
    assert result.exit_code == 0, result.output
    with LocalTriton(repo, triton_python()) as server:
        server.repo_path = repo
        yield server


@pytest.fixture(scope="module")
def chunks(tiny_engines):
    return _chunks(tiny_engines, 31, 4)


def remote(server, stream_id, token=None, **kw):
    from mirasol_edge.serve.client import RemoteStream

    return RemoteStream(server.url, stream_id, token=token, timeout_s=60, **kw)


def test_the_repository_keeps_no_token(guarded):
    files = [f for f in guarded.repo_path.rglob("*") if f.is_file()]
    assert files and not any(YARD.encode() in f.read_bytes() or GATE.encode() in f.read_bytes() for f in files)
    access = json.loads((guarded.repo_path / p.STREAM_MODEL / "1" / "access.json").read_text())
    assert [c["name"] for c in access["clients"]] == ["yard", "gate"] and all(c["digest"] for c in access["clients"])


def test_a_client_opens_only_the_streams_its_token_allows(guarded, chunks):
    with remote(guarded, "yard-1", YARD) as mine:
        assert mine.push(chunks[0]).index == 0
        denied = []
        for stream_id, token in (("yard-1", GATE), ("yard-1", None), ("yard-1", "not-a-token-at-all-0000000000"),
                                 ("gate", YARD), ("yard-never-opened", GATE)):
            with pytest.raises(AccessDenied) as caught, remote(guarded, stream_id, token) as other:
                other.push(chunks[1])
            denied.append(str(caught.value).split(": ", 1)[1].replace(repr(stream_id), "STREAM"))
        # The same words whether the stream is open (yard-1), never opened, or not the client's at all.
        assert len(set(denied)) == 1 and "access denied" in denied[0]
        assert mine.push(chunks[1]).index == 1  # untouched by all of that
    with remote(guarded, "yard-3", GATE) as shared:  # a stream two clients' patterns allow
        assert shared.push(chunks[0]).index == 0


def test_no_silent_reset_and_an_explicit_takeover(guarded, chunks):
    from mirasol_edge.serve.client import StreamLost

    first = remote(guarded, "yard-7", YARD)
    try:
        assert [first.push(c).index for c in chunks[:2]] == [0, 1]
        with pytest.raises(AccessDenied, match="open on this server by another client"), \
                remote(guarded, "yard-7", YARD) as second:  # same tenant, same ID: refused, not reset
            second.push(chunks[2])
        assert first.push(chunks[2]).index == 2
        with remote(guarded, "yard-7", YARD, takeover=True) as taker:
            assert taker.push(chunks[0]).index == 0  # a fresh stream, by its own choice
            with pytest.raises(StreamLost):
                first.push(chunks[3])  # the old holder's key opens nothing now
            assert taker.push(chunks[1]).index == 1
    finally:
        first.closed = True  # its stream is gone: nothing to end


def test_requests_without_the_stream_key_get_nothing_whatever_their_correlation_id(guarded, chunks):
    with remote(guarded, "yard-9", YARD) as mine:
        mine.push(chunks[0])
        sid, names = p.sequence_id("yard-9"), {p.STREAM_ID: "yard-9", p.TOKEN: YARD, p.STREAM_KEY: None}
        for op, extra in (("ask", {p.QUESTION: "what colour is the square?"}), ("snapshot", {}),
                          ("push", {p.VIDEO: chunks[1].frames[None], p.MEL: chunks[1].mel[None]})):
            got = raw(guarded.url, sid, op, **names, **extra)
            assert isinstance(got, str) and p.NOT_OPEN in got, (op, got)
            forged = raw(guarded.url, sid, op, **{**names, p.STREAM_KEY: "0" * 32}, **extra)
            assert isinstance(forged, str) and p.NOT_OPEN in forged, (op, forged)
        borrowed = raw(guarded.url, sid, "push", **{**names, p.STREAM_ID: "gate", p.TOKEN: GATE})
        assert isinstance(borrowed, str) and "does not match its correlation ID" in borrowed
        # A close and an END from somebody else: answered as for a stream that does not exist, nothing closed.
        assert not isinstance(raw(guarded.url, sid, "close", end=True, **names), str)
        result = mine.push(chunks[1])  # the batcher forgot the sequence at that END: the key reattaches it
        assert result.index == 1
        with remote(guarded, "yard-10", YARD) as fresh:
            fresh.push(chunks[0])
            np.testing.assert_allclose(fresh.push(chunks[1]).outputs, result.outputs, rtol=1e-4, atol=1e-5)


def test_the_access_file_is_checked_by_name(tmp_path):
    cases = {'[clients.a]\ntoken = "short"\nstreams = ["x"]': "clients.a.token: a string of 24",
             f'[clients.a]\ntoken = "{YARD}"\nstreams = []': "clients.a.streams: a list of 1",
             f'[clients.a]\ntoken = "{YARD}"\nstreams = ["x"]\nrole = "admin"': "clients.a.role: unknown key",
             f'[clients.a]\ntoken = "{YARD}"\nstreams = ["x"]\n[clients.b]\ntoken = "{YARD}"\nstreams = ["y"]':
                 "clients.b.token: the same token as another client",
             "[users]\n": "unknown table 'users'", "clients = [": "not valid TOML"}
    for text, message in cases.items():
        path = tmp_path / "access.toml"
        path.write_text(text)
        with pytest.raises(Exception, match=message.replace(".", r"\.").replace("[", r"\[")):
            read_access_file(path)
