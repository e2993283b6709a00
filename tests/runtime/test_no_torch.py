"""The runtime needs no torch: a whole stream (open, push real decoded chunks, ask, snapshot,
restore) in a child process where ``import torch`` fails."""

import json
import subprocess
import sys
import textwrap

from mirasol_edge.assets import SAMPLE_CLIP

CHILD = textwrap.dedent('''
    import json, sys

    class NoTorch:  # any import of torch fails, as on a device with only the runtime installed
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError("torch is not installed here")

    sys.meta_path.insert(0, NoTorch())
    from mirasol_edge import ChunkSpec, MirasolStream, chunks

    engines, clip, snap = sys.argv[1:4]
    with MirasolStream.open(engines) as stream:
        spec = ChunkSpec.from_config(stream.engines.dir.config)
        pushed = [stream.push(c).index for c in chunks(clip, spec)]
        answer = stream.ask("what colour is the square?").text
        stream.snapshot(snap)
    with MirasolStream.restore(snap) as again:
        restored = again.ask("what colour is the square?").text
    print(json.dumps({"pushed": pushed, "answer": answer, "restored": restored,
                      "torch": any(m == "torch" or m.startswith("torch.") for m in sys.modules)}))
''')


def test_a_stream_runs_where_torch_cannot_be_imported(tiny_engines, tmp_path):
    result = subprocess.run([sys.executable, "-c", CHILD, str(tiny_engines), str(SAMPLE_CLIP), str(tmp_path / "s")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["pushed"] == list(range(len(out["pushed"]))) and len(out["pushed"]) >= 5
    assert out["answer"] and out["answer"] == out["restored"]
    assert out["torch"] is False


def test_the_torch_backend_says_what_to_install_where_torch_is_missing(tiny_engines):
    code = CHILD.split("from mirasol_edge import")[0] + textwrap.dedent('''
        from mirasol_edge import MirasolStream
        from mirasol_edge.runtime.backends import BackendError
        try:
            MirasolStream.open(sys.argv[1], backend="torch")
        except BackendError as exc:
            print("refused:", exc)
    ''')
    result = subprocess.run([sys.executable, "-c", code, str(tiny_engines)], capture_output=True, text=True, timeout=120)
    assert "refused:" in result.stdout and "mirasol-edge[build]" in result.stdout, result.stdout + result.stderr
