"""``mirasol-run``'s ``--view``: a live page beside the run (``mirasol_edge.view``, imported only
when asked for). The push loop hands the view references; the page's work happens elsewhere."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import click

from mirasol_edge.console import err

PACE_ENV = "MIRASOL_VIEW_PACE_S"  # tests: at least this many seconds per chunk, so a page can watch a short clip


def view_options(command):
    options = [
        click.option("--view", "view", metavar="[HOST:]PORT",
                     help="serve a live page here while streaming (frames, mel, latency chart, answers, a question "
                          "box, watches and their evidence); host 127.0.0.1 unless given"),
        click.option("--view-token", metavar="TOKEN",
                     help="the page's token (?token=TOKEN or an X-Mirasol-Token header); needed for any bind but "
                          "loopback, checked on every request when given"),
        click.option("--view-linger", type=click.FloatRange(min=0), metavar="SECONDS",
                     help="keep the page up this long after the last chunk (default: until Ctrl-C)"),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@dataclass(frozen=True)
class ViewPlan:
    host: str
    port: int
    token: str | None
    linger: float | None

    @classmethod
    def from_options(cls, view, view_token, view_linger) -> ViewPlan | None:
        if view is None:
            if view_token is not None or view_linger is not None:
                raise click.UsageError("--view-token and --view-linger go with --view")
            return None
        host, _, port = view.rpartition(":")
        host = host.strip("[]") or "127.0.0.1"
        if not port.isdigit() or not 0 <= int(port) <= 65535:
            raise click.UsageError(f"--view {view!r}: give [HOST:]PORT, e.g. 8090 or 0.0.0.0:8090")
        if view_token is not None and not view_token.strip():
            raise click.UsageError("--view-token is empty")
        if host not in ("127.0.0.1", "localhost", "::1") and not view_token:
            raise click.UsageError(f"--view {view}: a page on {host} is reachable from other machines: "
                                   "give --view-token TOKEN (or bind 127.0.0.1)")
        return cls(host, int(port), view_token, view_linger)


class _Tee:
    """The reporter, with the answers also shown on the page."""

    def __init__(self, reporter, view) -> None:
        self._reporter, self._view = reporter, view

    def answer(self, question, answer, expected=None) -> None:
        self._view.answer(question, answer)
        self._reporter.answer(question, answer, expected)

    def summary(self, summary: dict) -> None:
        self._view.state.finish(summary)
        self._reporter.summary(summary)

    def __getattr__(self, name):
        return getattr(self._reporter, name)


def start_view(plan: ViewPlan | None, stream, reporter, facts: dict):
    """The view serving (before the first push), and the reporter to use; (None, reporter) without --view."""
    if plan is None:
        return None, reporter
    try:
        from mirasol_edge.view.server import View
    except ImportError as exc:
        raise click.UsageError(f"--view needs the view extra: pip install 'mirasol-edge[view]' ({exc})") from None
    view = View(stream, plan.host, plan.port, plan.token, facts).start()
    err.print(f"view: {view.url}" + ("?token=…" if plan.token else ""), highlight=False)
    return view, _Tee(reporter, view)


def precision_of(stream) -> str:
    """Each component's precision, as the build chose it ("int8", or "chunk_encoder int8 · ar_step int4 · ...")."""
    engines = getattr(stream, "engines", None)
    if engines is None:
        return "the server's build"
    chosen = {name: c.precision for name, c in engines.dir.components.items()}
    if len(set(chosen.values())) == 1:
        return next(iter(chosen.values()))
    return " · ".join(f"{name} {p}" for name, p in chosen.items())


def tap(view, chunks):
    """What the push loop calls after each push (None without --view): the view gets references."""
    if view is None:
        return None
    pace = float(os.environ.get(PACE_ENV) or 0)
    last = [time.monotonic()]

    def after_push(chunk, result, wait_ms: float) -> None:
        view.push(chunk, result, wait_ms, dropped=chunks.stats.dropped, reconnects=chunks.stats.reconnects,
                  decoder=getattr(chunk, "decoder", None))
        if pace:
            time.sleep(max(0.0, pace - (time.monotonic() - last[0])))
            last[0] = time.monotonic()
    return after_push


def linger(view, plan: ViewPlan | None) -> None:
    """After the last chunk: the page stays up (showing the summary) for --view-linger or until Ctrl-C."""
    if view is None:
        return
    err.print("view: the run is done; the page stays up " +
              (f"{plan.linger:g} s" if plan.linger is not None else "until Ctrl-C"), highlight=False)
    try:
        deadline = None if plan.linger is None else time.monotonic() + plan.linger
        while deadline is None or time.monotonic() < deadline:
            time.sleep(0.2 if deadline is None else min(0.2, max(0.0, deadline - time.monotonic())))
    except KeyboardInterrupt:
        pass
