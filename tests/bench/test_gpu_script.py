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


def _gpu_run(tmp_path, *args, **env):
    return subprocess.Popen([sys.executable, str(ROOT / "bench" / "gpu.py"), "--out", str(tmp_path / "out"), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "MIRASOL_GPU_WORK": str(tmp_path / "work"), "MIRASOL_GPU_SELFTEST": "1",
                                 **env})


def _wait_for(predicate, seconds: float) -> bool:
    import time

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def _report(tmp_path):
    try:
        return json.loads((tmp_path / "out" / "gpu.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None


def test_a_run_killed_partway_leaves_a_valid_gpu_json_with_the_checks_done(tmp_path):
    import signal

    run = _gpu_run(tmp_path, "--only", "machine", "selftest", MIRASOL_GPU_SELFTEST_SLEEP="60")
    try:
        step = tmp_path / "work" / "selftest.json"
        assert _wait_for(lambda: step.is_file() and json.loads(step.read_text())["results"].get("before_sleep"), 60)
        os.killpg(run.pid, signal.SIGKILL)  # as the machine's per-call limit does: no chance to clean up
        run.wait(10)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    report = _report(tmp_path)
    assert report is not None and report["schema"] == gpu.SCHEMA
    assert list(report["checks"]) == ["machine"] and report["checks"]["machine"]["status"] == "ok"
    assert report["machine"]["cuda"]["problem"]
    assert json.loads(step.read_text()) == {"status": "running", "results": {"before_sleep": True}}


def test_a_check_over_its_budget_keeps_its_steps_and_the_run_goes_on(tmp_path):
    run = _gpu_run(tmp_path, "--only", "selftest", "machine", MIRASOL_GPU_SELFTEST_SLEEP="60",
                   MIRASOL_GPU_SELFTEST_BUDGET="3")
    stdout, stderr = run.communicate(timeout=60)
    assert run.returncode == 0, stderr
    checks = _report(tmp_path)["checks"]
    assert checks["selftest"]["status"] == "failed" and "over its budget of 3 s" in checks["selftest"]["reason"]
    assert checks["selftest"]["results"] == {"before_sleep": True}
    assert checks["machine"]["status"] == "ok"


def test_a_check_that_does_not_fit_the_deadline_is_skipped_saying_so(tmp_path):
    run = _gpu_run(tmp_path, "--only", "machine", "selftest", "--deadline", "25", MIRASOL_GPU_SELFTEST_BUDGET="30")
    stdout, stderr = run.communicate(timeout=60)
    assert run.returncode == 0, stderr
    checks = _report(tmp_path)["checks"]
    assert checks["machine"]["status"] == "ok"
    assert checks["selftest"]["status"] == "skipped"
    assert "budget of 30 s does not fit" in checks["selftest"]["reason"] and "25 s deadline" in checks["selftest"]["reason"]
    assert not (tmp_path / "work" / "selftest.json").exists()  # never started
