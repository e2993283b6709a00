"""``mirasol-bench``: latency, throughput and memory of engine directories, side by side in one run.

Several engine directories (backends, precisions) run alternately in one process, A B A B
in blocks of chunks, so drift on a shared machine hits them alike; the report gives ratios
against the first. Each stage is also compared with its physical floor on this machine
(``mirasol_edge.measure.floor``). The JSON report's schema is ``SCHEMA`` below and in
bench/README.md.
"""

from __future__ import annotations

import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import click
import numpy as np
from rich.console import Console

from mirasol_edge.errors import MirasolError
from mirasol_edge.measure.report import plot, print_table, write_html
from mirasol_edge.measure.stats import STAGES, stats
from mirasol_edge.runtime import machine
from mirasol_edge.runtime.backends import split_backend
from mirasol_edge.runtime.backends.base import NAMES
from mirasol_edge.runtime.decode.registry import names as decoder_names
from mirasol_edge.runtime.engine_dir import EngineDir
from mirasol_edge.runtime.stream import MirasolEngines, RawChunk

SCHEMA = "mirasol-bench/1"
__all__ = ["SCHEMA", "STAGES", "bench", "main"]
DEFAULT_QUESTION = "what colour is the square?"


class BenchError(MirasolError, ValueError):
    """The benchmark cannot run as asked; the message says why."""

    exit_code = 2


def model_identity(d: EngineDir) -> dict:
    """For the report: the model as the manifest records it (``EngineDir.model_identity`` decides sameness)."""
    model = d.manifest.model
    weights = model.get("sha256") or f"preset {model.get('preset')} seed {model.get('seed')}"
    return {"identity": d.model_identity, "config_hash": model["config_hash"], "weights": weights}


def check_same_model(dirs: list[EngineDir]) -> None:
    """One notion of "the same model" for the bench and for snapshots: weights, config and state."""
    for d in dirs[1:]:
        if d.model_identity != dirs[0].model_identity:
            first, other = model_identity(dirs[0]), model_identity(d)
            raise BenchError(f"{dirs[0].path} and {d.path} were built from different models (weights "
                             f"{first['weights']} vs {other['weights']}, config {first['config_hash'][:12]} vs "
                             f"{other['config_hash'][:12]}); side by side only compares builds of one model")


def check_writable(path: Path | None, what: str) -> None:
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}."):
            pass
    except OSError as exc:
        raise BenchError(f"{path}: cannot write the {what} here ({exc.strerror or exc})") from None


@dataclass
class Source:
    chunks: list
    decode_ms: list[float]
    chunk_seconds: float
    description: str


def load_source(source: str | None, engines: EngineDir, need: int, decoder: str = "auto") -> Source:
    """Decode the clip once (timing each chunk), or make random chunks when there is no clip."""
    from mirasol_edge.runtime.decode.chunks import ChunkSpec, chunks

    spec = ChunkSpec.from_config(engines.config)
    if source is None:
        rng = np.random.default_rng(0)
        encoder = engines.components["chunk_encoder"].inputs
        made = []
        for _ in range(4):
            frames = rng.integers(0, 256, tuple(encoder["video"].shape[1:]), dtype=np.uint8)
            mel = rng.normal(-40, 20, tuple(encoder["mel"].shape[1:])).astype(np.float32) if "mel" in encoder else None
            made.append(RawChunk(frames, mel))
        return Source(made, [], spec.chunk_seconds, "random chunks (no --source: the decode stage is not measured)")
    decoded, times = [], []
    tick = time.perf_counter()
    for chunk in chunks(source, spec, decoder=decoder):
        times.append((time.perf_counter() - tick) * 1e3)
        decoded.append(chunk)
        tick = time.perf_counter()
    if len(decoded) < need:
        raise BenchError(f"{source}: {len(decoded)} chunks ({len(decoded) * spec.chunk_seconds:g} s), fewer than the "
                         f"{need} the warm-up needs; use a longer clip or a smaller --warmup")
    return Source(decoded, times, spec.chunk_seconds, f"{source}: {len(decoded)} chunks, decoder {decoded[0].decoder}")


@dataclass
class Run:
    engine_dir: Path
    engines: MirasolEngines
    stream: object
    label: str
    encode: list[float] = field(default_factory=list)
    ar: list[float] = field(default_factory=list)
    push: list[float] = field(default_factory=list)
    prefill: list[float] = field(default_factory=list)
    per_token: list[float] = field(default_factory=list)
    first_token: list[float] = field(default_factory=list)
    tokens_per_s: list[float] = field(default_factory=list)
    parallel: dict | None = None
    device_peak_mib: float | None = None


def _device_peak(run: Run) -> float | None:
    backend = run.engines.backend
    if backend.name == "torch" and str(backend.device).startswith("cuda"):
        import torch

        return round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return None


def bench(engine_dirs: list[str], source: str | None = None, chunks: int = 200, warmup: int = 10,
          block: int = 20, asks: int = 5, question: str = DEFAULT_QUESTION, streams: int = 1,
          backend: str = "auto", device: str = "auto", progress=lambda msg: None, decoder: str = "auto") -> dict:
    if not engine_dirs:
        raise BenchError("give at least one --engines directory")
    from mirasol_edge.runtime.backends import open_engines

    wanted = [split_backend(d, backend) for d in engine_dirs]
    dirs = [open_engines(d, b) for d, b in wanted]
    check_same_model(dirs)
    src = load_source(source, dirs[0], warmup, decoder)
    runs = []
    for d, (_, b) in zip(dirs, wanted):
        engines = MirasolEngines(d, b, device)
        label = f"{engines.backend.name} {d.path.name}"
        runs.append(Run(d.path, engines, engines.stream(), label))
    device_name = runs[0].engines.backend.device

    for run in runs:  # warm up every run before timing any
        for i in range(warmup):
            run.stream.push(src.chunks[i % len(src.chunks)])
    pushed = 0
    while pushed < chunks:  # A B A B: blocks alternate so drift hits every run alike
        n = min(block, chunks - pushed)
        for run in runs:
            for i in range(pushed, pushed + n):
                r = run.stream.push(src.chunks[(warmup + i) % len(src.chunks)])
                run.encode.append(r.timings.encode_ms)
                run.ar.append(r.timings.ar_ms)
                run.push.append(r.timings.total_ms)
        pushed += n
        progress(f"pushed {pushed}/{chunks} chunks on {len(runs)} engine dir(s)")
    for _ in range(asks):
        for run in runs:
            a = run.stream.ask(question)
            run.prefill.append(a.prefill_ms)
            run.first_token.append(a.first_token_ms)
            if len(a.tokens) > 1:
                run.per_token.append(a.ms_per_token)
                run.tokens_per_s.append(1e3 / a.ms_per_token if a.ms_per_token else 0.0)
    if streams > 1:
        for run in runs:
            run.parallel = _parallel(run, src, streams, max(2, chunks // (4 * streams)))
        progress(f"{streams} parallel streams done")
    for run in runs:
        run.device_peak_mib = _device_peak(run)
    report = _report(runs, dirs, src, chunks, warmup, block, question, streams, device_name)
    for run in runs:
        run.stream.close()
        run.engines.close()
    return report


def _parallel(run: Run, src: Source, streams: int, rounds: int) -> dict:
    """N streams over the same engines, pushed together (batched when the engines' batch allows)."""
    engines = run.engines
    group = [engines.stream() for _ in range(streams)]
    times = []
    start = time.perf_counter()
    for r in range(rounds):
        t = time.perf_counter()
        engines.push_many(group, [src.chunks[(r + i) % len(src.chunks)] for i in range(streams)])
        times.append((time.perf_counter() - t) * 1e3)
    wall = time.perf_counter() - start
    for stream in group:
        stream.close()
    return {"streams": streams, "engine_batch": engines.batch, "rounds": rounds,
            "chunks_per_s": round(streams * rounds / wall, 2), "round_ms": stats(times),
            "realtime_streams": round(streams * rounds * src.chunk_seconds / wall, 2)}


def _floors(d: EngineDir, ceilings, question_tokens: int, answer_tokens: int) -> dict:
    from .floor import floor_seconds, graph_cost

    dims = {"prompt_len": question_tokens, "past_len": question_tokens + answer_tokens // 2}
    out = {}
    for stage, component in (("encode", "chunk_encoder"), ("ar_step", "ar_step"), ("prefill", "text_prefill"),
                             ("decode_token", "text_decode")):
        cost = graph_cost(d.onnx_file(component), dims)
        seconds, bound = floor_seconds(cost, ceilings)
        out[stage] = {"flops": cost.flops, "weight_bytes": cost.weight_bytes, "floor_ms": round(seconds * 1e3, 5),
                      "bound": bound}
    return out


def _report(runs: list[Run], dirs: list[EngineDir], src: Source, chunks: int, warmup: int, block: int,
            question: str, streams: int, device: str) -> dict:
    from .floor import measure_ceilings

    try:
        ceilings = measure_ceilings(device)
        ceiling_info = {"flops_per_s": ceilings.flops_per_s, "bytes_per_s": ceilings.bytes_per_s, "how": ceilings.how}
    except ImportError as exc:
        ceilings, ceiling_info = None, {"unavailable": str(exc)}
    tokenizer = runs[0].engines.tokenizer
    question_tokens = len(tokenizer.encode(question)) + 2
    out_runs = []
    for run, d in zip(runs, dirs):
        stages = {"decode": stats(src.decode_ms), "encode": stats(run.encode), "ar_step": stats(run.ar),
                  "prefill": stats(run.prefill), "decode_token": stats(run.per_token)}
        floor = None
        if ceilings is not None:
            try:
                floor = _floors(d, ceilings, question_tokens, d.max_answer_tokens)
                for stage, f in floor.items():
                    measured = stages[stage]["p50"] if stages[stage] else None
                    f["x_floor"] = round(measured / f["floor_ms"], 1) if measured and f["floor_ms"] else None
            except ImportError as exc:
                floor = {"unavailable": f"needs onnx ({exc})"}
        push = stats(run.push)
        state_bytes = sum(a.nbytes for a in run.engines.initial_state.values())
        engine_bytes = sum((d.engine_file(n) or d.onnx_file(n)).stat().st_size for n in d.components)
        out_runs.append({
            "engines": str(run.engine_dir), "label": run.label, "backend": run.engines.backend.describe(),
            "model": model_identity(d), "precision": {n: c.precision for n, c in d.components.items()},
            "stages_ms": stages,
            "end_to_end": {
                "push_ms": push, "chunks_per_s": round(1e3 / push["mean"], 2) if push else None,
                "realtime_factor": round(src.chunk_seconds * 1e3 / push["mean"], 2) if push else None,
                "first_token_ms": stats(run.first_token), "tokens_per_s": stats(run.tokens_per_s)},
            "parallel": run.parallel,
            "memory": {"device_peak_mib": run.device_peak_mib, "state_bytes_per_stream": state_bytes,
                       "engine_bytes": engine_bytes},
            "floor": floor,
            "push_ms_by_chunk": [round(v, 4) for v in run.push],
        })
    first = out_runs[0]
    for r in out_runs:
        r["ratio_vs_first"] = {
            stage: (round(r["stages_ms"][stage]["p50"] / first["stages_ms"][stage]["p50"], 3)
                    if r["stages_ms"][stage] and first["stages_ms"][stage] else None)
            for stage in STAGES}
    return {"schema": SCHEMA, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": machine.describe(), "ceilings": ceiling_info,
            "settings": {"chunks": chunks, "warmup": warmup, "block": block, "question": question,
                         "streams": streams, "alternation": "A B A B in blocks of `block` chunks"},
            "source": {"description": src.description, "chunk_seconds": src.chunk_seconds},
            "peak_rss_mib": machine.peak_rss_mib(), "runs": out_runs}


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--engines", "-e", "engine_dirs", multiple=True, required=True, metavar="DIR[@BACKEND]",
              help="an engine directory, optionally @torch / @onnxruntime / @tensorrt-rtx ...; repeat to compare "
                   "(run alternately, ratios against the first)")
@click.option("--source", "-s", type=click.Path(dir_okay=False), help="a clip to decode (default: random chunks)")
@click.option("--chunks", "-n", type=click.IntRange(min=1), default=200, show_default=True)
@click.option("--warmup", "-w", type=click.IntRange(min=0), default=10, show_default=True)
@click.option("--block", type=click.IntRange(min=1), default=20, show_default=True,
              help="chunks per turn when alternating between engine directories")
@click.option("--asks", type=click.IntRange(min=1), default=5, show_default=True, help="questions asked per run")
@click.option("--question", default=DEFAULT_QUESTION, show_default=True)
@click.option("--streams", type=click.IntRange(min=1), default=1, show_default=True,
              help="also measure N parallel streams over the same engines")
@click.option("--backend", "-b", default="auto", show_default=True,
              type=click.Choice(NAMES))
@click.option("--decoder", type=click.Choice(["auto", *decoder_names()]), default="auto", show_default=True,
              help="who decodes --source (as mirasol-run's --decoder)")
@click.option("--device", default="auto", show_default=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="write the JSON report here")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), help="write the PNG plots here")
@click.option("--html", "html_path", type=click.Path(dir_okay=False),
              help="write the run as one self-contained HTML page (table, plots, JSON)")
def main(engine_dirs, source, chunks, warmup, block, asks, question, streams, backend, decoder, device, json_path,
         plot_path, html_path):
    """Measure per-stage latency (decode, encoders + Combiner, AR step, text prefill, text decode per
    token), end-to-end throughput, memory and distance from the machine's physical floor, for one
    or several engine directories side by side.

    \b
    mirasol-bench -e engines/tiny-cpu --source samples/sample.mp4 --json out.json --plot out.png --html out.html
    mirasol-bench -e engines/tiny-cpu -e engines/tiny-cpu@torch --plot cmp.png   # ONNX Runtime vs PyTorch
    """
    from mirasol_edge.console import err, fail

    try:
        json_path = Path(json_path) if json_path else None
        plot_path = Path(plot_path) if plot_path else None
        html_path = Path(html_path) if html_path else None
        check_writable(json_path, "JSON report")
        check_writable(plot_path, "plot")
        check_writable(html_path, "HTML page")
        if plot_path is not None or html_path is not None:
            import matplotlib  # noqa: F401 - fail before the run, not after
        report = bench(list(engine_dirs), source, chunks, warmup, block, asks, question, streams, backend, device,
                       progress=lambda msg: err.print(f"[dim]·[/] {msg}", highlight=False), decoder=decoder)
        print_table(report, Console())
        if json_path:
            from mirasol_edge.runtime.files import write_json_atomic

            write_json_atomic(json_path, report)
        if plot_path:
            plot(report, plot_path)
        if html_path:
            write_html(report, html_path)
    except ImportError as exc:
        err.print(f"[bold red]mirasol-bench[/]: {exc} (plots need `pip install 'mirasol-edge[bench]'`)")
        sys.exit(2)
    except Exception as exc:
        fail("mirasol-bench", exc)


if __name__ == "__main__":
    main()
