"""Watches on a real ONNX Runtime build: the closed-set probabilities are the model's own
teacher-forced ones, batching changes nothing, a snapshot carries the watches, and bad input is
refused at watch() naming the argument. The decisions themselves are checked on given probabilities."""

import math

import numpy as np
import pytest
import torch

from mirasol_edge.assets import SAMPLE_CLIP
from mirasol_edge.errors import UsageError
from mirasol_edge.runtime.decode.chunks import chunks
from mirasol_edge.runtime.engines import MirasolEngines
from mirasol_edge.runtime.stream import MirasolStream
from mirasol_edge.runtime.watch import MAX_WATCHES, Watch, score_feeds, score_row
from mirasol_edge.toolkit.build import build
from mirasol_edge.toolkit.recipe import load_recipe
from mirasol_edge.toolkit.tokenizer import prompt_ids
from tests.conftest import lively_model

QUESTIONS = [("is there a beep?", ("yes", "no")), ("is the square red?", ("yes", "no")),
             ("what colour is the square?", ("red", "green", "blue", "yellow")), ("high or low tone?", ("high", "low"))]


@pytest.fixture(scope="module")
def decoded(tiny_engines):
    with MirasolStream.open(tiny_engines) as stream:
        return list(chunks(SAMPLE_CLIP, stream.spec))


def _teacher_forced(model, state: dict[str, np.ndarray], question: str, answers) -> np.ndarray:
    """Each answer's probability among the answers, straight from the PyTorch text decoder."""
    tok = model.tokenizer
    context, age, valid = model.context_of({k: torch.from_numpy(v) for k, v in state.items()})
    memory, bias = model.text.memory(context, age, valid)
    cross = model.text.cross_kv(memory)
    prompt = prompt_ids(tok, question, model.cfg.max_question_tokens)
    scores = []
    with torch.no_grad():
        for answer in answers:
            row = prompt + tok.encode(answer) + [tok.eos_id]
            logits, _ = model.text(torch.tensor([row[:-1]]), cross, bias)
            logp = torch.log_softmax(logits[0].double(), -1)
            scores.append(sum(float(logp[t - 1, row[t]]) for t in range(len(prompt), len(row))))
    e = np.exp(np.array(scores) - max(scores))
    return e / e.sum()


def test_closed_set_probabilities_are_the_models_own(tiny_engines, decoded):
    model = lively_model()
    with MirasolStream.open(tiny_engines) as stream:
        watches = [stream.watch(q, a) for q, a in QUESTIONS]
        for chunk in decoded[:4]:
            stream.push(chunk)
            state = stream.state()
            for watch, (q, a) in zip(watches, QUESTIONS):
                want = _teacher_forced(model, state, q, a)
                assert watch.probability == pytest.approx(want[0], abs=2e-4)


def test_a_watch_is_one_packed_row_its_prompt_once():
    """Prompt [BOS, q, SEP], answers "ab" and "c": each answer continues the prompt's positions in
    its own segment; the prompt's last token scores both first tokens, and each answer's last token
    its EOS (never fed)."""
    bos, q, sep, a, b, c, eos, pad = 256, 10, 257, 1, 2, 3, 258, 259
    row = score_row([bos, q, sep], [[a, b], [c]], eos)
    assert row.tokens == (bos, q, sep, a, b, c)
    assert row.positions == (0, 1, 2, 3, 4, 3)
    assert row.segments == (0, 0, 0, 1, 1, 2)
    assert row.score_at == (2, 3, 4, 2, 5)
    assert row.score_tokens == (a, b, eos, c, eos)
    assert row.candidate == (0, 0, 0, 1, 1) and row.candidates == 2
    feeds = score_feeds([row, score_row([bos, sep], [[a], [b]], eos)], pad)
    assert feeds["tokens"].shape == (2, 6) and feeds["score_at"].shape == (2, 5)
    assert feeds["tokens"][1].tolist() == [bos, sep, a, b, pad, pad]
    assert feeds["score_tokens"][1].tolist() == [a, eos, b, eos, pad]


def test_many_watches_in_one_call_equal_each_alone(tiny_engines, decoded):
    """Sixteen watches scored together (one text_score call) give what each gives on its own stream."""
    engines = MirasolEngines(tiny_engines)
    try:
        together = engines.stream()
        many = [together.watch(q, a, name=f"w{i}") for i, (q, a) in enumerate(QUESTIONS * 4)]
        alone = [engines.stream() for _ in QUESTIONS]
        single = [s.watch(q, a) for s, (q, a) in zip(alone, QUESTIONS)]
        for chunk in decoded[:3]:
            together.push(chunk)
            for s in alone:
                s.push(chunk)
            for i, w in enumerate(many):
                assert w.probability == pytest.approx(single[i % len(QUESTIONS)].probability, abs=1e-5)
    finally:
        engines.close()


def test_a_batched_build_scores_a_push_group_as_batch_one_does(tmp_path, lively_checkpoint, tiny_engines, decoded):
    batched = tmp_path / "b2"
    build(load_recipe("cpu", ["build.batch=2"]), batched, checkpoint=lively_checkpoint)
    group = MirasolEngines(batched)
    try:
        streams = [group.stream(name=f"cam-{i}") for i in range(3)]  # a group of two, then one alone
        for i, s in enumerate(streams):
            s.watch(*QUESTIONS[i])
        with MirasolStream.open(tiny_engines) as ref0, MirasolStream.open(tiny_engines) as ref1, \
                MirasolStream.open(tiny_engines) as ref2:
            refs = [ref0, ref1, ref2]
            for i, r in enumerate(refs):
                r.watch(*QUESTIONS[i])
            for step in range(3):
                feed = [decoded[(step + i) % len(decoded)] for i in range(3)]
                group.push_many(streams, feed)
                for r, c in zip(refs, feed):
                    r.push(c)
                for s, r in zip(streams, refs):
                    assert s.watches[0].probability == pytest.approx(r.watches[0].probability, abs=1e-4)
    finally:
        group.close()


def test_a_snapshot_carries_the_watches_and_where_they_stand(tiny_engines, decoded, tmp_path):
    sequence = decoded * 2
    with MirasolStream.open(tiny_engines) as whole:
        whole.watch("is the square red?", ("yes", "no"), threshold=0.6, min_chunks=2)
        whole.watch("what colour is the square?")
        want = [[(e.watch.name, e.answer, e.previous) for e in whole.push(c).events] for c in sequence]
    assert sum(map(len, want)) >= 1  # something to carry across the snapshot
    with MirasolStream.open(tiny_engines) as first:
        first.watch("is the square red?", ("yes", "no"), threshold=0.6, min_chunks=2)
        first.watch("what colour is the square?")
        got = [[(e.watch.name, e.answer, e.previous) for e in first.push(c).events] for c in sequence[:5]]
        first.snapshot(tmp_path / "mid.snapshot")
    with MirasolStream.restore(tmp_path / "mid.snapshot") as restored:
        assert [w.name for w in restored.watches] == ["is-the-square-red", "what-colour-is-the-square"]
        assert restored.watches[0].min_chunks == 2 and restored.watches[0].threshold == 0.6
        got += [[(e.watch.name, e.answer, e.previous) for e in restored.push(c).events] for c in sequence[5:]]
    assert got == want


def test_events_carry_the_chunk_and_reach_listeners_even_when_one_raises(tiny_engines, decoded):
    seen, on_watch = [], []

    def broken(event):
        raise RuntimeError("a listener's own bug")

    with MirasolStream.open(tiny_engines, name="Cam 7") as stream:
        stream.on_event(broken)
        stream.on_event(seen.append)
        stream.watch("what colour is the square?", on_event=on_watch.append)
        results = [stream.push(c) for c in decoded]
    events = [e for r in results for e in r.events]
    assert events and seen == events == on_watch
    first = events[0]
    assert first.previous is None and first.chunk_index == 0 and first.stream == "cam-7"
    assert first.t0 == decoded[0].t0 and first.t1 == decoded[0].t1 and first.latency_ms > 0
    assert first.to_dict()["watch"] == "what-colour-is-the-square"
    assert [r.index for r in results] == list(range(len(decoded)))  # the raising listener stopped nothing


def test_every_skips_chunks(tiny_engines, decoded):
    with MirasolStream.open(tiny_engines) as stream:
        w = stream.watch("is there a beep?", ("yes", "no"), every=3)
        for chunk in decoded:
            stream.push(chunk)
    assert w.evaluated == math.ceil(len(decoded) / 3)


def _decisions(watch: Watch, p_first: list[float]) -> list[tuple[int, str, str | None]]:
    out = []
    for i, p in enumerate(p_first):
        fired = watch.update_closed(np.array([p, 1 - p]))
        if fired is not None:
            out.append((i, fired[0], fired[1]))
    return out


def test_hysteresis_min_chunks_and_cooldown():
    ps = [0.2, 0.6, 0.45, 0.6, 0.35, 0.9, 0.9, 0.3, 0.7, 0.7, 0.1]
    assert _decisions(Watch("q?", ("yes", "no")), ps) == [(1, "yes", None), (4, "no", "yes"), (5, "yes", "no"),
                                                          (7, "no", "yes"), (8, "yes", "no"), (10, "no", "yes")]
    assert _decisions(Watch("q?", ("yes", "no"), min_chunks=2), ps) == [
        (6, "yes", None), (7, "no", "yes"), (9, "yes", "no"), (10, "no", "yes")]
    # quiet for 3 chunks after each event: the dip at chunk 4 falls in the quiet, and is over by chunk 5
    assert _decisions(Watch("q?", ("yes", "no"), cooldown_chunks=3), ps) == [(1, "yes", None), (7, "no", "yes")]
    # the default release sits HYSTERESIS below: 0.45 after a 0.6 lets nothing go at threshold 0.5
    assert Watch("q?", ("yes", "no")).release == pytest.approx(0.4)


def test_open_watch_fires_on_change_once_it_holds():
    w = Watch("what colour?", min_chunks=2)
    fired = [(i, f[0], f[1]) for i, t in enumerate(["red", "red", "blue", "red", "blue", "blue"])
             if (f := w.update_open(t)) is not None]
    assert fired == [(1, "red", None), (5, "blue", "red")]


@pytest.mark.parametrize("kwargs, names", [
    (dict(question=""), "empty"),
    (dict(question="x" * 200), "max_question_tokens"),
    (dict(answers=("yes",)), "2 to"),
    (dict(answers=("yes", "yes")), "duplicates"),
    (dict(answers="yes"), "list of at least two"),
    (dict(answers=("yes", "")), "non-empty"),
    (dict(answers=("yes", "n" * 40)), "at most"),
    (dict(answers=("yes", "no"), threshold=1.0), "threshold"),
    (dict(answers=("yes", "no"), threshold=0), "threshold"),
    (dict(answers=("yes", "no"), threshold=0.5, release=0.7), "release"),
    (dict(answers=("yes", "no"), release=float("nan")), "release"),
    (dict(every=0), "every"),
    (dict(every=1.5), "every"),
    (dict(min_chunks=0), "min_chunks"),
    (dict(cooldown_chunks=-1), "cooldown_chunks"),
    (dict(evidence_seconds=-1), "evidence_seconds"),
    (dict(evidence_seconds=3), "keep_evidence"),
])
def test_bad_watches_are_refused_at_watch(tiny_engines, kwargs, names):
    args = {"question": "is there a beep?", **kwargs}
    with MirasolStream.open(tiny_engines) as stream:
        with pytest.raises(UsageError, match=names):
            stream.watch(args.pop("question"), args.pop("answers", None), **args)
        assert stream.watches == ()


def test_too_many_watches_and_duplicate_names_are_refused(tiny_engines):
    with MirasolStream.open(tiny_engines) as stream:
        for i in range(MAX_WATCHES):
            stream.watch("is there a beep?", ("yes", "no"), name=f"w{i}")
        with pytest.raises(UsageError, match=f"{MAX_WATCHES} watches"):
            stream.watch("is there a beep?", ("yes", "no"), name="one-more")
        stream.unwatch("w0")
        with pytest.raises(UsageError, match="already has a watch named 'w1'"):
            stream.watch("is there a beep?", ("yes", "no"), name="w1")
        with pytest.raises(UsageError, match="no watch 'w0'"):
            stream.unwatch("w0")
        assert len(stream.watches) == MAX_WATCHES - 1
