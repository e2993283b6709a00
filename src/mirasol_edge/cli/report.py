"""What ``mirasol-run`` prints: per-chunk lines, answers, watch events and the summary, as rich
text for people or JSON lines for scripts."""

from __future__ import annotations

import json

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from mirasol_edge.runtime.decode.types import Flags


class Reporter:
    """Per-chunk lines, answers and the final summary, as rich text or JSON lines."""

    def __init__(self, as_json: bool, total: int | None) -> None:
        self.as_json = as_json
        self.console = Console()
        self.progress = None
        if not as_json and total:
            self.progress = Progress(TextColumn("[bold]streaming"), BarColumn(), MofNCompleteColumn(),
                                     TimeRemainingColumn(), console=self.console, transient=True)
            self.task = self.progress.add_task("chunks", total=total)
            self.progress.start()

    def chunk(self, result, wait_ms: float) -> None:
        t = result.timings
        if self.as_json:
            click.echo(json.dumps({"event": "chunk", "index": result.index, "t0": result.t0, "t1": result.t1,
                                   "flags": result.flags, "wait_ms": round(wait_ms, 3),
                                   "encode_ms": round(t.encode_ms, 3), "ar_ms": round(t.ar_ms, 3),
                                   "push_ms": round(t.total_ms, 3)}))
            return
        line = (f"chunk {result.index:5d}  [{result.t0:7.2f}s, {result.t1:7.2f}s)  wait {wait_ms:7.2f} ms  "
                f"push {t.total_ms:7.2f} ms (encode {t.encode_ms:.2f}, AR {t.ar_ms:.2f})")
        if result.flags & Flags.PADDED:
            line += "  (padded: the source ended mid-chunk)"
        self.console.print(line, highlight=False)
        if self.progress:
            self.progress.advance(self.task)

    def answer(self, question: str, answer, expected: str | None = None) -> None:
        if self.as_json:
            event = {"event": "answer", "question": question, "answer": answer.text,
                     "chunks_seen": answer.chunks_seen, "truncated": answer.truncated,
                     "first_token_ms": round(answer.first_token_ms, 3), "total_ms": round(answer.total_ms, 3),
                     "tokens": len(answer.tokens)}
            if expected is not None:
                event.update(expected=expected, correct=answer.text == expected)
            click.echo(json.dumps(event))
            return
        check = ""
        if expected is not None:
            check = ("  [green]✓[/]" if answer.text == expected else "  [red]✗[/]") + f" expected {expected!r}"
        self.console.print(f"[bold cyan]Q[/] (after {answer.chunks_seen} chunks) {question}\n[bold green]A[/] "
                           f"{answer.text!r}{check}   [dim]first token {answer.first_token_ms:.1f} ms, "
                           f"{len(answer.tokens)} tokens in {answer.total_ms:.1f} ms[/]", highlight=False)

    def event(self, event) -> None:
        """A watch's answer changed (runtime.watch.WatchEvent)."""
        if self.as_json:
            click.echo(json.dumps({"event": "event", **event.to_dict()}))
            return
        p = f" p={event.probability:.2f}" if event.probability is not None else ""
        where = f" [{event.t0:.2f}s, {event.t1:.2f}s)" if event.t0 is not None else ""
        self.console.print(f"[bold magenta]event[/] chunk {event.chunk_index}{where} {event.watch.question!r}: "
                           f"{event.previous!r} -> [bold]{event.answer!r}[/]{p}"
                           + (f"  evidence {event.evidence}" if event.evidence else ""), highlight=False)

    def summary(self, summary: dict) -> None:
        if self.progress:
            self.progress.stop()
        if self.as_json:
            click.echo(json.dumps({"event": "summary", **summary}))
            return
        push, wait = summary["push_ms"] or {}, summary["wait_ms"] or {}
        self.console.print(
            f"[bold]{summary['chunks']} chunks[/] ({summary['media_seconds']:.1f} s of media) in "
            f"{summary['wall_seconds']:.2f} s: {summary['realtime_factor']:.1f}x real time on "
            f"{summary['backend']['backend']} ({summary['backend']['device']})\n"
            f"push ms  p50 {push.get('p50', 0):.2f}  p99 {push.get('p99', 0):.2f}  max {push.get('max', 0):.2f}   "
            f"wait for chunk ms  p50 {wait.get('p50', 0):.2f}  p99 {wait.get('p99', 0):.2f}"
            + (f"\n[bold]{summary['correct']} answers as expected[/]" if summary["correct"] else "")
            + (f"\ndropped {summary['dropped']} chunks, {summary['reconnects']} reconnects"
               if summary["dropped"] or summary["reconnects"] else "")
            + "".join(f"\nwatch {name!r}: {n} events" for name, n in (summary.get("events") or {}).items()),
            highlight=False)
