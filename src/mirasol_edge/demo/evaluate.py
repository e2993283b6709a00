"""``mirasol-eval``: answer accuracy per question type for an engine directory, on held-out clips.

Each clip is generated (seeded), encoded with PyAV, decoded with the automatic decoder,
streamed chunk by chunk through ``MirasolStream`` and asked every question, so fp32
PyTorch, ONNX Runtime and quantized engines are compared on answers, not tensor error.
"""

from __future__ import annotations

import json
import tempfile
import time

import click
import numpy as np
from rich.console import Console
from rich.table import Table

from mirasol_edge.runtime.backends.base import NAMES
from mirasol_edge.runtime.decode.chunks import ChunkSpec, chunks
from mirasol_edge.runtime.stream import MirasolEngines

from .synthetic import HELDOUT_SEED, LONG_CHUNKS, LONG_HELDOUT_SEED, QUESTIONS, make_clip
from .watch_eval import evaluate_watches


def evaluate(engine_dir, clips: int = 50, seed: int = HELDOUT_SEED, backend: str = "auto",
             device: str = "auto", progress=lambda i: None) -> dict:
    """``engine_dir`` may name its backend: ``engines/cpu@torch`` (as mirasol-bench takes it)."""
    from mirasol_edge.runtime.backends import split_backend

    engine_dir, backend = split_backend(str(engine_dir), backend)
    engines = MirasolEngines(engine_dir, backend, device)
    spec = ChunkSpec.from_config(engines.dir.config)
    right = {kind: 0 for kind in QUESTIONS}
    push_ms, answer_ms, decoders = [], [], set()
    try:
        with tempfile.TemporaryDirectory(prefix="mirasol-eval-") as tmp:
            for i in range(clips):
                path, facts = make_clip(seed + i, tmp)
                with engines.stream() as stream:  # closed per clip: its runners and state go with it
                    for chunk in chunks(path, spec):
                        push_ms.append(stream.push(chunk).timings.total_ms)
                        decoders.add(chunk.decoder)
                    expected = facts.answers()
                    for kind, question in QUESTIONS.items():
                        answer = stream.ask(question)
                        answer_ms.append(answer.total_ms)
                        right[kind] += answer.text == expected[kind]
                path.unlink()
                progress(i + 1)
    finally:
        engines.close()
    return {"engines": f"{engine_dir}@{engines.backend.name}", "backend": engines.backend.describe(), "clips": clips,
            "seed": seed,
            "decoders": sorted(decoders),
            "exact_match": sum(right.values()) / (clips * len(QUESTIONS)),
            "per_type": {k: v / clips for k, v in right.items()},
            "push_ms_p50": round(float(np.median(push_ms)), 3), "answer_ms_p50": round(float(np.median(answer_ms)), 3)}


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--engines", "-e", "engine_dirs", multiple=True, required=True, metavar="DIR[@BACKEND]",
              help="engine directory, optionally @torch / @onnxruntime ...; repeat to compare several")
@click.option("--clips", type=click.IntRange(min=1), default=50, show_default=True, help="held-out clips")
@click.option("--seed", type=int, default=HELDOUT_SEED, show_default=True, help="seed of the first clip")
@click.option("--backend", "-b", default="auto", show_default=True,
              type=click.Choice(NAMES))
@click.option("--json", "as_json", is_flag=True, help="print a JSON report")
@click.option("--watch", "watching", is_flag=True,
              help="evaluate the standing questions instead: events against the truth on held-out long clips "
                   "(precision, recall, delay in chunks, false events per hour)")
@click.option("--length", type=click.IntRange(min=8), default=LONG_CHUNKS, show_default=True,
              help="with --watch: chunks per long clip")
@click.option("--threshold", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.5,
              show_default=True, help="with --watch: the closed-set watches' threshold")
def main(engine_dirs, clips, seed, backend, as_json, watching, length, threshold):
    """Accuracy per question type of the synthetic audio-video QA task, answered through the runtime."""
    from mirasol_edge.console import err, fail

    if watching and seed == HELDOUT_SEED:
        seed = LONG_HELDOUT_SEED
    reports = []
    try:
        for engine_dir in engine_dirs:
            start = time.perf_counter()
            show = lambda i, d=engine_dir: err.print(f"\r{d}: {i}/{clips} clips", end="")  # noqa: E731
            report = (evaluate_watches(engine_dir, clips, seed, length, threshold, backend, progress=show) if watching
                      else evaluate(engine_dir, clips, seed, backend, progress=show))
            report["seconds"] = round(time.perf_counter() - start, 1)
            err.print()
            reports.append(report)
    except Exception as exc:
        fail("mirasol-eval", exc)
    if as_json:
        click.echo(json.dumps(reports, indent=1))
        return
    if watching:
        _watch_table(reports)
        return
    table = Table(title=f"exact match on {clips} held-out clips (seeds {seed}..{seed + clips - 1})")
    table.add_column("engines")
    table.add_column("backend")
    for kind in QUESTIONS:
        table.add_column(kind, justify="right")
    table.add_column("all", justify="right")
    for r in reports:
        table.add_row(r["engines"], r["backend"]["backend"], *(f"{r['per_type'][k]:.0%}" for k in QUESTIONS),
                      f"{r['exact_match']:.1%}")
    Console().print(table)


def _watch_table(reports: list[dict]) -> None:
    for r in reports:
        table = Table(title=f"{r['engines']}: watches on {r['clips']} held-out clips of {r['chunks_per_clip']} chunks "
                            f"(seeds {r['seeds'][0]}..{r['seeds'][1]}, {r['video_hours']} h)")
        for column in ("watch", "precision", "recall", "delay p50", "delay p95", "false/h", "state", "events"):
            table.add_column(column, justify="left" if column == "watch" else "right")
        for kind, t in r["per_type"].items():
            table.add_row(kind, f"{t['precision']:.3f}" if t["precision"] is not None else "-",
                          f"{t['recall']:.3f}" if t["recall"] is not None else "-", f"{t['delay_chunks_median']:g}",
                          f"{t['delay_chunks_p95']:g}", f"{t['false_events_per_hour']:g}", f"{t['state_accuracy']:.3f}",
                          str(t["events"]))
        Console().print(table)


if __name__ == "__main__":
    main()
