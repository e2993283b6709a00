"""``mirasol-run``'s watch options: standing questions on the stream, and where their events go
(the terminal or JSON lines, a webhook, MQTT), each sink fed from the stream's own ``on_event``."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import click

from mirasol_edge.runtime.results import check_question

OPEN = "open"  # --watch-answers open: the watch's greedy answer, an event whenever it changes


def watch_options(command):
    """The options, in the order --help shows them."""
    options = [
        click.option("--watch", "watches", multiple=True, metavar="QUESTION",
                     help="a standing question answered on every chunk; an event each time its answer changes; repeat"),
        click.option("--watch-answers", "watch_answers", multiple=True, metavar="A,B[,...]",
                     help="a --watch's candidate answers, the first the one watched for (default yes,no; 'open': "
                          "its free answer); one for all watches or one per --watch, in order"),
        click.option("--threshold", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.5,
                     show_default=True, help="the first answer's probability that fires a closed-set watch"),
        click.option("--min-chunks", type=click.IntRange(min=1), default=1, show_default=True,
                     help="chunks in a row over the threshold before a watch fires"),
        click.option("--evidence", type=click.Path(file_okay=False), metavar="DIR",
                     help="write an MP4 of the seconds before each event here (bounded: oldest removed first)"),
        click.option("--evidence-seconds", type=click.FloatRange(0.1, 600), default=5.0, show_default=True,
                     help="how much of the stream before an event its evidence shows"),
        click.option("--webhook", metavar="URL", help="POST each event as JSON to URL (spooled while it is down)"),
        click.option("--mqtt", metavar="mqtt://HOST:PORT/PREFIX",
                     help="publish each event to PREFIX/<stream>/<watch> (QoS 1) and its state, retained"),
        click.option("--spool", type=click.Path(file_okay=False), metavar="DIR",
                     help="where undelivered events wait (default: ~/.local/state/mirasol/spool/<stream>)"),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@dataclass(frozen=True)
class WatchPlan:
    questions: tuple[tuple[str, tuple[str, ...] | None], ...]
    threshold: float
    min_chunks: int
    evidence: str | None
    evidence_seconds: float
    webhook: str | None
    mqtt: str | None
    spool: str | None

    @classmethod
    def from_options(cls, watches, watch_answers, threshold, min_chunks, evidence, evidence_seconds, webhook, mqtt,
                     spool) -> WatchPlan:
        """Checked before anything opens, each problem naming its option."""
        if watch_answers and not watches:
            raise click.UsageError("--watch-answers goes with --watch")
        if len(watch_answers) not in (0, 1, len(watches)):
            raise click.UsageError(f"--watch-answers: give one for all {len(watches)} --watch or one per --watch, "
                                   f"not {len(watch_answers)}")
        if (evidence or webhook or mqtt) and not watches:
            raise click.UsageError("--evidence, --webhook and --mqtt go with --watch")
        parsed = []
        for i, question in enumerate(watches):
            check_question(question, "--watch question")
            text = watch_answers[i if len(watch_answers) > 1 else 0] if watch_answers else "yes,no"
            answers = None if text.strip() == OPEN else tuple(a.strip() for a in text.split(","))
            if answers is not None and (len(answers) < 2 or not all(answers)):
                raise click.UsageError(f"--watch-answers {text!r}: two or more answers, comma-separated "
                                       f"(e.g. yes,no), or '{OPEN}'")
            parsed.append((question, answers))
        return cls(tuple(parsed), threshold, min_chunks, evidence, evidence_seconds, webhook, mqtt, spool)


def start_watching(stream, plan: WatchPlan, reporter) -> list:
    """Register the plan's watches on ``stream``; the reporter and every sink listen. The sinks, to close."""
    if not plan.questions:
        return []
    if plan.evidence:
        if not hasattr(stream, "keep_evidence"):
            raise click.UsageError("--evidence: a stream on a server keeps no chunks to show; run it here (-e)")
        stream.keep_evidence(plan.evidence)
    sinks = _sinks(plan, stream.name)
    stream.on_event(reporter.event)
    for sink in sinks:
        stream.on_event(lambda event, sink=sink: sink.send(event.to_dict()))
    for question, answers in plan.questions:
        stream.watch(question, answers, threshold=plan.threshold, min_chunks=plan.min_chunks,
                     evidence_seconds=plan.evidence_seconds if plan.evidence else 0)
    return sinks


def _sinks(plan: WatchPlan, stream_name: str) -> list:
    if not (plan.webhook or plan.mqtt):
        return []
    from mirasol_edge.events import sink_from_url

    spool = Path(plan.spool or Path(os.path.expanduser("~/.local/state/mirasol/spool")) / stream_name)
    sinks = []
    try:
        for option, url in (("webhook", plan.webhook), ("mqtt", plan.mqtt)):
            if url:
                sinks.append(sink_from_url(url, spool / option))
    except Exception:
        for sink in sinks:
            sink.close()
        raise
    return sinks


def close_sinks(sinks: list, timeout_s: float = 5.0) -> dict:
    """Each sink closed (what it could not deliver stays in its spool for the next run); their numbers."""
    out = {}
    for sink in sinks:
        sink.close(timeout_s)
        out[type(sink).__name__] = sink.stats()
    return out
