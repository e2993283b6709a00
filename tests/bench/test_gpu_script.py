"""bench/gpu.py on a machine without a GPU: it runs in seconds, skips every GPU check saying why,
and writes the JSON its readers (bench/README.md) expect."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import gpu  # noqa: E402  (bench/gpu.py)


def test_budgets_fit_a_nine_minute_run():
    assert sum(gpu.BUDGETS.values()) <= 9 * 60
    assert list(gpu.BUDGETS)[0] == "machine"


def test_without_a_gpu_every_check_is_skipped_with_its_reason(tmp_path):
    env_work = tmp_path / "work"
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu.py"), "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=120,
                            env={**os.environ, "MIRASOL_GPU_WORK": str(env_work)})
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "gpu.json").read_text())
    assert report["schema"] == gpu.SCHEMA and report["seconds"] < 60
    assert set(report["checks"]) == set(gpu.BUDGETS)
    assert report["checks"]["machine"]["status"] == "ok" and report["machine"]["cuda"]["problem"]
    for name, check in report["checks"].items():
        assert check["status"] in ("ok", "skipped", "failed"), name
        assert isinstance(check["seconds"], float), name
        if name != "machine":
            assert check["status"] == "skipped" and check["reason"], (name, check)
    assert "skipped" in result.stdout and "gpu.json" in result.stdout
