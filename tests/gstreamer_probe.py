"""Whether GStreamer (PyGObject + typelibs) works here, asked in a child so that collecting a test
module does not initialise GStreamer in the test process."""

import os
import subprocess
import sys

import pytest


def require_gstreamer() -> None:
    """Call at a module's top: a skip without GStreamer, a failure under MIRASOL_REQUIRE_GSTREAMER."""
    probe = subprocess.run([sys.executable, "-c", "from mirasol_edge.runtime.decode import gst; gst.gst()"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        if os.environ.get("MIRASOL_REQUIRE_GSTREAMER"):
            pytest.fail("GStreamer (PyGObject + typelibs) is missing; make test installs them", pytrace=False)
        pytest.skip("GStreamer (PyGObject + typelibs) is not installed", allow_module_level=True)
