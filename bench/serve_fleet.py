"""A fleet against one server (the CPU twin under a real tritonserver, tiny model): how fast new
streams open, what each open stream costs the server in memory, whether that memory comes back
when they close, and how long a RemoteStream takes to recover its stream after the server
restarts (portable snapshot restored, chunks since replayed).

    .venv/bin/python bench/serve_fleet.py [--streams 2000] [--out bench/results/serve-fleet.json]

Memory is the server's processes' proportional set size (PSS, /proc/PID/smaps_rollup: shared pages
counted once across tritonserver and its Python-backend stubs) plus its /dev/shm pool.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from mirasol_edge.assets import BUNDLED_CHECKPOINT
from mirasol_edge.measure.stats import stats
from mirasol_edge.runtime import machine
from mirasol_edge.runtime.results import RawChunk
from mirasol_edge.serve.client import RemoteStream
from mirasol_edge.serve.local_server import LocalTriton
from mirasol_edge.serve.recovery import Recovery
from mirasol_edge.serve.repository import ServeOptions, write_repository
from mirasol_edge.toolkit.build import build
from mirasol_edge.toolkit.recipe import load_recipe


def _tree(root: int) -> list[int]:
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = [root], [root]
    while frontier:
        frontier = [pid for pid, parent in parents.items() if parent in frontier]
        found += frontier
    return found


def server_mib(server: LocalTriton) -> dict:
    pss = 0
    for pid in _tree(server.process.pid):
        try:
            text = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        pss += next(int(line.split()[1]) for line in text.splitlines() if line.startswith("Pss:"))
    shm = sum(f.stat().st_size for f in Path("/dev/shm").glob("*") if f.is_file())
    return {"pss_mib": round(pss / 1024, 1), "dev_shm_mib": round(shm / 2**20, 1)}


def fleet(url: str, server: LocalTriton, n: int, chunk: RawChunk) -> dict:
    idle = server_mib(server)

    def open_one(i: int) -> RemoteStream:
        stream = RemoteStream(url, f"fleet-{i}", recovery=None, timeout_s=120)
        stream.push(chunk)
        return stream

    start = time.perf_counter()
    with cf.ThreadPoolExecutor(16) as pool:
        streams = list(pool.map(open_one, range(n)))
    opened_s = time.perf_counter() - start
    full = server_mib(server)
    with cf.ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda s: s.close(), streams))
    time.sleep(1.0)
    released = server_mib(server)
    per_stream = (full["pss_mib"] + full["dev_shm_mib"] - idle["pss_mib"] - idle["dev_shm_mib"]) / n
    return {"streams": n, "opened_per_s": round(n / opened_s, 1), "memory_idle": idle, "memory_open": full,
            "memory_after_release": released, "kib_per_open_stream": round(per_stream * 1024, 1)}


def recovery_time(server: LocalTriton, streams: int, chunk: RawChunk) -> dict:
    """The first push after the server restarts (same ports, state gone): restore + replay + the push."""
    remotes = [RemoteStream(server.url, f"recover-{i}", recovery=Recovery(snapshot_every=4, keep_chunks=8))
               for i in range(streams)]
    for remote in remotes:
        for _ in range(6):  # a snapshot after pushes 1 and 5, one chunk since
            remote.push(chunk)
    server.kill()
    server.start()
    times = []
    for remote in remotes:
        start = time.perf_counter()
        result = remote.push(chunk)
        times.append((time.perf_counter() - start) * 1e3)
        assert result.index == 6 and remote.recoveries == 1, (result.index, remote.recoveries)
        remote.close()
    return {"streams": streams, "first_push_after_restart_ms": stats(times), "replayed_chunks_each": 1}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "serve-fleet.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=Path.cwd()) as tmp:
        engines = Path(tmp) / "tiny-cpu"
        build(load_recipe("cpu"), engines, checkpoint=BUNDLED_CHECKPOINT)
        repo = write_repository(engines, Path(tmp) / "repo", ServeOptions(max_streams=args.streams + 16,
                                                                          max_batch=64, idle_seconds=600), twin=True)
        rng = np.random.default_rng(0)
        server = LocalTriton(repo).start()
        try:
            probe = RemoteStream(server.url, "probe", recovery=None)
            chunk = RawChunk(rng.integers(0, 256, probe.video_shape, dtype=np.uint8),
                             rng.standard_normal(probe.mel_shape).astype(np.float32))
            probe.push(chunk)
            probe.close()
            result = {"fleet": fleet(server.url, server, args.streams, chunk),
                      "recovery": recovery_time(server, 16, chunk)}
        finally:
            server.stop()
    report = {"machine": machine.describe(), "cpus": os.cpu_count(), **result}
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    f, r = result["fleet"], result["recovery"]
    print(f"{f['streams']} streams opened at {f['opened_per_s']}/s, {f['kib_per_open_stream']} KiB each; memory idle "
          f"{f['memory_idle']}, open {f['memory_open']}, after release {f['memory_after_release']}; recovery after a "
          f"restart: first push p50 {r['first_push_after_restart_ms']['p50']:.1f} ms, max "
          f"{r['first_push_after_restart_ms']['max']:.1f} ms -> {args.out}")


if __name__ == "__main__":
    main()
