"""The synthetic QA generator: deterministic, and its answers are true of the decoded media."""

import collections

import numpy as np

from mirasol_edge.demo.dataset import decode_clip
from mirasol_edge.demo.synthetic import BACKGROUND, CHUNKS, COLOURS, QUESTIONS, sample_facts
from mirasol_edge.runtime.decode.chunks import ChunkSpec
from mirasol_edge.toolkit import MirasolConfig

SPEC = ChunkSpec.from_config(MirasolConfig.preset("tiny"))


def test_same_seed_same_clip_other_seed_other_clip():
    a, b, c = decode_clip(7, SPEC), decode_clip(7, SPEC), decode_clip(8, SPEC)
    assert a.facts == b.facts and np.array_equal(a.frames, b.frames) and np.array_equal(a.mel, b.mel)
    assert a.facts != c.facts
    assert a.frames.shape == (CHUNKS, 4, 32, 32, 3) and a.mel.shape == (CHUNKS, 100, 32)
    assert [qa["question"] for qa in a.facts.qa()] == list(QUESTIONS.values())


def square_colour(frame: np.ndarray) -> str:
    pixels = frame.reshape(-1, 3).astype(int)
    lit = pixels[np.abs(pixels - BACKGROUND).sum(1) > 90]
    mean = lit.mean(0)
    return min(COLOURS, key=lambda name: np.abs(np.array(COLOURS[name]) - mean).sum())


def centre(frame: np.ndarray) -> np.ndarray:
    mask = np.abs(frame.astype(int) - BACKGROUND).sum(-1) > 90
    ys, xs = np.nonzero(mask)
    return np.array([xs.mean(), ys.mean()])


def test_answers_are_true_of_the_decoded_media():
    for seed in (1, 2, 3, 4, 5):
        clip = decode_clip(seed, SPEC)
        facts, answers = clip.facts, clip.facts.answers()
        loud = [c for c in range(CHUNKS) if clip.mel[c].max() > -30]
        assert loud == list(facts.beep_chunks), seed
        brightest = int(np.argmax([f.mean() for f in clip.frames.reshape(CHUNKS, -1, 32, 32, 3).max(1)]))
        assert brightest == facts.flash_chunk, seed
        last = [c for c in range(CHUNKS) if c != facts.flash_chunk][-1]
        first = [c for c in range(CHUNKS) if c != facts.flash_chunk][0]
        assert square_colour(clip.frames[last][0]) == answers["colour"], seed
        assert square_colour(clip.frames[first][0]) == answers["memory"], seed
        move = centre(clip.frames[last][3]) - centre(clip.frames[last][0])  # within a chunk: one crossing
        direction = ("right" if move[0] > 0 else "left") if abs(move[0]) > abs(move[1]) else (
            "down" if move[1] > 0 else "up")
        assert direction == answers["direction"], seed


def test_every_answer_class_occurs():
    seen = collections.defaultdict(set)
    for seed in range(300):
        for kind, answer in sample_facts(seed).answers().items():
            seen[kind].add(answer)
    assert seen["colour"] == seen["memory"] == set(COLOURS)
    assert seen["direction"] == {"left", "right", "up", "down"}
    assert seen["beeps"] == {"one", "two", "three"} and seen["pitch"] == {"high", "low"}
    assert seen["order"] == {"before", "after"}
