"""Every GPU check in one run, in order of value, each in its own process under its own time
budget; a failing check is recorded and the run goes on; a check whose library or device is
missing says "skipped" and why. Writes gpu.json (schema ``mirasol-gpu/1``, bench/README.md)
into --out. On a machine without a GPU it runs in seconds and skips every GPU check.

    python bench/gpu.py --out /tmp/gpu                 # all checks
    python bench/gpu.py --out /tmp/gpu --only rtx dali  # some
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # gpu_checks beside this file

SCHEMA = "mirasol-gpu/1"
# name -> seconds it may take; the order is the order of value. The sum stays under 9 minutes.
BUDGETS = {"machine": 20, "torch_cuda": 120, "tensorrt_rtx": 140, "dali": 80, "ort_cuda": 40, "roofline": 40,
           "pytest": 90}


def run_check(name: str, work: Path, budget: float) -> dict:
    """One check in a child process: a crash, a hang or a CUDA error there cannot stop the run."""
    out = work / f"{name}.json"
    start = time.perf_counter()
    try:
        child = subprocess.run([sys.executable, __file__, "--check", name, "--work", str(work)],
                               capture_output=True, text=True, timeout=budget)
    except subprocess.TimeoutExpired as exc:
        tail = (exc.stderr or b"")[-1500:]
        return {"status": "failed", "reason": f"over its budget of {budget:.0f} s",
                "stderr_tail": tail.decode(errors="replace") if isinstance(tail, bytes) else tail,
                "seconds": round(time.perf_counter() - start, 1)}
    seconds = round(time.perf_counter() - start, 1)
    if out.is_file():
        return {**json.loads(out.read_text()), "seconds": seconds}
    return {"status": "failed", "reason": f"the check exited with {child.returncode} and wrote nothing",
            "stderr_tail": child.stderr[-1500:], "seconds": seconds}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="folder for gpu.json (and the work files)")
    parser.add_argument("--only", nargs="*", choices=list(BUDGETS), help="run these checks only")
    parser.add_argument("--check", help=argparse.SUPPRESS)  # the child's entry
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.check:
        import gpu_checks

        gpu_checks.run(args.check, args.work)
        return 0
    if args.out is None:
        parser.error("--out is required")
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(os.environ.get("MIRASOL_GPU_WORK", "/tmp/mirasol-gpu-work"))
    work.mkdir(parents=True, exist_ok=True)
    names = args.only or list(BUDGETS)
    report = {"schema": SCHEMA, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "checks": {}}
    start = time.perf_counter()
    for name in names:
        (work / f"{name}.json").unlink(missing_ok=True)
        result = run_check(name, work, BUDGETS[name])
        report["checks"][name] = result
        line = result.get("reason") or result.get("summary") or ""
        print(f"{name:13s} {result['status']:8s} {result['seconds']:6.1f}s  {line}", flush=True)
        if name == "machine" and result["status"] == "ok":
            report["machine"] = result["results"]
    report["seconds"] = round(time.perf_counter() - start, 1)
    tmp = args.out / ".gpu.json.tmp"
    tmp.write_text(json.dumps(report, indent=1) + "\n")
    tmp.replace(args.out / "gpu.json")
    print(f"wrote {args.out / 'gpu.json'} in {report['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
