"""GStreamer, then a C++ extension, in one process: the unwinder clash fixed at its root
(runtime/native.py). Each case runs in a child: the failure being tested aborts the interpreter."""

import subprocess
import sys

import pytest

from tests.media import write_clip

CHILD = """
import sys
{first}
from mirasol_edge.runtime.decode.chunks import ChunkSpec, chunks
spec = ChunkSpec(fps=4.0, frames_per_chunk=4, image_size=32, sample_rate=16000, n_fft=400, hop_length=160, n_mels=32)
got = list(chunks(sys.argv[1], spec, decoder="gstreamer"))
assert got and got[0].decoder.startswith("gstreamer"), got
print("libunwind" if "libunwind.so" in open("/proc/self/maps").read() else "no libunwind", flush=True)
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
figure, axes = plt.subplots()
axes.imshow(got[0].frames[0])
axes.set_title("decoded by " + got[0].decoder)  # text: FreeType, whose C++ exceptions once aborted here
figure.savefig(sys.argv[2])
print("drew", len(got))
"""


@pytest.mark.gstreamer
@pytest.mark.parametrize("first", ["import av", "import torch, av", ""])
def test_a_gstreamer_decode_then_a_plot_in_one_process(tmp_path, first):
    pytest.importorskip("gi")
    clip = write_clip(tmp_path / "clip.mp4", seconds=2.0)
    child = subprocess.run([sys.executable, "-c", CHILD.format(first=first), str(clip), str(tmp_path / "plot.png")],
                           capture_output=True, text=True, timeout=120)
    assert child.returncode == 0, child.stderr[-2000:]
    assert "drew" in child.stdout and (tmp_path / "plot.png").stat().st_size > 1000


@pytest.mark.gstreamer
def test_without_the_fix_the_same_process_aborts(tmp_path):
    """The test above can fail: with the unwinder fix disabled the plot aborts, as it did before."""
    pytest.importorskip("gi")
    clip = write_clip(tmp_path / "clip.mp4", seconds=2.0)
    disabled = "import av\nimport mirasol_edge.runtime.native as n; n._done = True"
    child = subprocess.run([sys.executable, "-c", CHILD.format(first=disabled), str(clip), str(tmp_path / "p.png")],
                           capture_output=True, text=True, timeout=120)
    if "no libunwind" in child.stdout:
        pytest.skip("this GStreamer does not bring libunwind: there is no clash to show")
    assert child.returncode != 0 and "drew" not in child.stdout
