"""Every GPU check in one run, in order of value, each in its own process under its own time
budget; a failing check is recorded and the run goes on; a check whose library or device is
missing says "skipped" and why. Writes gpu.json (schema ``mirasol-gpu/1``, bench/README.md)
into --out after every check (atomically), with each check's steps as far as it got, so a run
cut off at the machine's per-call limit still returns what it measured. The run keeps to a
deadline (--deadline, 420 s by default): a check whose budget no longer fits is skipped, saying
so. On a machine without a GPU it runs in seconds and skips every GPU check.

    python bench/gpu.py --out /tmp/gpu                 # all checks
    python bench/gpu.py --out /tmp/gpu --only tensorrt_rtx dali  # some
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

SCHEMA = "mirasol-gpu/1"
# name -> seconds it may take; the order is the order of value.
BUDGETS = {"machine": 20, "torch_cuda": 120, "tensorrt_rtx": 140, "dali": 80, "ort_cuda": 40, "roofline": 40,
           "pytest": 90}
SELFTEST = os.environ.get("MIRASOL_GPU_SELFTEST") == "1"  # the tests' sleeping check, to cut a run off
if SELFTEST:
    BUDGETS["selftest"] = float(os.environ.get("MIRASOL_GPU_SELFTEST_BUDGET", "30"))


def run_check(name: str, work: Path, budget: float) -> dict:
    """One check in a child process: a crash, a hang or a CUDA error there cannot stop the run."""
    out = work / f"{name}.json"
    start = time.perf_counter()
    try:
        child = subprocess.run([sys.executable, __file__, "--check", name, "--work", str(work)],
                               capture_output=True, text=True, timeout=budget)
    except subprocess.TimeoutExpired as exc:
        tail = (exc.stderr or b"")[-1500:]
        return {"status": "failed", "reason": f"over its budget of {budget:.0f} s; results are its steps so far",
                "results": _written(out).get("results", {}),
                "stderr_tail": tail.decode(errors="replace") if isinstance(tail, bytes) else tail,
                "seconds": round(time.perf_counter() - start, 1)}
    seconds = round(time.perf_counter() - start, 1)
    written = _written(out)
    if written.get("status") in ("ok", "skipped", "failed"):
        return {**written, "seconds": seconds}
    return {"status": "failed", "reason": f"the check exited with {child.returncode} before it finished",
            "results": written.get("results", {}), "stderr_tail": child.stderr[-1500:], "seconds": seconds}


def _written(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def write_report(report: dict, out: Path) -> None:
    """gpu.json whole or not at all: a reader (or a cut-off run) never sees half a file."""
    tmp = out / ".gpu.json.tmp"
    tmp.write_text(json.dumps(report, indent=1, default=str) + "\n")
    tmp.replace(out / "gpu.json")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="folder for gpu.json (and the work files)")
    parser.add_argument("--only", nargs="*", choices=list(BUDGETS), help="run these checks only")
    parser.add_argument("--deadline", type=float, default=420.0,
                        help="seconds for the whole run; a check whose budget does not fit what is left is skipped")
    parser.add_argument("--check", help=argparse.SUPPRESS)  # the child's entry
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.check:
        import gpu_checks  # beside this script: a script's own folder is on its path

        gpu_checks.run(args.check, args.work)
        return 0
    if args.out is None:
        parser.error("--out is required")
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(os.environ.get("MIRASOL_GPU_WORK", "/tmp/mirasol-gpu-work"))
    work.mkdir(parents=True, exist_ok=True)
    names = args.only or [n for n in BUDGETS if n != "selftest"]
    report = {"schema": SCHEMA, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "deadline_s": args.deadline, "checks": {}}
    start = time.perf_counter()
    for name in names:
        left = args.deadline - (time.perf_counter() - start)
        if BUDGETS[name] > left:
            result = {"status": "skipped", "seconds": 0.0,
                      "reason": f"its budget of {BUDGETS[name]:.0f} s does not fit the {max(left, 0):.0f} s left "
                                f"of the run's {args.deadline:.0f} s deadline"}
        else:
            (work / f"{name}.json").unlink(missing_ok=True)
            result = run_check(name, work, BUDGETS[name])
        report["checks"][name] = result
        if name == "machine" and result["status"] == "ok":
            report["machine"] = result["results"]
        report["seconds"] = round(time.perf_counter() - start, 1)
        write_report(report, args.out)  # after every check: a run cut off keeps the ones done
        line = result.get("reason") or result.get("summary") or ""
        print(f"{name:13s} {result['status']:8s} {result['seconds']:6.1f}s  {line}", flush=True)
    print(f"wrote {args.out / 'gpu.json'} in {report['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
