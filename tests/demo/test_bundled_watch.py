"""The bundled checkpoint answers standing questions about *now* at every chunk of a long stream."""

import pytest
import torch

from mirasol_edge.assets import BUNDLED_CHECKPOINT
from mirasol_edge.demo.dataset import decode_long_clips
from mirasol_edge.demo.synthetic import WATCH_QUESTIONS
from mirasol_edge.demo.watch_train import watch_accuracy, window_context
from mirasol_edge.runtime.decode.chunks import ChunkSpec
from mirasol_edge.toolkit import Mirasol

pytestmark = pytest.mark.slow  # decodes long clips and streams them: a minute or so

FRESH_SEED = 30_500_000  # in no training or recorded held-out set


@pytest.fixture(scope="module")
def model():
    return Mirasol.load(BUNDLED_CHECKPOINT)


@pytest.fixture(scope="module")
def clips(model):
    return decode_long_clips(list(range(FRESH_SEED, FRESH_SEED + 3)), ChunkSpec.from_config(model.cfg), workers=1)


def test_watch_questions_at_every_chunk_of_fresh_long_clips(model, clips):
    report = watch_accuracy(model, clips)
    assert report["questions"] == 3 * 64 * len(WATCH_QUESTIONS)
    assert min(report["per_type"].values()) >= 0.95, report


def test_greedy_answers_are_the_scored_answers_and_offline_matches_the_stream(model, clips):
    """What ``watch_accuracy`` scores (teacher forcing) is what ``answer`` says on the stream's state,
    and the offline window (training's view) gives the stream's context at chunk c, beyond W and the TTM's start."""
    clip = clips[0]
    video, mel = torch.from_numpy(clip.frames[None]), torch.from_numpy(clip.mel[None])
    with torch.no_grad():
        outputs = model.ar(model.combine_offline(video.flatten(1, 2), mel.flatten(1, 2)))
        state = model.init_state(1)
        for c in range(40):
            _, state = model.encode_chunk(video[:, c], mel[:, c], state)
            if c in (3, 20, 39):
                truth = clip.facts.truth(c)
                said = {k: model.answer(state, q) for k, (q, _) in WATCH_QUESTIONS.items()}
                assert sum(said[k] == truth[k] for k in said) >= len(said) - 1, (c, said, truth)
                context, age, valid = model.context_of(state)
                offline, off_age, off_valid = window_context(outputs, torch.tensor([0]), torch.tensor([c]),
                                                             model.cfg.window_chunks)
                for a in range(model.cfg.window_chunks):  # the same chunk outputs at the same ages
                    stream_rows = context[0][(age[0] == a) & valid[0]]
                    offline_rows = offline[0][(off_age[0] == a) & off_valid[0]]
                    assert torch.allclose(stream_rows, offline_rows, atol=1e-4), (c, a)
