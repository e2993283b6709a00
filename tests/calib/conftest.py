import os

import pytest

from mirasol_edge.assets import BUNDLED_CHECKPOINT
from mirasol_edge.toolkit.model import Mirasol

BUNDLED = BUNDLED_CHECKPOINT


@pytest.fixture(scope="session", autouse=True)
def calib_cache(tmp_path_factory):
    """One calibration cache (clips and recorded inputs) for the calibration tests, not ~/.cache."""
    old = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if old is None:
        del os.environ["XDG_CACHE_HOME"]
    else:
        os.environ["XDG_CACHE_HOME"] = old


@pytest.fixture(scope="session")
def bundled_model():
    return Mirasol.load(BUNDLED)
