"""Train a Mirasol preset on the synthetic audio-video QA task (``mirasol_edge.demo``), on a CPU.

Losses: the answer's text loss (teacher forcing) and the paper's next-chunk latent loss
(the AR head predicts the next chunk's Combiner latents). Two kinds of text supervision:
the six end-of-clip questions of the 6-chunk clips (asked after the last chunk), and the
watch questions (``WATCH_QUESTIONS``: about the latest chunk) at every chunk of the 6-chunk
clips and of long clips (``LONG_CHUNKS``), each chunk seen through the window the runtime
would hold there (``watch_train.window_context``). Training runs the model offline over
whole clips from their first chunk (the TTM memory is carried from chunk 0, so cut-out
segments would not match a stream). Accuracy is measured the way it is used: chunk by chunk
through ``encode_chunk`` and then the answers, on held-out clips with other seeds.

    python -m mirasol_edge.demo.train      # the bundled model, from scratch: 33 min + 5 min of data on 2 cores
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mirasol_edge.demo.dataset import DecodedClip, cached_clips
from mirasol_edge.demo.synthetic import (
    HELDOUT_SEED,
    LONG_CHUNKS,
    LONG_HELDOUT_SEED,
    LONG_TRAIN_SEED,
    QUESTIONS,
    WATCH_QUESTIONS,
)
from mirasol_edge.demo.watch_train import moment_loss, qa_tokens, watch_accuracy
from mirasol_edge.runtime.config import MirasolConfig
from mirasol_edge.runtime.decode.chunks import ChunkSpec
from mirasol_edge.toolkit.model import Mirasol

MASTERED = 0.98  # the check set's accuracy of every type that ends the end-of-clip-only phase
CHECK_CLIPS = 100  # training clips kept out of the steps to check that phase


def text_batch(model: Mirasol, clips: list[DecodedClip], type_weights: dict[str, float] | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Every question of every clip: tokens [B*Q, L] and the loss weight of each position to predict
    (0 for the prompt and padding; ``type_weights`` weighs question types, default 1)."""
    return qa_tokens(model, [(qa["question"], qa["answer"], (type_weights or {}).get(qa["type"], 1.0))
                             for clip in clips for qa in clip.facts.qa()])


def offline(model: Mirasol, clips: list[DecodedClip]) -> tuple[torch.Tensor, torch.Tensor]:
    """Whole clips from their first chunk -> (outputs [B, C, m, D], latent loss)."""
    video = torch.from_numpy(np.stack([c.frames for c in clips]))
    mel = torch.from_numpy(np.stack([c.mel for c in clips]))
    latents = model.combine_offline(video.flatten(1, 2), mel.flatten(1, 2))  # [B, C, m, Dc]
    outputs = model.ar(latents)  # [B, C, m, D]
    # The latent loss trains the AR model (and its head) to predict the next chunk; through
    # the encoders it would reward latents that are easy to predict, i.e. all alike.
    predicted = model.ar.head(model.ar(latents.detach())[:, :-1])
    return outputs, F.mse_loss(predicted, latents[:, 1:].detach())


def losses(model: Mirasol, clips: list[DecodedClip], type_weights: dict[str, float] | None = None,
           long_clips: list[DecodedClip] | None = None, rng: np.random.Generator | None = None,
           moment_weight: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(text loss, latent loss): the six end-of-clip questions of the 6-chunk clips, plus (``moment_weight``
    > 0) watch questions at every chunk of those clips and of the long clips."""
    outputs, latent_loss = offline(model, clips)
    text_loss = end_of_clip_loss(model, clips, outputs, type_weights)
    if moment_weight > 0:
        rng = rng or np.random.default_rng()
        moment = moment_loss(model, outputs, clips, rng, 1, type_weights)
        if long_clips:
            long_outputs, long_latent = offline(model, long_clips)
            moment = 0.5 * (moment + moment_loss(model, long_outputs, long_clips, rng, 2, type_weights))
            latent_loss = 0.5 * (latent_loss + long_latent)
        text_loss = text_loss + moment_weight * moment
    return text_loss, latent_loss


def end_of_clip_loss(model: Mirasol, clips: list[DecodedClip], outputs: torch.Tensor,
                     type_weights: dict[str, float] | None = None) -> torch.Tensor:
    context, age, valid = model.context_of(outputs.flatten(1, 2))
    per_clip = len(QUESTIONS)
    memory, cross_bias = model.text.memory(*(t.repeat_interleave(per_clip, 0) for t in (context, age, valid)))
    tokens, weights = text_batch(model, clips, type_weights)
    logits, _ = model.text(tokens[:, :-1], model.text.cross_kv(memory), cross_bias)
    per_token = F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten(), reduction="none")
    return (per_token * weights.flatten()).sum() / weights.sum()


@torch.no_grad()
def streaming_accuracy(model: Mirasol, clips: list[DecodedClip]) -> dict:
    """Exact match per question type, through ``encode_chunk`` + ``answer`` (the runtime's path)."""
    model.eval()
    state = model.init_state(len(clips))
    video = torch.from_numpy(np.stack([c.frames for c in clips]))
    mel = torch.from_numpy(np.stack([c.mel for c in clips]))
    for i in range(video.shape[1]):
        _, state = model.encode_chunk(video[:, i], mel[:, i], state)
    right = {kind: 0 for kind in QUESTIONS}
    for kind, question in QUESTIONS.items():
        answers = model.answer(state, [question] * len(clips))
        right[kind] = sum(a == c.facts.answers()[kind] for a, c in zip(answers, clips))
    model.train()
    per_type = {k: v / len(clips) for k, v in right.items()}
    return {"exact_match": sum(right.values()) / (len(clips) * len(QUESTIONS)), "per_type": per_type}


def train(preset: str, clips: int, heldout: int, minutes: float, seed: int, batch: int, lr: float,
          cache: Path | None, type_weights: dict[str, float] | None = None, log_every: int = 25,
          eval_every_minutes: float = 10.0, long_clips: int = 0, long_heldout: int = 0, long_batch: int = 4,
          long_chunks: int = LONG_CHUNKS, moment_weight: float = 1.0, init: Path | None = None,
          short_first_minutes: float = 0.0, short_batch: int = 32, check_clips: int = CHECK_CLIPS,
          check_every_minutes: float = 1.5) -> tuple[Mirasol, dict]:
    torch.manual_seed(seed)
    cfg = MirasolConfig.preset(preset)
    spec = ChunkSpec.from_config(cfg)
    start = time.perf_counter()
    seeds = seed_ranges(seed, clips, heldout, long_clips, long_heldout)
    train_set = cached_clips(list(seeds["train"]), spec, cache and cache.with_name(f"{cache.stem}-train.npz"))
    test_set = cached_clips(list(seeds["heldout"]), spec, cache and cache.with_name(f"{cache.stem}-heldout.npz"))
    long_name = f"long{long_chunks}"
    long_train = cached_clips(list(seeds["long_train"]), spec,
                              cache and cache.with_name(f"{cache.stem}-{long_name}-train.npz"),
                              long=long_chunks) if long_clips else []
    long_test = cached_clips(list(seeds["long_heldout"]), spec,
                             cache and cache.with_name(f"{cache.stem}-{long_name}-heldout.npz"),
                             long=long_chunks) if long_heldout else []
    data_seconds = time.perf_counter() - start
    print(f"data: {clips} training + {heldout} held-out clips, {long_clips} + {long_heldout} long clips "
          f"({long_chunks} chunks) in {data_seconds:.0f}s", flush=True)

    model = Mirasol(cfg).train()
    if init is not None:  # fine-tune: the same config, weights from a checkpoint
        model.load_state_dict(Mirasol.load(init).state_dict())
        model.train()
    # Measured: at 1e-3 the encoders' features churn faster than the text decoder can learn
    # to read them, and answers stay at the prior; the encoders and AR model learn at lr/3.
    text = list(model.text.parameters())
    others = [p for p in model.parameters() if all(p is not t for t in text)]
    optimizer = torch.optim.AdamW([{"params": text, "scale": 1.0}, {"params": others, "scale": 1 / 3}],
                                  lr=lr, weight_decay=0.01)
    rng = np.random.default_rng(seed)
    # Curriculum (measured: from scratch, "direction" needs ~1,000 steps of 32 clips before it leaves
    # chance, and steps with long clips cost ~3x): first the six end-of-clip questions of the 6-chunk
    # clips alone, until a check set of training seeds (kept out of the steps) answers every type, or
    # for at most ``short_first_minutes``; then everything.
    check_set, pool = (train_set[-check_clips:], train_set[:-check_clips]) if short_first_minutes else ([], train_set)
    short_first, next_check = None, check_every_minutes * 60
    budget = minutes * 60
    curve, step, next_eval = [], 0, eval_every_minutes * 60
    train_start = time.perf_counter()
    while (elapsed := time.perf_counter() - train_start) < budget:
        fraction = elapsed / budget  # warm up, then cosine decay over the time budget
        for group in optimizer.param_groups:
            group["lr"] = group["scale"] * lr * min(1.0, step / 50) * 0.5 * (1 + math.cos(math.pi * fraction))
        short_only = bool(short_first_minutes) and short_first is None
        picked = [pool[i] for i in rng.choice(len(pool), size=short_batch if short_only else batch, replace=False)]
        long_picked = [long_train[i] for i in rng.choice(len(long_train), size=long_batch, replace=False)
                       ] if long_train and not short_only else None
        text_loss, latent_loss = losses(model, picked, type_weights, long_picked, rng,
                                        0.0 if short_only else moment_weight)
        loss = text_loss + 0.1 * latent_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step += 1
        if short_only and elapsed >= next_check:
            check = streaming_accuracy(model, check_set)
            next_check += check_every_minutes * 60
            curve.append({"step": step, "minutes": round(elapsed / 60, 2), "check": check["per_type"]})
            print(json.dumps(curve[-1]), flush=True)
            if min(check["per_type"].values()) >= MASTERED or elapsed >= short_first_minutes * 60:
                short_first = {"step": step, "minutes": round(elapsed / 60, 2), "check": check}
        if step % log_every == 0:
            point = {"step": step, "minutes": round(elapsed / 60, 2), "text_loss": round(text_loss.item(), 4),
                     "latent_loss": round(latent_loss.item(), 4)}
            if elapsed >= next_eval:
                point["heldout"] = streaming_accuracy(model, test_set[:100])
                if long_test:
                    point["heldout_watch"] = watch_accuracy(model, long_test[:8])["per_type"]
                next_eval += eval_every_minutes * 60
            curve.append(point)
            print(json.dumps(point), flush=True)
    model.eval()
    final = streaming_accuracy(model, test_set)
    train_minutes = round((time.perf_counter() - train_start) / 60, 2)
    watch = watch_accuracy(model, long_test) if long_test else None
    watch_short = watch_accuracy(model, test_set) if moment_weight > 0 else None
    report = {"preset": preset, "seed": seed, "train_clips": clips, "heldout_clips": heldout,
              "heldout_seeds": [HELDOUT_SEED, HELDOUT_SEED + heldout], "batch": batch, "lr": lr, "steps": step,
              "type_weights": type_weights or {},
              "long_clips": long_clips, "long_chunks": long_chunks, "long_batch": long_batch,
              "long_heldout_clips": long_heldout,
              "long_heldout_seeds": [LONG_HELDOUT_SEED, LONG_HELDOUT_SEED + long_heldout],
              "long_train_seeds": [LONG_TRAIN_SEED, LONG_TRAIN_SEED + long_clips], "moment_weight": moment_weight,
              "init": str(init) if init else None, "short_first_minutes": short_first_minutes,
              "short_batch": short_batch, "check_clips": len(check_set), "short_first": short_first,
              "data_seconds": round(data_seconds, 1), "train_minutes": train_minutes,
              "heldout": final, "heldout_watch_long": watch, "heldout_watch_6chunk": watch_short, "curve": curve}
    print(json.dumps({"final": final, "watch": watch, "watch_6chunk": watch_short}), flush=True)
    return model, report


def seed_ranges(seed: int, clips: int, heldout: int, long_clips: int, long_heldout: int) -> dict[str, range]:
    """The seeds of each set; training sets stay below HELDOUT_SEED and no two sets share a seed."""
    ranges = {"train": range(seed * 100_000, seed * 100_000 + clips), "heldout": range(HELDOUT_SEED, HELDOUT_SEED + heldout),
              "long_train": range(LONG_TRAIN_SEED, LONG_TRAIN_SEED + long_clips),
              "long_heldout": range(LONG_HELDOUT_SEED, LONG_HELDOUT_SEED + long_heldout)}
    names = list(ranges)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            if ranges[a] and ranges[b] and max(ranges[a].start, ranges[b].start) < min(ranges[a].stop, ranges[b].stop):
                raise ValueError(f"seed sets {a} and {b} overlap: {ranges[a]} and {ranges[b]}")
    if any(r and r.stop > HELDOUT_SEED for r in (ranges["train"], ranges["long_train"])):
        raise ValueError(f"training seeds must stay below HELDOUT_SEED ({HELDOUT_SEED}): {ranges}")
    return ranges


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--clips", type=int, default=2000)
    parser.add_argument("--heldout", type=int, default=300)
    parser.add_argument("--minutes", type=float, default=33)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--long-clips", type=int, default=320, help="long training clips (watch questions)")
    parser.add_argument("--long-heldout", type=int, default=48)
    parser.add_argument("--long-batch", type=int, default=4)
    parser.add_argument("--long-chunks", type=int, default=LONG_CHUNKS)
    parser.add_argument("--moment-weight", type=float, default=1.0,
                        help="weight of the watch questions' loss (every chunk); 0: end-of-clip questions only")
    parser.add_argument("--short-first", type=float, default=18.0, metavar="MINUTES",
                        help="first train the 6-chunk clips' end-of-clip questions alone, until a check set "
                             "answers every type or for at most MINUTES; then everything (0: off)")
    parser.add_argument("--short-batch", type=int, default=32, help="6-chunk clips per step in that phase")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--init", type=Path, default=None, help="start from this checkpoint's weights")
    parser.add_argument("--weight", action="append", default=[], metavar="TYPE=W",
                        help="weigh a question type's answer loss, e.g. --weight direction=4")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/mirasol-synthetic/clips.npz"))
    parser.add_argument("--out", type=Path, default=Path("src/mirasol_edge/assets/tiny-synthetic.safetensors"))
    parser.add_argument("--report", type=Path, default=Path("bench/results/train-tiny.json"))
    return parser


def usage_error(args: argparse.Namespace) -> str | None:
    """What makes these options impossible to train with (checked before minutes of data are built)."""
    pool = args.clips - (CHECK_CLIPS if args.short_first else 0)
    if args.short_first and pool < args.short_batch:
        return (f"--short-first keeps {CHECK_CLIPS} of --clips {args.clips} out for its check and draws "
                f"--short-batch {args.short_batch} from the rest: --clips must be at least {CHECK_CLIPS + args.short_batch}")
    if pool < args.batch:
        return f"--batch {args.batch} is more than the {pool} training clips a step can draw from (--clips {args.clips})"
    if args.long_clips and args.long_clips < args.long_batch:
        return f"--long-batch {args.long_batch} is more than --long-clips {args.long_clips}"
    return None


def main() -> None:
    parser = build_parser()
    args = parser.parse_args()
    if problem := usage_error(args):
        parser.error(problem)
    if args.threads:  # measured: with other work on the 2 cores, 1 thread beat 2 several times over
        torch.set_num_threads(args.threads)
    weights = {k: float(v) for k, v in (w.split("=", 1) for w in args.weight)}
    unknown = set(weights) - set(QUESTIONS) - set(WATCH_QUESTIONS)
    if unknown:
        known = list(QUESTIONS) + list(WATCH_QUESTIONS)
        parser.error(f"--weight: unknown question type(s) {sorted(unknown)}; types are {known}")
    model, report = train(args.preset, args.clips, args.heldout, args.minutes, args.seed, args.batch, args.lr,
                          args.cache, weights, long_clips=args.long_clips, long_heldout=args.long_heldout,
                          long_batch=args.long_batch, long_chunks=args.long_chunks, moment_weight=args.moment_weight,
                          init=args.init, short_first_minutes=args.short_first, short_batch=args.short_batch)
    from mirasol_edge.runtime import machine

    given = {k: v for k, v in vars(args).items() if k not in ("cache", "weight") and v is not None}
    report["command"] = "python -m mirasol_edge.demo.train " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in given.items()) + "".join(f" --weight {w}" for w in args.weight)
    report["machine"] = machine.describe()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    model.save(args.out)
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(json.dumps(report, indent=1) + "\n")
    card = {k: report[k] for k in ("command", "preset", "seed", "steps", "train_minutes", "data_seconds", "init",
                                   "heldout_clips", "heldout_seeds", "heldout", "long_heldout_clips",
                                   "long_heldout_seeds", "long_chunks")}
    card["heldout_watch_long"] = report["heldout_watch_long"] and {
        k: report["heldout_watch_long"][k] for k in ("per_type", "yes_recall", "questions", "clips", "chunks")}
    args.out.with_suffix(".json").write_text(json.dumps({"checkpoint": args.out.name, **card,
                                                         "machine": report["machine"]["cpu"]}, indent=1) + "\n")
    print(f"saved {args.out} ({args.out.stat().st_size / 2**20:.1f} MiB) and {args.report}")


if __name__ == "__main__":
    main()
