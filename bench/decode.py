"""Decode throughput and parity: PyAV vs GStreamer vs DALI (CPU, and NVDEC on a GPU) into model chunks.

Encodes its own clips (moving gradients with noise, beeps; untagged colours, as most cameras
write them), then decodes each with each decoder that can take it, in a child process per run so
peak RSS is that run's own:

- source frames per second and real-time factor (media seconds per wall second);
- per-chunk decode time over the first and last 10% of a long file (flat = sequential);
- peak RSS;
- parity: mean and 99th-percentile absolute difference of the chunk frames against PyAV's
  (up to 32 chunks spread over the clip), the colour policy's promise (colour.py);
- the conversion itself: colour.py's YUV -> RGB at the model's size per frame, against swscale's
  straight to RGB (PyAV's ``reformat``, the runtime's conversion before the policy), at 360p,
  720p, 1080p.

    .venv/bin/python bench/decode.py [--seconds 60] [--long-seconds 600] [--hd-seconds 20] [--preset edge]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from mirasol_edge.demo.synthetic import encode_mono_audio
from mirasol_edge.runtime import machine

CODECS = {  # codec -> (container, audio codec, audio rate, encoder options)
    "h264": ("mp4", "aac", 48000, {"preset": "veryfast", "bf": "2"}),
    "vp9": ("mkv", "libopus", 48000, {"deadline": "realtime", "cpu-used": "8"}),
    "mjpeg": ("mkv", "pcm_s16le", 44100, {}),
    "hevc": ("mp4", "aac", 48000, {"preset": "ultrafast"}),
}
ENCODERS = {"h264": "libx264", "vp9": "libvpx-vp9", "mjpeg": "mjpeg", "hevc": "libx265"}


def encode(path: Path, codec: str, seconds: float, size: tuple[int, int], fps: int) -> Path:
    ext, acodec, rate, options = CODECS[codec]
    path = path.with_suffix("." + ext)
    if path.exists():
        return path
    rng = np.random.default_rng(0)
    w, h = size
    x = np.linspace(0, 255, w, dtype=np.float32)[None, :, None]
    with av.open(str(path), "w") as out:
        v = out.add_stream(ENCODERS[codec], rate=fps)
        v.width, v.height = w, h
        v.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
        v.options = options
        a = out.add_stream(acodec, rate=rate)
        a.layout = "mono"
        for i in range(int(seconds * fps)):
            img = (x + 3 * i) % 256 + rng.normal(0, 8, (h, w, 1))
            img = np.clip(np.broadcast_to(img, (h, w, 3)) * [1.0, 0.7, 0.4], 0, 255).astype(np.uint8)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i
            frame.time_base = Fraction(1, fps)
            for p in v.encode(frame):
                out.mux(p)
        for p in v.encode():
            out.mux(p)
        t = np.arange(int(seconds * rate)) / rate
        samples = (0.3 * np.sin(2 * np.pi * 440 * t) * (np.floor(t) % 3 == 0)).astype(np.float32)
        encode_mono_audio(out, a, samples)
    return path


def run_one(path: str, decoder: str, preset: str, frames_out: str) -> dict:
    """In the child: decode the whole file, time every chunk, keep some chunks' frames for parity."""
    from mirasol_edge.runtime.config import MirasolConfig  # not toolkit's: no torch in the decoder's process
    from mirasol_edge.runtime.decode.chunks import ChunkSpec, chunks

    spec = ChunkSpec.from_config(MirasolConfig.preset(preset))
    with av.open(path) as probe:
        stream = probe.streams.video[0]
        duration = float(probe.duration / 1e6)
        source_frames = stream.frames or round(duration * float(stream.average_rate))
    every = max(1, round(duration / spec.chunk_seconds / 32))
    times, used, kept = [], None, {}
    start = tick = time.perf_counter()
    for chunk in chunks(path, spec, decoder=decoder):
        now = time.perf_counter()
        times.append((now - tick) * 1e3)
        used = chunk.decoder
        if chunk.index % every == 0:
            kept[chunk.index] = np.asarray(chunk.frames)
        tick = time.perf_counter()  # what keeping frames costs is not the decoder's
    wall = sum(times) / 1e3
    np.savez(frames_out, **{str(k): v for k, v in kept.items()})
    tenth = max(1, len(times) // 10)
    return {"decoder": used, "chunks": len(times), "media_seconds": round(duration, 2), "wall_seconds": round(wall, 3),
            "source_fps": round(source_frames / wall, 1), "realtime_factor": round(duration / wall, 2),
            "chunk_ms_first_10pct": round(float(np.median(times[:tenth])), 3),
            "chunk_ms_last_10pct": round(float(np.median(times[-tenth:])), 3),
            "peak_rss_mib": machine.peak_rss_mib(), "started_s": round(start, 3)}


def parity(frames: Path, reference: Path) -> dict:
    """Mean and p99 absolute difference (levels) of one run's kept frames against PyAV's."""
    a, b = np.load(frames), np.load(reference)
    common = sorted(set(a.files) & set(b.files), key=int)
    if not common:
        return {"vs_pyav": "no chunks in common"}
    diff = np.concatenate([np.abs(a[k].astype(np.int16) - b[k].astype(np.int16)).ravel() for k in common])
    return {"vs_pyav_mean_abs": round(float(diff.mean()), 3), "vs_pyav_p99": float(np.percentile(diff, 99)),
            "vs_pyav_chunks": len(common)}


def conversion_cost(size: int) -> list[dict]:
    """ms per frame: colour.py's conversion against swscale's straight to RGB (the conversion before
    the policy), each on frames as a decoder gives them: a new frame every time."""
    try:
        from mirasol_edge.runtime.decode.colour import bare
        from mirasol_edge.runtime.decode.pyav_source import PyAVPicture
    except ImportError:  # a runtime from before the colour policy
        return []
    rows = []
    rng = np.random.default_rng(0)
    for w, h in ((640, 360), (1280, 720), (1920, 1080)):
        frame = av.VideoFrame.from_ndarray(rng.integers(0, 256, (h * 3 // 2, w), dtype=np.uint8), format="yuv420p")
        cost = {}
        for name, convert in (("policy", lambda f: PyAVPicture(f).to_rgb(size)),
                              ("swscale", lambda f: f.reformat(width=size, height=size, format="rgb24").to_ndarray())):
            frames = [bare(frame) for _ in range(60)]
            convert(frames.pop())
            start = time.perf_counter()
            for f in frames:
                convert(f)
            cost[name] = (time.perf_counter() - start) / len(frames) * 1e3
        rows.append({"source": f"{w}x{h} yuv420p", "to": f"{size}x{size} rgb24",
                     "policy_ms": round(cost["policy"], 3), "swscale_ms": round(cost["swscale"], 3)})
    return rows


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(run_one(*sys.argv[2:6])))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--long-seconds", type=float, default=600)
    parser.add_argument("--hd-seconds", type=float, default=20, help="720p clips: the parity case (0: none)")
    parser.add_argument("--size", default="640x360")
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--preset", default="edge")
    parser.add_argument("--decoders", nargs="+", default=["pyav", "gstreamer", "dali-cpu", "dali-gpu"])
    parser.add_argument("--media", type=Path, default=Path("/tmp/mirasol-bench-media"))
    parser.add_argument("--out", type=Path, default=Path("bench/results/decode.json"))
    args = parser.parse_args()
    args.media.mkdir(parents=True, exist_ok=True)
    size = tuple(int(v) for v in args.size.split("x"))

    cases = []
    for codec in CODECS:
        cases.append((f"{codec} {args.size}@{args.fps} {args.seconds:g}s",
                      encode(args.media / f"{codec}-{args.seconds:g}", codec, args.seconds, size, args.fps)))
    if args.hd_seconds:  # untagged HD: where GStreamer's BT.709 guess and swscale's BT.601 disagreed
        for codec in ("h264", "vp9"):
            cases.append((f"{codec} 1280x720@{args.fps} {args.hd_seconds:g}s",
                          encode(args.media / f"{codec}-hd-{args.hd_seconds:g}", codec, args.hd_seconds,
                                 (1280, 720), args.fps)))
    for codec in ("h264", "vp9"):  # long and small: per-chunk cost and memory over a long file
        cases.append((f"{codec} 160x120@10 {args.long_seconds:g}s",
                      encode(args.media / f"{codec}-long-{args.long_seconds:g}", codec, args.long_seconds,
                             (160, 120), 10)))
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for n, (label, path) in enumerate(cases):
            ran = {}
            for decoder in args.decoders:
                kept = Path(scratch) / f"{n}-{decoder}.npz"
                child = subprocess.run([sys.executable, __file__, "--child", str(path), decoder, args.preset, str(kept)],
                                       capture_output=True, text=True)
                if child.returncode:
                    reason = child.stderr.strip().splitlines()[-1] if child.stderr.strip() else f"exit {child.returncode}"
                    row = {"clip": label, "requested": decoder, "skipped": reason[-200:]}
                else:
                    row = {"clip": label, "requested": decoder, **json.loads(child.stdout.strip().splitlines()[-1])}
                    row.pop("started_s", None)
                    ran[decoder] = kept
                    if decoder != "pyav" and "pyav" in ran:
                        row.update(parity(kept, ran["pyav"]))
                rows.append(row)
                print(json.dumps(row), flush=True)
    from mirasol_edge.runtime.config import MirasolConfig  # not toolkit's: no torch in the decoder's process
    from mirasol_edge.runtime.decode.chunks import ChunkSpec

    conversion = conversion_cost(ChunkSpec.from_config(MirasolConfig.preset(args.preset)).image_size)
    for row in conversion:
        print(json.dumps(row), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine.describe(), "preset": args.preset, "rows": rows,
                                    "conversion": conversion}, indent=1) + "\n")
    print(f"recorded {args.out}")


if __name__ == "__main__":
    main()
