"""Training from scratch: the curriculum's end-of-clip-only phase ends at its cap and training goes on with everything."""

import subprocess
import sys

import pytest

from mirasol_edge.demo import train
from mirasol_edge.demo.synthetic import QUESTIONS


@pytest.mark.slow
def test_the_end_of_clip_phase_ends_at_its_cap_and_training_goes_on():
    _model, report = train.train(
        "tiny", clips=24, heldout=4, minutes=0.3, seed=0, batch=4, lr=1e-3, cache=None, log_every=1,
        eval_every_minutes=60, long_clips=2, long_heldout=2, long_batch=2, long_chunks=8,
        short_first_minutes=0.001, short_batch=8, check_clips=8, check_every_minutes=0.0)
    # a check after every step; the cap (0.06 s) has passed by the second, however loaded the machine
    first = report["short_first"]
    assert first is not None and first["minutes"] >= 0.001 and first["step"] >= 1
    assert set(first["check"]["per_type"]) == set(QUESTIONS)  # checked on every end-of-clip type
    assert [p["step"] for p in report["curve"] if "check" in p][-1] == first["step"]  # each check is recorded
    assert report["check_clips"] == 8 and report["steps"] > first["step"]  # steps with the long clips followed


@pytest.mark.slow
def test_without_a_curriculum_no_clip_is_kept_out_for_a_check():
    _model, report = train.train(
        "tiny", clips=12, heldout=4, minutes=0.05, seed=0, batch=4, lr=1e-3, cache=None, log_every=1,
        eval_every_minutes=60, long_clips=2, long_heldout=2, long_batch=2, long_chunks=8)
    assert report["short_first"] is None and report["check_clips"] == 0 and report["steps"] >= 1


@pytest.mark.parametrize("argv, named", [
    (["--clips", "120"], "--clips must be at least 132"),
    (["--clips", "120", "--short-first", "0", "--batch", "121"], "--batch 121"),
    (["--long-clips", "3", "--long-batch", "4"], "--long-batch 4"),
])
def test_options_that_cannot_train_are_refused_before_any_data_is_built(argv, named, tmp_path):
    done = subprocess.run([sys.executable, "-m", "mirasol_edge.demo.train", *argv, "--cache", str(tmp_path / "c.npz")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and named in done.stderr and "Traceback" not in done.stderr
    assert not list(tmp_path.iterdir())  # nothing was built
