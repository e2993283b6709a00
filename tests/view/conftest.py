"""The view tests' engines (the bundled model, ONNX Runtime) and their mirasol-run processes."""

import pytest

from tests.view.helpers import Run


@pytest.fixture(scope="session")
def bundled_engines(tmp_path_factory):
    from mirasol_edge.assets import BUNDLED_CHECKPOINT
    from mirasol_edge.toolkit.build import build
    from mirasol_edge.toolkit.recipe import load_recipe

    out = tmp_path_factory.mktemp("view-engines") / "tiny-cpu"
    build(load_recipe("cpu"), out, checkpoint=BUNDLED_CHECKPOINT)
    return out


@pytest.fixture
def run_view(tmp_path):
    runs = []

    def start(args, pace_s=0.0):
        run = Run(args, tmp_path / f"run-{len(runs)}.log", pace_s)
        runs.append(run)
        return run
    yield start
    for run in runs:  # every process stopped, whatever the test did
        run.stop()
