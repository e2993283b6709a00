"""Build time and peak host RAM per component: tiny and edge (cpu, rtx), and the mirasol3b ONNX export.

Each build runs as its own `mirasol-build` process so its peak RSS is its own.

    .venv/bin/python bench/build.py [--only tiny-cpu ...] [--out bench/results/build.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mirasol_edge.runtime import machine

CASES = {
    "tiny-cpu": ["--recipe", "cpu", "--preset", "tiny"],
    "tiny-rtx": ["--recipe", "rtx", "--preset", "tiny"],
    "edge-cpu": ["--recipe", "cpu", "--preset", "edge"],
    "edge-rtx": ["--recipe", "rtx", "--preset", "edge"],
    # ONNX only (a bundle): no GPU here to run the 3B engines, and the export is the RAM hog.
    # Built part by part (toolkit/source.py): one part in memory at a time, the AR step's 4 GB
    # of fp16 weights in ONNX external data.
    "mirasol3b-export-fp16": ["export", "--recipe", "rtx", "--preset", "mirasol3b"],
}


def run_case(name: str, args: list[str], workdir: Path) -> dict:
    out = workdir / name
    cmd = [sys.executable, "-m", "mirasol_edge.cli.build", *args, "--out", str(out), "--json"]
    start = time.perf_counter()
    # Output goes to a file, not a pipe: a child blocked on a full pipe would never exit.
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        log.seek(0)
        stderr = log.read()
    result = {"seconds": round(seconds, 1), "peak_rss_mib": usage.ru_maxrss >> 10,
              "exit_code": os.waitstatus_to_exitcode(status)}
    if result["exit_code"] != 0:
        result["error"] = stderr.strip()[-2000:]
        return result
    manifest = json.loads((out / "manifest.json").read_text())
    result["components"] = {
        n: {k: c.get(k) for k in ("precision", "export_seconds", "build_seconds", "peak_rss_mib", "peak_rss_scope",
                                  "engine_bytes")}
        | {"onnx_mib": round(sum(f.stat().st_size for f in out.glob(c["onnx"] + "*")) / 2**20, 1),
           "max_rel_error": c["parity"]["max_rel_error"]}
        for n, c in manifest["components"].items()
    }
    # Each component resets the kernel's high-water mark (its own peak), which also lowers what
    # wait4 reports for the process: the process peak is the larger of the two.
    result["peak_rss_mib"] = max(result["peak_rss_mib"], *(c["peak_rss_mib"] or 0 for c in result["components"].values()))
    shutil.rmtree(out)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", nargs="*", choices=list(CASES))
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "build.json")
    args = parser.parse_args()
    previous = json.loads(args.out.read_text()) if args.out.exists() else {}
    report = {"machine": machine.describe(), "cases": previous.get("cases", {})}
    with tempfile.TemporaryDirectory(dir=Path.cwd()) as workdir:
        for name in args.only or CASES:
            print(f"== {name}", flush=True)
            result = run_case(name, CASES[name], Path(workdir))
            report["cases"][name] = result
            print(json.dumps(result, indent=1), flush=True)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(report, indent=2) + "\n")
    print("wrote", args.out)


if __name__ == "__main__":
    main()
