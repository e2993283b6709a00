"""``mirasol-eval --watch``: how well the watches fire, on held-out long clips the model never saw.

Each clip (``synthetic.make_long_clip``, seeds from ``LONG_HELDOUT_SEED``) is encoded with PyAV,
decoded and pushed chunk by chunk through ``MirasolStream`` with every ``WATCH_QUESTIONS`` watch
registered (closed-set yes/no ones and the open colour one). The generator knows each chunk's
truth, so it knows where each watch *should* fire:

- a closed watch, where the truth turns "yes" (at chunk 0 too: it starts unannounced) and where it
  turns back to "no"; an open watch, at chunk 0 and wherever the answer changes;
- an event matches a truth change with the same answer when it comes at that chunk or after it,
  within ``TOLERANCE`` chunks and before the truth changes again; each truth change matches once.

Per watch type: precision (matched events / events), recall (matched changes / changes), the
detection delay in chunks (event chunk - truth chunk: median, p95), false events per hour of
video, and how often the announced state equals the truth after each chunk.
"""

from __future__ import annotations

import tempfile
from collections import defaultdict

import numpy as np

from mirasol_edge.runtime.stream import MirasolEngines

from .synthetic import LONG_CHUNKS, LONG_HELDOUT_SEED, WATCH_QUESTIONS, make_long_clip

TOLERANCE = 3  # chunks after a truth change in which its event counts as on time


def truth_changes(truth: list[str], closed: bool) -> list[tuple[int, str]]:
    """(chunk, answer) where a watch should fire, given its per-chunk truth."""
    changes, announced = [], None if closed else object()
    for chunk, answer in enumerate(truth):
        if closed:
            if (announced is None and answer == "yes") or (announced is not None and answer != announced):
                changes.append((chunk, answer))
                announced = answer
        elif answer != announced:
            changes.append((chunk, answer))
            announced = answer
    return changes


def match(events: list[tuple[int, str]], changes: list[tuple[int, str]]) -> tuple[int, list[int]]:
    """How many events match a truth change, and each match's delay in chunks."""
    used, delays = set(), []
    for k, (chunk, answer) in enumerate(changes):
        until = min(chunk + TOLERANCE, changes[k + 1][0] - 1 if k + 1 < len(changes) else 1 << 62)
        for j, (at, said) in enumerate(events):
            if j not in used and said == answer and chunk <= at <= until:
                used.add(j)
                delays.append(at - chunk)
                break
    return len(used), delays


def evaluate_watches(engine_dir, clips: int = 20, seed: int = LONG_HELDOUT_SEED, length: int = LONG_CHUNKS,
                     threshold: float = 0.5, backend: str = "auto", device: str = "auto",
                     progress=lambda i: None) -> dict:
    from mirasol_edge.runtime.backends import split_backend

    engine_dir, backend = split_backend(str(engine_dir), backend)
    engines = MirasolEngines(engine_dir, backend, device)
    totals = defaultdict(lambda: {"events": 0, "changes": 0, "matched": 0, "state_right": 0, "delays": []})
    chunks_total, push_ms, watch_ms = 0, [], []
    try:
        from mirasol_edge.runtime.decode.chunks import chunks

        with tempfile.TemporaryDirectory(prefix="mirasol-eval-watch-") as tmp:
            for i in range(clips):
                path, facts = make_long_clip(seed + i, tmp, length)
                with engines.stream(name=f"clip-{seed + i}") as stream:
                    watches = {kind: stream.watch(q, answers, name=kind, threshold=threshold)
                               for kind, (q, answers) in WATCH_QUESTIONS.items()}
                    events = defaultdict(list)
                    pushed = 0
                    for chunk in chunks(path, engines.spec):
                        result = stream.push(chunk)
                        push_ms.append(result.timings.total_ms)
                        watch_ms.append(result.timings.watch_ms)
                        for event in result.events:
                            events[event.watch.name].append((event.chunk_index, event.answer))
                        truth = facts.truth(result.index)
                        for kind, watch in watches.items():
                            state = watch.answer if watch.answer is not None or not watch.closed else "no"
                            totals[kind]["state_right"] += state == truth[kind]
                        pushed += 1
                chunks_total += pushed
                for kind, watch in watches.items():
                    changes = truth_changes([facts.truth(c)[kind] for c in range(pushed)], watch.closed)
                    matched, delays = match(events[kind], changes)
                    t = totals[kind]
                    t["events"] += len(events[kind])
                    t["changes"] += len(changes)
                    t["matched"] += matched
                    t["delays"] += delays
                path.unlink()
                progress(i + 1)
    finally:
        engines.close()
    hours = chunks_total * engines.spec.chunk_seconds / 3600
    per_type = {}
    for kind, t in totals.items():
        delays = np.array(t["delays"] or [np.nan])
        per_type[kind] = {
            "precision": round(t["matched"] / t["events"], 4) if t["events"] else None,
            "recall": round(t["matched"] / t["changes"], 4) if t["changes"] else None,
            "delay_chunks_median": float(np.median(delays)), "delay_chunks_p95": float(np.percentile(delays, 95)),
            "false_events_per_hour": round((t["events"] - t["matched"]) / hours, 2),
            "state_accuracy": round(t["state_right"] / chunks_total, 4),
            "events": t["events"], "truth_changes": t["changes"]}
    from mirasol_edge.runtime import machine

    return {"engines": f"{engine_dir}@{engines.backend.name}", "backend": engines.backend.describe(),
            "machine": machine.describe(),
            "clips": clips, "chunks_per_clip": length, "seeds": [seed, seed + clips - 1], "threshold": threshold,
            "tolerance_chunks": TOLERANCE, "video_hours": round(hours, 3), "per_type": per_type,
            "push_ms_p50": round(float(np.median(push_ms)), 3), "watch_ms_p50": round(float(np.median(watch_ms)), 3),
            "watches": len(WATCH_QUESTIONS)}
