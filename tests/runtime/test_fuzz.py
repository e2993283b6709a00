"""Mutated copies of real encoded clips (bytes flipped, cut, spliced, zeroed), each decoded in a
child process under a time limit: the outcome must be chunks or a DecodeError, never a crash, a
hang or a foreign exception."""

import json
import random
import subprocess
import sys
import textwrap
from collections import Counter

import pytest

from tests.media import write_clip

pytestmark = pytest.mark.slow
CASES, BATCHES = 200, 4

CHILD = textwrap.dedent('''
    import json, sys
    from mirasol_edge.runtime.config import MirasolConfig
    from mirasol_edge.runtime.decode.chunks import ChunkSpec, DecodeError, chunks
    spec = ChunkSpec.from_config(MirasolConfig.preset("tiny"))
    for path in sys.argv[1:]:
        try:
            outcome = f"chunks:{sum(1 for _ in chunks(path, spec))}"
        except DecodeError as exc:
            outcome = f"DecodeError:{type(exc).__name__}"
        except Exception as exc:  # what the test is looking for
            outcome = f"foreign:{type(exc).__name__}: {exc}"
        print(json.dumps({"path": path, "outcome": outcome}), flush=True)
''')


def _mutate(data: bytes, kind: str, rng: random.Random) -> bytes:
    data = bytearray(data)
    if kind == "flip":
        for _ in range(rng.randint(1, 64)):
            i = rng.randrange(len(data))
            data[i] ^= 1 << rng.randrange(8)
    elif kind == "cut":
        data = data[: rng.randrange(len(data))]
    elif kind == "splice":
        i, j = sorted(rng.sample(range(len(data)), 2))
        data = data[:i] + data[j:] + data[i:j]
    else:  # zero a stretch
        i = rng.randrange(len(data))
        data[i : i + rng.randint(16, 4096)] = bytes(len(data[i : i + 4096]))[: rng.randint(16, 4096)]
    return bytes(data)


def test_mutated_clips_give_chunks_or_a_decode_error(tmp_path):
    sources = [write_clip(tmp_path / "h264-aac.mp4", 3.0, fps=10),
               write_clip(tmp_path / "h264-nob.mp4", 2.0, fps=8, bframes=False),
               write_clip(tmp_path / "mjpeg-pcm.mkv", 2.0, fps=10, vcodec="mjpeg", acodec="pcm_s16le")]
    rng = random.Random(20261123)
    cases = []
    for i in range(CASES):
        source = sources[i % len(sources)]
        path = tmp_path / f"m{i:03d}{source.suffix}"
        path.write_bytes(_mutate(source.read_bytes(), ("flip", "cut", "splice", "zero")[i % 4], rng))
        cases.append(str(path))
    outcomes = {}
    for b in range(BATCHES):
        batch = cases[b::BATCHES]
        child = subprocess.run([sys.executable, "-c", CHILD, *batch], capture_output=True, text=True, timeout=240)
        seen = [json.loads(line) for line in child.stdout.splitlines() if line.startswith("{")]
        outcomes.update({s["path"]: s["outcome"] for s in seen})
        # a crash (a signal) or an early exit leaves cases without an outcome
        assert child.returncode == 0 and len(seen) == len(batch), (child.returncode, child.stderr[-2000:])
    foreign = {p: o for p, o in outcomes.items() if o.startswith("foreign")}
    assert not foreign, foreign
    counts = Counter(o.split(":")[0] for o in outcomes.values())
    assert counts["chunks"] + counts["DecodeError"] == CASES and counts["DecodeError"] > 0
    print("fuzz outcomes:", dict(counts), dict(Counter(o for o in outcomes.values() if o.startswith("DecodeError"))))
