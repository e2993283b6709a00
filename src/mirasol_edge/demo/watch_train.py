"""Per-moment ("watch") supervision and evaluation: answers about the latest chunk, at every chunk.

The streaming state at chunk ``c`` (after ``c + 1`` pushes) is exactly what the offline model
gives for the same chunks, with no cut: the TTM memory is carried from chunk 0 (so training
runs every clip from its first chunk; a segment cut out of a long clip would start from the
initial memory and not match), and the AR model is block-causal, windowed to ``W`` chunks,
with ALiBi on chunk distances only (no absolute positions; ``pos`` only masks the slots not
yet written). The text decoder reads the ring of the last ``W`` outputs with their ages
``0..W-1`` (``Mirasol.context_of``), i.e. the offline outputs of chunks ``c-W+1..c`` with age
``c - j``: ``window_context`` builds that for any chunk of an offline pass.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mirasol_edge.toolkit.model import Mirasol
from mirasol_edge.toolkit.tokenizer import prompt_ids

from .dataset import DecodedClip
from .synthetic import WATCH_QUESTIONS

Item = tuple[str, str, float]  # (question, answer, loss weight)


def window_context(outputs: Tensor, clip: Tensor, chunk: Tensor, window: int) -> tuple[Tensor, Tensor, Tensor]:
    """The text decoder's view at ``chunk`` of each row: outputs [B, C, m, D], clip/chunk [R] int64
    -> (context [R, W*m, D], age [R, W*m], valid [R, W*m]), as ``context_of`` gives for a stream there."""
    m = outputs.shape[2]
    age = torch.arange(window, device=outputs.device)
    source = chunk[:, None] - age[None, :]  # [R, W]
    context = outputs[clip[:, None], source.clamp(min=0)]  # [R, W, m, D]
    rows = len(chunk)
    return (context.flatten(1, 2), age.repeat_interleave(m).expand(rows, -1),
            (source >= 0).repeat_interleave(m, dim=1))


def qa_tokens(model: Mirasol, items: list[Item]) -> tuple[Tensor, Tensor]:
    """Prompt + answer + EOS per item: tokens [R, L] and the loss weight of each predicted position."""
    tok, cfg = model.tokenizer, model.cfg
    rows, targets = [], []
    for question, answer, weight in items:
        prompt = prompt_ids(tok, question, cfg.max_question_tokens)
        reply = tok.encode(answer) + [tok.eos_id]
        rows.append(prompt + reply)
        targets.append([0.0] * (len(prompt) - 1) + [weight] * len(reply))
    length = max(map(len, rows))
    tokens = torch.full((len(rows), length), tok.pad_id, dtype=torch.long)
    weights = torch.zeros(len(rows), length - 1)
    for i, (row, target) in enumerate(zip(rows, targets)):
        tokens[i, : len(row)] = torch.tensor(row)
        weights[i, : len(target)] = torch.tensor(target)
    return tokens, weights


def text_logits(model: Mirasol, context: Tensor, age: Tensor, valid: Tensor, tokens: Tensor) -> Tensor:
    memory, cross_bias = model.text.memory(context, age, valid)
    logits, _ = model.text(tokens[:, :-1], model.text.cross_kv(memory), cross_bias)
    return logits


def weighted_text_loss(logits: Tensor, tokens: Tensor, weights: Tensor) -> Tensor:
    per_token = F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten(), reduction="none")
    return (per_token * weights.flatten()).sum() / weights.sum()


SQUARE_KINDS = [k for k in WATCH_QUESTIONS if k.startswith("square-")]
DRAWN = ["beep", "flash", "square", "colour"]  # "square": one of the square-<colour> questions


def moment_picks(clips: list[DecodedClip], rng: np.random.Generator, per_chunk: int = 1,
                 type_weights: dict[str, float] | None = None, yes_weight: float = 2.0
                 ) -> tuple[list[int], list[int], list[Item]]:
    """(clip index, chunk, item) rows: at every chunk of every clip, ``per_chunk`` watch questions drawn
    without replacement from beep / flash / a square-<colour> question / colour. The square question is
    about the chunk's own colour half the time (so "yes" is as common as "no"); a "yes" of beep or flash
    (the rarer answer: ~40% and ~20% of chunks) weighs ``yes_weight``."""
    clip_idx, chunk_idx, items = [], [], []
    for i, clip in enumerate(clips):
        for c in range(clip.frames.shape[0]):
            truth = clip.facts.truth(c)
            for drawn in rng.choice(DRAWN, size=per_chunk, replace=False):
                kind = str(drawn)
                if kind == "square":
                    own = f"square-{truth['colour']}"
                    kind = own if rng.random() < 0.5 else str(rng.choice([k for k in SQUARE_KINDS if k != own]))
                weight = (type_weights or {}).get(kind, 1.0)
                if kind in ("beep", "flash") and truth[kind] == "yes":
                    weight *= yes_weight
                clip_idx.append(i)
                chunk_idx.append(c)
                items.append((WATCH_QUESTIONS[kind][0], truth[kind], weight))
    return clip_idx, chunk_idx, items


def moment_loss(model: Mirasol, outputs: Tensor, clips: list[DecodedClip], rng: np.random.Generator,
                per_chunk: int = 1, type_weights: dict[str, float] | None = None) -> Tensor:
    """Text loss of watch questions at every chunk of the clips (outputs [B, C, m, D] of an offline pass)."""
    clip_idx, chunk_idx, items = moment_picks(clips, rng, per_chunk, type_weights)
    context, age, valid = window_context(outputs, torch.tensor(clip_idx), torch.tensor(chunk_idx),
                                         model.cfg.window_chunks)
    tokens, weights = qa_tokens(model, items)
    return weighted_text_loss(text_logits(model, context, age, valid, tokens), tokens, weights)


@torch.no_grad()
def exact_by_teacher_forcing(model: Mirasol, context: Tensor, age: Tensor, valid: Tensor,
                             items: list[Item]) -> Tensor:
    """[R] bool: greedy decoding would give exactly the item's answer (every answer token and the EOS
    is the argmax given the right prefix; that is what greedy decoding produces, token for token)."""
    tokens, weights = qa_tokens(model, items)
    predicted = text_logits(model, context, age, valid, tokens).argmax(-1)
    wrong = (predicted != tokens[:, 1:]) & (weights > 0)
    return ~wrong.any(1)


@torch.no_grad()
def watch_accuracy(model: Mirasol, clips: list[DecodedClip], batch: int = 16) -> dict:
    """Every watch question at every chunk, through ``encode_chunk`` (the runtime's state), per type:
    accuracy, and the accuracy on chunks where the yes/no truth is "yes" and where it is "no"."""
    was_training = model.training
    model.eval()
    right = {k: 0 for k in WATCH_QUESTIONS}
    seen = {k: 0 for k in WATCH_QUESTIONS}
    yes = {k: [0, 0] for k in WATCH_QUESTIONS}  # [right, seen] where the truth is "yes"
    worst: dict[str, list[int]] = {k: [] for k in WATCH_QUESTIONS}  # (seed, chunk) of the first misses
    for start in range(0, len(clips), batch):
        part = clips[start : start + batch]
        video = torch.from_numpy(np.stack([c.frames for c in part]))
        mel = torch.from_numpy(np.stack([c.mel for c in part]))
        state = model.init_state(len(part))
        for c in range(video.shape[1]):
            _, state = model.encode_chunk(video[:, c], mel[:, c], state)
            context, age, valid = model.context_of(state)
            kinds = list(WATCH_QUESTIONS)
            items = [(WATCH_QUESTIONS[k][0], clip.facts.truth(c)[k], 1.0) for k in kinds for clip in part]
            rows = len(kinds)
            ok = exact_by_teacher_forcing(model, context.repeat(rows, 1, 1), age.repeat(rows, 1),
                                          valid.repeat(rows, 1), items).view(rows, len(part))
            for k, kind_ok in zip(kinds, ok):
                for clip, hit in zip(part, kind_ok.tolist()):
                    seen[k] += 1
                    right[k] += hit
                    if clip.facts.truth(c)[k] == "yes":
                        yes[k][0] += hit
                        yes[k][1] += 1
                    if not hit and len(worst[k]) < 10:
                        worst[k].append([clip.facts.seed, c])
    model.train(was_training)
    report = {"per_type": {k: right[k] / seen[k] for k in WATCH_QUESTIONS},
              "yes_recall": {k: y[0] / y[1] for k, y in yes.items() if y[1]},
              "questions": sum(seen.values()), "clips": len(clips), "chunks": int(clips[0].frames.shape[0]),
              "misses": {k: v for k, v in worst.items() if v}}
    report["mean"] = sum(report["per_type"].values()) / len(WATCH_QUESTIONS)
    return report
