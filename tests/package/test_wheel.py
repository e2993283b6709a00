"""The package as a user gets it: a wheel installed into a fresh virtual environment outside the
repository, then the commands run there on the bundled model and sample."""

import json
import os
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def run(cmd, cwd, timeout=900, env=None):
    result = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    assert result.returncode == 0, f"{cmd}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    dist = tmp_path_factory.mktemp("dist")
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", dist, ROOT], ROOT)
    (path,) = dist.glob("mirasol_edge-*.whl")
    return path


def test_the_wheel_ships_recipes_assets_and_the_license(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    recipes = {Path(n).stem for n in names if n.startswith("mirasol_edge/recipes/") and n.endswith(".toml")}
    assert {"defaults", "cpu", "cpu-fast", "rtx", "h100", "l4", "agx-orin", "orin-nx", "orin-nano", "thor"} <= recipes
    for asset in ("tiny-synthetic.safetensors", "tiny-synthetic.json", "sample.mp4", "sample.json"):
        assert f"mirasol_edge/assets/{asset}" in names
    assert "mirasol_edge/view/page.html" in names  # --view's page, served from the installed package
    assert any(n.endswith("licenses/LICENSE") for n in names)
    assert not any(n.startswith(("tests/", "bench/")) for n in names)


def test_installed_wheel_builds_and_answers_outside_the_repository(wheel, tmp_path):
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    bin_dir = env_dir / "bin"
    # torch pinned as the README's install pins it (the package asks for a range, which here would
    # pull gigabytes of CUDA packages): the constraints file CI uses, and the explicit pin
    run([bin_dir / "pip", "install", "-q", "-c", ROOT / "constraints.txt", "torch==2.13.0", f"{wheel}[build]"], tmp_path)
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    run([bin_dir / "mirasol-build", "--recipe", "cpu", "--out", "engines"], work, env=env)
    answers = run([bin_dir / "mirasol-run", "--sample", "--engines", "engines", "--json"], work, env=env)
    events = [json.loads(line) for line in answers.stdout.splitlines() if line.startswith("{")]
    graded = [e for e in events if e["event"] == "answer"]
    assert len(graded) == 6 and all(e["correct"] for e in graded), graded
    located = run([bin_dir / "python", "-c", "import mirasol_edge; print(mirasol_edge.__file__)"], work, env=env)
    assert str(env_dir) in located.stdout and str(ROOT) not in located.stdout
    bench = run([bin_dir / "mirasol-bench", "-e", "engines", "--chunks", "4", "--warmup", "1", "--json", "b.json"],
                work, env=env)
    assert json.loads((work / "b.json").read_text())["runs"], bench.stdout
