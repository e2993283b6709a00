"""GStreamer gives the model the same pixels as PyAV (and DALI): the colour policy on real encoded media.

Before the policy, GStreamer's frames differed from PyAV's by 7-11 levels on average here (p99
81-95): it took untagged HD as BT.709 where swscale took BT.601, read full-range H.264 in MP4 as
limited, and scaled without antialiasing. Now both hand over their decoded planes to colour.py.
Marked ``gstreamer``: runs after every other test (see test_gstreamer.py and tests/conftest.py).
"""

import numpy as np
import pytest

from tests.gstreamer_probe import require_gstreamer
from tests.runtime.colour_media import (
    BARS,
    MEAN_LEVELS,
    P99_LEVELS,
    Clips,
    Kind,
    bar_means,
    decoded,
    difference,
    edge_spec,
    kinds,
)

pytestmark = pytest.mark.gstreamer
require_gstreamer()

VP9 = [Kind("vp9", (1280, 720), None, None), Kind("vp9", (640, 480), "bt709", True)]


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    return Clips(tmp_path_factory.mktemp("colour-gst"))


@pytest.mark.parametrize("kind", kinds(codecs=("h264",)) + VP9, ids=lambda k: k.label)
def test_gstreamer_and_pyav_agree(media, kind):
    ours, theirs = decoded(media(kind), "gstreamer"), decoded(media(kind), "pyav")
    mean, p99 = difference(ours, theirs)
    assert mean <= MEAN_LEVELS and p99 <= P99_LEVELS, (mean, p99)
    # The same decoded planes through the same conversion: equal, for software decoding.
    assert np.array_equal(ours, theirs)


@pytest.mark.parametrize("kind", [Kind("h264", (1280, 720), None, None), Kind("h264", (640, 480), "bt601", True),
                                  Kind("h264", (1280, 720), "bt709", True)], ids=lambda k: k.label)
def test_colour_bars_come_back_through_gstreamer(media, kind):
    """Full range H.264 in MP4 included: GStreamer's qtdemux says limited; the file's bitstream says full."""
    got = decoded(media(kind, "bars"), "gstreamer")
    means = bar_means(got[len(got) // 2])
    assert np.abs(means - np.array(BARS)).max() <= 3, np.round(means).astype(int).tolist()


@pytest.mark.parametrize("kind", VP9, ids=lambda k: k.label)
def test_gstreamer_and_dali_cpu_agree(media, kind):
    pytest.importorskip("nvidia.dali")
    mean, p99 = difference(decoded(media(kind), "gstreamer"), decoded(media(kind), "dali-cpu"))
    assert mean <= MEAN_LEVELS and p99 <= P99_LEVELS, (mean, p99)


def test_a_live_description_uses_its_caps_colorimetry():
    """No file to read tags from (a camera, RTSP): the caps say. videotestsrc's I420 is tagged
    BT.601 limited; its solid colour comes back as painted."""
    from mirasol_edge.runtime.decode.chunks import chunks

    out = list(chunks("gst:videotestsrc num-buffers=20 pattern=solid-color foreground-color=0xffc83c64 ! "
                      "video/x-raw,format=I420,width=320,height=240,framerate=10/1", edge_spec()))
    assert np.abs(out[0].frames.reshape(-1, 3).mean(axis=0) - [200, 60, 100]).max() <= 3
