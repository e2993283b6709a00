"""Long clips for standing questions: per-chunk truth that the decoded media bears out, deterministic seeds."""

import collections
import tempfile

import numpy as np
import pytest

from mirasol_edge.demo import train
from mirasol_edge.demo.dataset import decode_clip
from mirasol_edge.demo.synthetic import (
    CHUNKS,
    COLOURS,
    HELDOUT_SEED,
    LONG_CHUNKS,
    LONG_HELDOUT_SEED,
    LONG_TRAIN_SEED,
    QUESTIONS,
    WATCH_QUESTIONS,
    make_long_clip,
    sample_facts,
    sample_long_facts,
)
from mirasol_edge.runtime.decode.chunks import ChunkSpec, chunks
from mirasol_edge.toolkit import MirasolConfig
from tests.demo.test_synthetic import square_colour

SPEC = ChunkSpec.from_config(MirasolConfig.preset("tiny"))


def seed_with(vcodec: str, start: int = LONG_HELDOUT_SEED) -> int:
    return next(s for s in range(start, start + 100) if sample_long_facts(s).vcodec == vcodec)


@pytest.mark.parametrize("vcodec", ["libx264", "libvpx-vp9"])
def test_per_chunk_truth_is_true_of_the_decoded_media(vcodec):
    seed = seed_with(vcodec)
    with tempfile.TemporaryDirectory() as tmp:
        path, facts = make_long_clip(seed, tmp)
        got = list(chunks(path, SPEC))
    assert len(got) == facts.chunks == LONG_CHUNKS >= 60
    assert path.suffix == (".mp4" if vcodec == "libx264" else ".mkv")
    for c, chunk in enumerate(got):
        truth = facts.truth(c)
        assert (chunk.mel.max() > -30) == (truth["beep"] == "yes"), (seed, c)
        brightest = chunk.frames.reshape(len(chunk.frames), -1).mean(1).max()
        assert (brightest > 150) == (truth["flash"] == "yes"), (seed, c, brightest)
        # frame 0 (t = c.0 s) is never flashed; the colour changes only at chunk boundaries,
        # so the first and the last frame of the chunk show the same square
        assert square_colour(chunk.frames[0]) == square_colour(chunk.frames[-1]) == truth["colour"], (seed, c)
        assert [truth[f"square-{name}"] for name in COLOURS] == [
            "yes" if name == truth["colour"] else "no" for name in COLOURS]


def test_truth_is_per_chunk_and_several_events_happen():
    facts = sample_long_facts(LONG_TRAIN_SEED + 3)
    starts = [s[0] for s in facts.segments]
    assert starts[0] == 0 and all(2 <= b - a <= 6 for a, b in zip(starts, starts[1:]))
    assert all(a[1] != b[1] for a, b in zip(facts.segments, facts.segments[1:]))  # a change is a change
    assert len(facts.segments) >= 8 and len(facts.flash_chunks) >= 3 and len(facts.beep_chunks) >= 8
    runs = sum(1 for c in facts.beep_chunks if c - 1 not in facts.beep_chunks)
    assert runs >= 3
    for c in range(facts.chunks):
        truth = facts.truth(c)
        assert set(truth) == set(WATCH_QUESTIONS)
        for kind, (_question, answers) in WATCH_QUESTIONS.items():
            assert truth[kind] in (answers or tuple(COLOURS)), (kind, truth[kind])
        assert [q["answer"] for q in facts.qa(c)] == [truth[k] for k in WATCH_QUESTIONS]
    with pytest.raises(IndexError):
        facts.truth(facts.chunks)
    assert WATCH_QUESTIONS["colour"][0] == QUESTIONS["colour"]  # one question, one meaning: the latest chunk


def test_every_answer_occurs_and_length_is_a_parameter():
    seen = collections.defaultdict(collections.Counter)
    for seed in range(LONG_TRAIN_SEED, LONG_TRAIN_SEED + 20):
        facts = sample_long_facts(seed)
        for c in range(facts.chunks):
            for kind, answer in facts.truth(c).items():
                seen[kind][answer] += 1
    assert set(seen["colour"]) == set(COLOURS)
    for kind in set(WATCH_QUESTIONS) - {"colour"}:
        assert set(seen[kind]) == {"yes", "no"} and seen[kind]["yes"] >= 0.1 * sum(seen[kind].values()), kind
    assert sample_long_facts(5, chunks=200).chunks == 200 and max(sample_long_facts(5, 200).beep_chunks) < 200


def test_the_six_chunk_clip_has_per_chunk_truth_too():
    for seed in range(20):
        facts = sample_facts(seed)
        assert facts.truth(CHUNKS - 1)["colour"] == facts.answers()["colour"]
        assert facts.truth(0)["colour"] == facts.answers()["memory"]
        assert [c for c in range(CHUNKS) if facts.truth(c)["beep"] == "yes"] == list(facts.beep_chunks)
        assert [c for c in range(CHUNKS) if facts.truth(c)["flash"] == "yes"] == [facts.flash_chunk]


def test_same_seed_same_long_clip_other_seed_other_clip():
    a, b = decode_clip(LONG_TRAIN_SEED, SPEC, long=12), decode_clip(LONG_TRAIN_SEED, SPEC, long=12)
    c = decode_clip(LONG_TRAIN_SEED + 1, SPEC, long=12)
    assert a.facts == b.facts and np.array_equal(a.frames, b.frames) and np.array_equal(a.mel, b.mel)
    assert a.facts != c.facts and a.frames.shape == (12, 4, 32, 32, 3) and a.mel.shape == (12, 100, 32)
    assert sample_long_facts(LONG_TRAIN_SEED) == sample_long_facts(LONG_TRAIN_SEED)


def test_held_out_seeds_are_disjoint_from_training_seeds():
    parser = train.build_parser()
    args = parser.parse_args([])
    ranges = train.seed_ranges(args.seed, args.clips, args.heldout, args.long_clips, args.long_heldout)
    assert min(ranges["heldout"]) == HELDOUT_SEED and min(ranges["long_heldout"]) == LONG_HELDOUT_SEED
    for name in ("train", "long_train"):
        assert max(ranges[name]) < HELDOUT_SEED
    assert min(ranges["long_heldout"]) >= HELDOUT_SEED
    names = list(ranges)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not set(ranges[a]) & set(ranges[b]), (a, b)
    with pytest.raises(ValueError, match="overlap"):
        train.seed_ranges(0, HELDOUT_SEED + 1, 10, 0, 0)
