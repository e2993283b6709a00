"""Limits that hold, against a real tritonserver with a small ``max_streams``: a START beyond it is
refused at once (ServerFull, exit code 10), never left waiting, even when other clients open
streams and never end them; a closed or idle stream's slot is free again and its memory goes back
to the system. ``mirasol-build triton`` refuses options out of their bounds by name."""

import concurrent.futures as cf
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from mirasol_edge.cli.build import main as build_main
from mirasol_edge.errors import UsageError
from mirasol_edge.serve import protocol as p
from mirasol_edge.serve.repository import LIMITS, ServeOptions, read_config
from tests.serve.test_isolation import _chunks, raw

pytest.importorskip("tritonclient.grpc")
# Idle release must not come mid-test on a loaded machine (CI's 2 cores): 3 s did, once 100 streams took longer to open.
MAX, IDLE = 100, 10.0
REFUSED_WITHIN_S = 3.0  # a refusal is an answer, not a wait (the finding: 59.5 s)


def _server(tmp_path_factory, tiny_engines, idle_seconds: float):
    from mirasol_edge.serve.local_server import LocalTriton
    from mirasol_edge.serve.repository import write_repository
    from tests.conftest import triton_python

    repo = write_repository(tiny_engines, tmp_path_factory.mktemp("limits") / "repo",
                            ServeOptions(max_streams=MAX, idle_seconds=idle_seconds, max_batch=8), twin=True)
    with LocalTriton(repo, triton_python()) as server:
        yield server


@pytest.fixture(scope="module")
def limited(tmp_path_factory, tiny_engines):
    yield from _server(tmp_path_factory, tiny_engines, IDLE)


@pytest.fixture(scope="module")
def held(tmp_path_factory, tiny_engines):
    """A server whose streams stay held however slowly a test goes: nothing is released idle."""
    yield from _server(tmp_path_factory, tiny_engines, 3600.0)


@pytest.fixture(scope="module")
def chunk(tiny_engines):
    return _chunks(tiny_engines, 21, 1)[0]


def _open(url: str, name: str, chunk):
    from mirasol_edge.serve.client import RemoteStream

    remote = RemoteStream(url, name)
    remote.push(chunk)
    return remote


def _refused_at_once(url: str, name: str, chunk) -> str:
    from mirasol_edge.serve.client import RemoteStream, ServerFull

    start = time.perf_counter()
    with RemoteStream(url, name) as remote, pytest.raises(ServerFull) as caught:
        remote.push(chunk)
    assert time.perf_counter() - start < REFUSED_WITHIN_S
    assert caught.value.exit_code == 10
    return str(caught.value)


def _wait_until_idle_released() -> None:
    time.sleep(IDLE + 1.5)


def test_the_repository_gives_the_batcher_room_beyond_max_streams(limited):
    config = read_config(Path(limited.repo) / p.STREAM_MODEL / "config.pbtxt")
    assert config.parameters["max_streams"].string_value == str(MAX)
    assert config.sequence_batching.oldest.max_candidate_sequences == 2 * MAX + 16


def test_a_full_server_refuses_a_new_stream_at_once(held, chunk):
    with cf.ThreadPoolExecutor(8) as pool:
        remotes = list(pool.map(lambda i: _open(held.url, f"full-{i}", chunk), range(MAX)))
    try:
        message = _refused_at_once(held.url, "one-too-many", chunk)
        assert f"server is full: {MAX} of its {MAX} streams are open" in message and "one-too-many" in message
        for i in range(2 * MAX):  # refused clients end their sequence: the batcher's room is not used up
            _refused_at_once(held.url, f"again-{i}", chunk)
        remotes.pop().close()  # a closed stream's slot is free at once
        remotes.append(_open(held.url, "in-its-place", chunk))
        _refused_at_once(held.url, "still-full", chunk)
    finally:
        for remote in remotes:
            remote.close()
    _open(held.url, "after-all-closed", chunk).close()


def test_starts_that_never_end_cannot_lock_new_cameras_out(limited, chunk):
    for i in range(MAX):  # a client that opens streams and never ends them
        assert not isinstance(raw(limited.url, 10_000 + i, "snapshot", start=True), str)
    for i in range(MAX):  # and goes on opening: refused, and it does not end those either
        got = raw(limited.url, 20_000 + i, "snapshot", start=True)
        assert isinstance(got, str) and "server is full" in got
    _refused_at_once(limited.url, "new-camera", chunk)
    _wait_until_idle_released()
    remote = _open(limited.url, "new-camera-later", chunk)  # the idle ones were released
    assert remote.chunks_seen == 1
    remote.close()


def _stub_private_kb(server) -> int:
    """Private memory of the stream model's process (the Python backend stub running mirasol/1)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (proc / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == server.process.pid and b"/mirasol/1/model.py" in cmdline:
            for line in (proc / "smaps_rollup").read_text().splitlines():
                if line.startswith("Private_Dirty:"):
                    return int(line.split()[1])
    raise AssertionError("no stream model process found")


def test_idle_streams_give_their_slot_and_memory_back(limited, chunk):
    _wait_until_idle_released()
    _open(limited.url, "warm", chunk).close()
    baseline = _stub_private_kb(limited)
    for round_ in range(3):  # open the server full, leave every stream idle, and again
        with cf.ThreadPoolExecutor(8) as pool:
            remotes = list(pool.map(lambda name: _open(limited.url, name, chunk),
                                    [f"idle-{round_}-{i}" for i in range(MAX)]))
        full = _stub_private_kb(limited)
        _refused_at_once(limited.url, f"full-{round_}", chunk)
        for remote in remotes:
            remote._client.close()  # gone without a goodbye, as a camera that lost power
        _wait_until_idle_released()
        _open(limited.url, f"poke-{round_}", chunk).close()  # the next request releases the idle ones
        after = _stub_private_kb(limited)
        assert full - baseline > 4_000, (baseline, full)  # the streams did hold memory
        assert after - baseline < (full - baseline) / 2, f"round {round_}: {baseline} -> {full} -> {after} kB"


@pytest.mark.parametrize("option, value, message", [
    ("--idle-seconds", "1e14", "must be from 0.1 to 86400, got 1e+14"),
    ("--idle-seconds", "1e12", "must be from 0.1 to 86400"),
    ("--idle-seconds", "nan", "got nan"),
    ("--idle-seconds", "inf", "got inf"),
    ("--idle-seconds", "0", "got 0"),
    ("--max-batch", "3e9", "'3e9' is not a valid integer"),
    ("--max-batch", "3000000000", "must be from 1 to 1024, got 3000000000"),
    ("--max-batch", "0", "must be from 1 to 1024, got 0"),
    ("--max-streams", "100000", "must be from 1 to 4096, got 100000"),
    ("--max-streams", "-1", "must be from 1 to 4096, got -1"),
])
def test_mirasol_build_triton_refuses_options_out_of_bounds(tiny_engines, tmp_path, option, value, message):
    result = CliRunner().invoke(build_main, ["triton", str(tiny_engines), "--out", str(tmp_path / "repo"),
                                             option, value])
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '{option}'" in result.output and message in result.output
    assert "Traceback" not in result.output and not (tmp_path / "repo").exists()


def test_serve_options_name_the_option_out_of_bounds():
    for field, value in (("idle_seconds", float("nan")), ("max_batch", 2**31), ("max_streams", 0),
                         ("max_streams", 2.0), ("queue_delay_us", -1)):
        option = "--" + field.replace("_", "-")
        with pytest.raises(UsageError, match=f"{option} must be"):
            ServeOptions(**{field: value})
    for field, (low, high) in LIMITS.items():
        ServeOptions(**{field: low})
        ServeOptions(**{field: high})


def test_a_rewrite_keeps_working_after_triton_loaded_the_models(limited, tiny_engines):
    """Triton's Python compiles the model.py files we wrote (``__pycache__``); they are ours to replace."""
    from mirasol_edge.serve.repository import write_repository

    assert list(Path(limited.repo).glob("*/1/__pycache__/model.*.pyc"))
    write_repository(tiny_engines, limited.repo, ServeOptions(max_streams=MAX, idle_seconds=IDLE, max_batch=8),
                     twin=True)
    assert np.all([(Path(limited.repo) / m / "config.pbtxt").is_file() for m in (p.STREAM_MODEL, "ar_step")])
