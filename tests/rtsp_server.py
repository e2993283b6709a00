"""A real RTSP server for the tests (GstRtspServer, Debian's gir1.2-gst-rtsp-server-1.0): serves an
MP4's H.264 + AAC at rtsp://127.0.0.1:PORT/cam, in real time, each client from the start.

    python tests/rtsp_server.py PORT CLIP.mp4
"""

import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def main() -> None:
    port, clip = sys.argv[1], sys.argv[2]
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(port)
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(f"( filesrc location={clip} ! qtdemux name=d "
                       "d.video_0 ! queue ! h264parse ! rtph264pay name=pay0 pt=96 config-interval=1 "
                       "d.audio_0 ! queue ! aacparse ! rtpmp4gpay name=pay1 pt=97 )")
    server.get_mount_points().add_factory("/cam", factory)
    if server.attach(None) == 0:
        sys.exit(f"cannot listen on port {port}")
    print("ready", flush=True)
    GLib.MainLoop().run()


if __name__ == "__main__":
    main()
