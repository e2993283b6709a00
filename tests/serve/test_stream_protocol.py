"""Embedding code is the same whether the stream runs in this process or on a Triton server:
``MirasolStream`` and ``RemoteStream`` are both ``mirasol_edge.Stream``s and answer alike."""

import pytest

from mirasol_edge import Stream
from mirasol_edge.assets import SAMPLE_CLIP
from mirasol_edge.runtime.decode.chunks import chunks
from mirasol_edge.runtime.stream import MirasolStream

pytest.importorskip("tritonclient.grpc")
QUESTION = "what colour is the square?"


def watch(stream: Stream, tmp_path, name: str) -> tuple[list[int], str, int]:
    """What a camera's code does, written once against the protocol."""
    indices = [stream.push(chunk).index for chunk in chunks(SAMPLE_CLIP, stream.spec)]
    pieces = []
    answer = stream.ask(QUESTION, on_token=pieces.append)
    assert "".join(pieces) == answer.text
    stream.snapshot(tmp_path / f"{name}.state")
    stream.load_snapshot(tmp_path / f"{name}.state")
    return indices, answer.text, stream.chunks_seen


def test_local_and_remote_streams_are_the_same_protocol(triton_server, tiny_engines, tmp_path):
    from mirasol_edge.serve.client import RemoteStream

    with MirasolStream.open(tiny_engines) as local, RemoteStream(triton_server.url, "protocol-cam") as remote:
        assert isinstance(local, Stream) and isinstance(remote, Stream)
        assert local.spec == remote.spec
        here, there = watch(local, tmp_path, "local"), watch(remote, tmp_path, "remote")
    assert here == there
    assert here[0] == list(range(6)) and here[2] == 6 and here[1]
