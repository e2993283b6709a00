"""mirasol-bench's report for people: the table in the terminal, the PNG plots, and both as one HTML page."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from mirasol_edge.measure.stats import STAGES
from mirasol_edge.runtime.files import atomic_path


def plot(report: dict, path: Path) -> None:
    """Per-stage latency CDF, push latency against chunk index, stacked stage breakdown per run."""
    with atomic_path(path, suffix=".png") as tmp:
        tmp.write_bytes(_png(report))


def write_html(report: dict, path: Path) -> None:
    """The run as one self-contained page: the table (rich's own HTML export), the plots inline,
    the JSON report folded beneath; nothing fetched from anywhere."""
    console = Console(record=True, width=160, file=io.StringIO())
    print_table(report, console)
    table = console.export_html(inline_styles=True, code_format="<pre style=\"font-size:12px\">{code}</pre>")
    png = base64.b64encode(_png(report)).decode()
    m = report["machine"]
    title = f"mirasol-bench on {m['cpu']} ({m['cores']} cores)" + (f", {m['gpu']['name']}" if m["gpu"] else "")
    page = (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title></head>"
            f"<body style=\"font-family:sans-serif\"><h1>{html.escape(title)}</h1>{table}"
            f"<img alt=\"plots\" style=\"max-width:100%\" src=\"data:image/png;base64,{png}\">"
            f"<details><summary>report (JSON)</summary><pre>{html.escape(json.dumps(report, indent=1))}</pre>"
            "</details></body></html>\n")
    with atomic_path(path, suffix=".html") as tmp:
        tmp.write_text(page, encoding="utf-8")


def _png(report: dict) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = report["runs"]
    fig, (cdf, by_chunk, stacked) = plt.subplots(1, 3, figsize=(17, 4.8))
    for i, run in enumerate(runs):
        colour = f"C{i}"
        lat = np.sort(run["push_ms_by_chunk"])
        cdf.plot(lat, np.arange(1, len(lat) + 1) / len(lat), color=colour, label=f"{run['label']} push")
        by_chunk.plot(run["push_ms_by_chunk"], ",", color=colour, alpha=0.6)
        by_chunk.plot(np.convolve(run["push_ms_by_chunk"], np.ones(10) / 10, mode="valid"), color=colour,
                      label=f"{run['label']} (10-chunk mean)")
    cdf.set(xscale="log", xlabel="ms", ylabel="fraction of pushes", title="push latency CDF")
    by_chunk.set(xlabel="chunk index (after warm-up)", ylabel="push ms", title="push latency vs chunk index")
    bottoms = np.zeros(len(runs))
    for stage in STAGES:
        values = np.array([(r["stages_ms"][stage] or {}).get("p50", 0.0) for r in runs])
        stacked.bar([r["label"] for r in runs], values, bottom=bottoms, label=stage)
        bottoms += values
    stacked.set(ylabel="ms (p50; decode per chunk, decode_token per token)", title="stage breakdown")
    stacked.tick_params(axis="x", labelrotation=15)
    for ax in (cdf, by_chunk, stacked):
        ax.legend(fontsize=7)
    m = report["machine"]
    fig.suptitle(f"mirasol-bench on {m['cpu']} ({m['cores']} cores)" + (f", {m['gpu']['name']}" if m["gpu"] else ""))
    fig.tight_layout()
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=100)
    finally:
        plt.close(fig)
    return buffer.getvalue()


def print_table(report: dict, console: Console) -> None:
    table = Table(title=f"mirasol-bench: {report['settings']['chunks']} chunks after {report['settings']['warmup']} "
                        f"warm-up, {report['source']['description']}")
    for col in ("run", "decode", "encode", "AR step", "prefill", "ms/token", "push p50/p99", "chunks/s", "RT factor",
                "1st token", "vs first", "x floor (enc/AR)"):
        table.add_column(col, justify="left" if col == "run" else "right")
    for r in report["runs"]:
        s, e = r["stages_ms"], r["end_to_end"]

        def p50(stage, s=s):
            return f"{s[stage]['p50']:.2f}" if s[stage] else "-"
        floor = r["floor"] or {}
        x = "/".join(str(floor.get(k, {}).get("x_floor", "-")) for k in ("encode", "ar_step")) if "encode" in floor \
            else "-"
        table.add_row(r["label"], p50("decode"), p50("encode"), p50("ar_step"), p50("prefill"), p50("decode_token"),
                      f"{e['push_ms']['p50']:.2f}/{e['push_ms']['p99']:.2f}", f"{e['chunks_per_s']:.1f}",
                      f"{e['realtime_factor']:.1f}x",
                      f"{e['first_token_ms']['p50']:.2f}" if e["first_token_ms"] else "-",
                      f"{r['ratio_vs_first']['encode']}x", x)
    console.print(table)
    console.print(f"peak host RSS {report['peak_rss_mib']} MiB (whole process); ceilings: "
                  + (f"{report['ceilings']['flops_per_s'] / 1e9:.1f} GFLOP/s, "
                     f"{report['ceilings']['bytes_per_s'] / 1e9:.1f} GB/s ({report['ceilings']['how']})"
                     if "flops_per_s" in report["ceilings"] else report["ceilings"].get("unavailable", "")),
                  highlight=False)
    for r in report["runs"]:
        if r["parallel"]:
            p = r["parallel"]
            console.print(f"{r['label']}: {p['streams']} streams (engine batch {p['engine_batch']}): "
                          f"{p['chunks_per_s']} chunks/s, {p['realtime_streams']} real-time streams", highlight=False)
