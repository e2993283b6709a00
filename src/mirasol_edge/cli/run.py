"""``mirasol-run``: stream a file, camera or URL through built engines and answer questions.

Exit codes (``mirasol_edge.errors``, the README's table): 0 done; 2 bad usage, engines or backend;
3 the source cannot be decoded; 8 a snapshot problem; 9 a Triton server; 130 interrupted (a
``--snapshot`` is still written).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import click
import numpy as np

from mirasol_edge.assets import SAMPLE_CLIP, SAMPLE_QUESTIONS
from mirasol_edge.console import err, fail
from mirasol_edge.measure.stats import stats
from mirasol_edge.runtime.backends.base import NAMES
from mirasol_edge.runtime.decode.chunks import LIVE_PREFIXES
from mirasol_edge.runtime.decode.registry import names as decoder_names
from mirasol_edge.runtime.results import check_question
from mirasol_edge.runtime.watch import slug

from .report import Reporter
from .view_options import ViewPlan, linger, precision_of, start_view, tap, view_options
from .watching import WatchPlan, close_sinks, start_watching, watch_options


def _expected_chunks(source: str, chunk_seconds: float) -> int | None:
    """For files, how many chunks to expect (for the progress bar); None for live sources."""
    from mirasol_edge.runtime.decode.chunks import DecodeError, open_media

    if source.startswith(LIVE_PREFIXES):
        return None
    try:
        container = open_media(source)
    except DecodeError:
        return None  # the decode loop reports the error properly
    try:
        return int(np.ceil(container.duration / 1e6 / chunk_seconds)) if container.duration else None
    finally:
        container.close()


def _cpu_threads(engine_dir: str, backend: str, device: str, threads: int, decoding_ahead: bool) -> dict:
    """ONNX Runtime's thread count on the CPU: a file decodes on its own thread beside the engines,
    so they leave it a core (edge on 2 cores: 1.55x the real-time factor of decode-then-push,
    bench/results/overlap.json). Other backends take no such option."""
    from mirasol_edge.runtime.manifest import ManifestError, load_manifest

    try:
        built_for = load_manifest(engine_dir).backend.name
    except ManifestError:
        return {}  # opening the engines says what is wrong
    if backend not in ("auto", "onnxruntime") or built_for != "onnxruntime" or device not in ("auto", "cpu"):
        return {}
    if threads:
        return {"threads": threads}
    cores = os.cpu_count() or 1
    return {"threads": cores - 1} if decoding_ahead and cores > 1 else {}


def _load_questions(path: str) -> dict[str, str]:
    """question -> expected answer, from {"qa": [{"question", "answer"}]} or a bare list of those."""
    try:
        data = json.loads(open(path).read())
        items = data["qa"] if isinstance(data, dict) else data
        return {item["question"]: item["answer"] for item in items}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise click.UsageError(f"{path}: expected {{\"qa\": [{{\"question\": ..., \"answer\": ...}}]}} ({exc})") from None


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("source", required=False)
@click.option("--engines", "-e", "engine_dir", type=click.Path(file_okay=False),
              help="an engine directory built by mirasol-build")
@click.option("--server", metavar="HOST:PORT", help="stream to a Triton server (gRPC) instead of local engines")
@click.option("--stream-id", help="this stream's name in events and evidence; with --server also its ID (routers "
              "pin it to a server); default: a new one")
@click.option("--ask", "-a", "questions", multiple=True, help="a question; repeat for several")
@click.option("--questions", "questions_file", type=click.Path(dir_okay=False, exists=True),
              help="a JSON file of questions with expected answers ({\"qa\": [{\"question\", \"answer\"}]}, as "
                   "the bundled sample); asked at the end, answers shown beside the expected ones")
@click.option("--sample", is_flag=True, help="stream the bundled sample clip and ask its questions")
@click.option("--ask-every", type=click.IntRange(min=1), help="also ask every N chunks (default: at the end only)")
@click.option("--backend", "-b", type=click.Choice(NAMES),
              default="auto", show_default=True, help="auto runs the engines the manifest names")
@click.option("--device", default="auto", show_default=True, help="cpu, cuda or auto")
@click.option("--max-chunks", type=click.IntRange(min=1), help="stop after this many chunks")
@click.option("--last", type=click.Choice(["pad", "drop"]), default="pad", show_default=True,
              help="the last partial chunk: pad it (flagged) or drop it")
@click.option("--drop", type=click.Choice(["oldest", "newest", "none"]),
              help="live sources, when the model falls behind: drop the oldest waiting chunk (default), "
                   "the newest, or none (the decoder waits; the default for files)")
@click.option("--reconnects", type=click.IntRange(min=0), default=3, show_default=True,
              help="live sources: reopen a failed source this many times in a row before giving up")
@click.option("--threads", type=click.IntRange(min=0), default=0, show_default=True,
              help="ONNX Runtime CPU threads; 0: all cores, or all but one while a file decodes on its own thread")
@click.option("--decoder", type=click.Choice(["auto", *decoder_names()]), default="auto", show_default=True,
              help="who decodes the video (auto: NVDEC through DALI on a GPU, GStreamer on a Jetson, else PyAV)")
@click.option("--audio", "audio_source", metavar="SOURCE",
              help="audio from a second source: alsa:hw:2,0, pulse:, gst:DESCRIPTION or a file (GStreamer)")
@click.option("--audio-offset", type=float, default=0.0, show_default=True,
              help="seconds added to the second audio source's timestamps (a microphone known to lag)")
@click.option("--restore", type=click.Path(dir_okay=False), help="start from a snapshot of an earlier run")
@click.option("--snapshot", type=click.Path(dir_okay=False), help="write the state here at the end")
@click.option("--json", "as_json", is_flag=True, help="JSON lines for scripts: chunk, answer and summary events")
@click.option("--token-file", type=click.Path(dir_okay=False),
              help="with --server: a file holding this client's access token (a server built with --access)")
@click.option("--takeover", is_flag=True,
              help="with --server: open the stream even if another client holds it (that client loses it)")
@click.option("--tls-ca", type=click.Path(dir_okay=False), metavar="FILE",
              help="with --server: connect over TLS, checking the server's certificate against this CA (PEM)")
@click.option("--tls-cert", type=click.Path(dir_okay=False), metavar="FILE",
              help="with --server: this client's certificate (PEM), for a server that asks for one (mutual TLS)")
@click.option("--tls-key", type=click.Path(dir_okay=False), metavar="FILE", help="the private key of --tls-cert (PEM)")
@watch_options
@view_options
def main(source, engine_dir, server, stream_id, questions, questions_file, sample, ask_every, backend, device, max_chunks,
         last, drop, reconnects, threads, decoder, audio_source, audio_offset, restore, snapshot, as_json, token_file,
         takeover, tls_ca, tls_cert, tls_key, view, view_token, view_linger, **watching):
    """Stream SOURCE (a file, /dev/videoN or an rtsp:// or http:// URL) through the engines in
    ENGINES chunk by chunk, at constant cost per chunk, and answer the questions.

    \b
    mirasol-run --sample --engines engines/tiny-cpu          # the bundled clip and its questions
    mirasol-run clip.mp4 --engines engines/tiny-cpu --ask "what colour is the square?"
    mirasol-run rtsp://cam/stream -e engines/rtx -a "is anyone there?" --ask-every 30 --json
    mirasol-run rtsp://cam/stream -e engines/rtx --watch "is anyone at the door?" --evidence clips/ --mqtt mqtt://broker:1883/site
    mirasol-run rtsp://cam/stream --server triton:8001 --stream-id cam-7 -a "is anyone there?"
    mirasol-run rtsp://cam/stream --server router:8443 --tls-ca ca.pem --tls-cert cam-7.pem --tls-key cam-7.key
    """
    stream, sinks, page = None, [], None
    try:
        plan = WatchPlan.from_options(**watching)
        view_plan = ViewPlan.from_options(view, view_token, view_linger)
        source, questions, expected = _questions(source, questions, questions_file, sample, ask_every)
        if (engine_dir is None) == (server is None):
            raise click.UsageError("give --engines (run here) or --server (run on a Triton server), one of them")
        live_source = source.startswith(LIVE_PREFIXES) or drop not in (None, "none")
        remote = _remote_options(server, token_file, takeover, tls_ca, tls_cert, tls_key)
        stream, backend_info = _open_stream(engine_dir, server, stream_id, restore, backend, device,
                                            _cpu_threads(engine_dir, backend, device, threads, not live_source)
                                            if engine_dir else {}, remote)
        reporter = Reporter(as_json, None if max_chunks else _expected_chunks(source, stream.spec.chunk_seconds))
        if engine_dir:  # events, evidence files and MQTT topics name the stream
            stream.name = slug(stream_id or Path(source).stem or "stream")
        sinks = start_watching(stream, plan, reporter)
        page, reporter = start_view(view_plan, stream, reporter, {"source": source, "engines": engine_dir or server,
                                    "backend": backend_info, "precision": precision_of(stream),
                                    "stream": getattr(stream, "name", None)})
        chunks = _open_chunks(source, stream.spec, live_source, drop, reconnects,
                              dict(last=last, decoder=decoder, audio=audio_source, audio_offset=audio_offset))
        try:
            run = _push_all(stream, chunks, reporter, questions, ask_every, max_chunks, tap(page, chunks))
        finally:
            chunks.close()
        correct = _answer_all(stream, questions, expected, reporter)
        if snapshot:
            stream.snapshot(snapshot)
        delivered, sinks = close_sinks(sinks), []
        reporter.summary({"source": source, "engines": engine_dir or server, **run, "backend": backend_info,
                          "snapshot": snapshot, "correct": f"{correct}/{len(expected)}" if expected else None,
                          "dropped": chunks.stats.dropped, "reconnects": chunks.stats.reconnects,
                          **({"sinks": delivered} if delivered else {})})
        linger(page, view_plan)
    except click.UsageError:
        raise
    except KeyboardInterrupt:
        if stream is not None and snapshot:
            stream.snapshot(snapshot)
        err.print("interrupted" + (f"; state saved to {snapshot}" if snapshot else ""))
        sys.exit(130)
    except Exception as exc:
        fail("mirasol-run", exc)
    finally:
        close_sinks(sinks)
        if page is not None:
            page.close()
        if stream is not None:
            stream.close()


def _read_token(path: str | None) -> str | None:
    """The token in ``--token-file`` (its first line), read before anything connects."""
    if path is None:
        return None
    try:
        token = open(path, encoding="utf-8").readline().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise click.UsageError(f"--token-file {path}: cannot read it ({exc})") from None
    if not token:
        raise click.UsageError(f"--token-file {path}: empty; it holds the token of the server's access file")
    return token


def _questions(source, questions, questions_file, sample, ask_every) -> tuple[str, list[str], dict]:
    """The source, the questions to ask (--ask, then the questions file's), and the expected answers;
    everything refused here is refused before anything opens."""
    if sample:
        source, questions_file = source or str(SAMPLE_CLIP), questions_file or str(SAMPLE_QUESTIONS)
    if source is None:
        raise click.UsageError("give a SOURCE (a file, /dev/videoN, an rtsp:// or http:// URL) or --sample")
    expected = _load_questions(questions_file) if questions_file else {}
    questions = list(questions) + [q for q in expected if q not in questions]
    for q in questions:  # an empty or over-long --ask
        check_question(q, "--ask question")
    if ask_every and not questions:
        raise click.UsageError("--ask-every needs at least one --ask")
    return source, questions, expected


def _remote_options(server, token_file, takeover, tls_ca, tls_cert, tls_key) -> dict:
    """RemoteStream's own options; the token and TLS files are read and checked before anything connects."""
    remote = {"token": _read_token(token_file), "takeover": takeover}
    if tls_ca or tls_cert or tls_key:
        if not server:
            raise click.UsageError("--tls-ca, --tls-cert and --tls-key go with --server")
        from mirasol_edge.serve.tls import ClientTLS

        remote["tls"] = ClientTLS(tls_ca, tls_cert, tls_key)
    return remote


def _open_chunks(source, spec, live_source: bool, drop, reconnects, decode: dict):
    """A live source (dropping under back-pressure, reconnecting), or a file whose next chunk decodes
    on its own thread while this one runs."""
    from mirasol_edge.runtime.decode.live import LiveSource, decode_ahead

    if live_source:
        return LiveSource(source, spec, drop=drop or "oldest", max_reconnects=reconnects,
                          reconnect_on_end=source.startswith(LIVE_PREFIXES), **decode)
    return decode_ahead(source, spec, **decode)


def _answer_all(stream, questions: list[str], expected: dict, reporter) -> int:
    """Each question asked of the stream as it now stands; how many gave the expected answer."""
    correct = 0
    for q in questions:
        answer = stream.ask(q)
        correct += q in expected and answer.text == expected[q]
        reporter.answer(q, answer, expected.get(q))
    return correct


def _open_stream(engine_dir, server, stream_id, restore, backend, device, options, remote: dict):
    """The stream (here, or on a Triton server; the same ``Stream`` protocol) and what runs it."""
    if server:
        from mirasol_edge.serve.client import RemoteStream

        stream = (RemoteStream.restore(restore, server, stream_id, **remote) if restore
                  else RemoteStream(server, stream_id, **remote))
        return stream, stream.describe()
    from mirasol_edge.runtime.stream import MirasolStream

    stream = (MirasolStream.restore(restore, engine_dir, backend, device, **options) if restore
              else MirasolStream.open(engine_dir, backend, device, **options))
    return stream, stream.engines.backend.describe()


def _push_all(stream, chunks, reporter: Reporter, questions: list[str], ask_every: int | None,
              max_chunks: int | None, after_push=None) -> dict:
    """Every chunk pushed (and asked about every ``ask_every``); the run's numbers. ``wait_ms`` is
    how long the loop waited for each chunk: the decoder's time when decoding is the bottleneck,
    next to nothing while a file decodes ahead on its own thread."""
    push_ms, wait_ms, media, events = [], [], 0.0, {w.name: 0 for w in getattr(stream, "watches", ())}
    start = tick = time.perf_counter()
    for chunk in chunks:
        wait_ms.append((time.perf_counter() - tick) * 1e3)
        result = stream.push(chunk)
        push_ms.append(result.timings.total_ms)
        for event in result.events:
            events[event.watch.name] = events.get(event.watch.name, 0) + 1
        media += chunk.t1 - chunk.t0
        reporter.chunk(result, wait_ms[-1])
        if after_push:
            after_push(chunk, result, wait_ms[-1])
        if ask_every and stream.chunks_seen % ask_every == 0:
            for q in questions:
                reporter.answer(q, stream.ask(q))
        if max_chunks and len(push_ms) >= max_chunks:
            break
        tick = time.perf_counter()
    wall = time.perf_counter() - start
    return {"chunks": len(push_ms), "media_seconds": round(media, 3), "wall_seconds": round(wall, 3),
            "realtime_factor": round(media / wall, 2) if wall else None,
            "push_ms": stats(push_ms), "wait_ms": stats(wait_ms), **({"events": events} if events else {})}

if __name__ == "__main__":
    main()
