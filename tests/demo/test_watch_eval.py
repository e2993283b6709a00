"""mirasol-eval --watch: where watches should fire, how events are matched to it, and a real run
over an encoded long clip through the ONNX Runtime engines of the bundled model."""

import json

import pytest
from click.testing import CliRunner

from mirasol_edge.demo.evaluate import main as eval_main
from mirasol_edge.demo.synthetic import WATCH_QUESTIONS, sample_long_facts
from mirasol_edge.demo.watch_eval import TOLERANCE, match, truth_changes


def test_truth_changes_for_closed_and_open_watches():
    truth = ["no", "no", "yes", "yes", "no", "yes"]
    assert truth_changes(truth, closed=True) == [(2, "yes"), (4, "no"), (5, "yes")]
    assert truth_changes(["yes", "no"], closed=True) == [(0, "yes"), (1, "no")]  # it starts unannounced
    assert truth_changes(["red", "red", "blue"], closed=False) == [(0, "red"), (2, "blue")]


def test_events_match_once_within_the_tolerance_and_before_the_next_change():
    changes = [(2, "yes"), (10, "no")]
    assert match([(2, "yes"), (10, "no")], changes) == (2, [0, 0])
    assert match([(3, "yes"), (3, "yes"), (11, "no")], changes) == (2, [1, 1])  # the duplicate is a false event
    assert match([(2 + TOLERANCE + 1, "yes")], changes) == (0, [])  # too late
    assert match([(1, "yes")], changes) == (0, [])  # before the truth: not a detection
    assert match([(10, "yes")], changes) == (0, [])  # the wrong answer
    assert match([(4, "yes")], [(2, "yes"), (3, "no")]) == (0, [])  # after the truth moved on


@pytest.fixture(scope="module")
def bundled_engines(tmp_path_factory):
    from mirasol_edge.assets import BUNDLED_CHECKPOINT
    from mirasol_edge.toolkit.build import build
    from mirasol_edge.toolkit.recipe import load_recipe

    out = tmp_path_factory.mktemp("engines") / "bundled-cpu"
    build(load_recipe("cpu"), out, checkpoint=BUNDLED_CHECKPOINT)
    return out


def test_mirasol_eval_watch_reports_every_watch_type(bundled_engines):
    result = CliRunner().invoke(eval_main, ["-e", str(bundled_engines), "--watch", "--clips", "1", "--length", "24",
                                            "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("[") :])[0]
    assert set(report["per_type"]) == set(WATCH_QUESTIONS)
    assert report["chunks_per_clip"] == 24 and report["clips"] == 1
    facts = sample_long_facts(report["seeds"][0], 24)
    for kind, (_, answers) in WATCH_QUESTIONS.items():
        want = truth_changes([facts.truth(c)[kind] for c in range(24)], answers is not None)
        assert report["per_type"][kind]["truth_changes"] == len(want), kind
        assert 0 <= report["per_type"][kind]["state_accuracy"] <= 1
    assert report["per_type"]["colour"]["truth_changes"] >= 2  # segments of 2 to 6 chunks: it changes
