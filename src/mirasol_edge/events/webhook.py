"""``WebhookSink``: watch events POSTed as JSON to a URL, in order, from a durable spool.

Per event, the receiver's answer decides:

- 2xx: delivered; the event leaves the spool.
- 408, 429, 5xx, or no answer (refused, reset, timed out): the same head is retried after an
  exponential backoff (``min_backoff_s`` doubling to ``max_backoff_s``; a ``Retry-After`` in seconds
  is honoured within that bound), forever: nothing behind it is sent first.
- any other 4xx, and 3xx (redirects are not followed: a POST turned into a GET would lose the event
  silently): the receiver will refuse it every time, so it is dropped, counted in ``rejected`` and
  logged, and the next one goes.

At-least-once: a receiver that handled an event whose answer was lost gets it again (only that
one); dedupe on ``(stream, watch, chunk_index, time)`` if it matters.
"""

from __future__ import annotations

import http.client
import logging
import os
import urllib.error
import urllib.request

from mirasol_edge.events.sink import SpoolingSink
from mirasol_edge.events.spool import Entry
from mirasol_edge.events.urls import check_webhook_url

log = logging.getLogger(__name__)

RETRY_STATUS = {408, 429}


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None  # urllib then raises HTTPError with the 3xx status


class WebhookSink(SpoolingSink):
    """POST each event as JSON to ``url``; see the module's docstring for what each answer does."""

    thread_name = "webhook-sink"

    def __init__(self, url: str, spool_dir: str | os.PathLike[str], *, timeout_s: float = 10.0,
                 min_backoff_s: float = 0.2, max_backoff_s: float = 10.0, headers: dict[str, str] | None = None,
                 max_events: int = 10_000, max_bytes: int = 32 * 1024 * 1024, fsync: bool = True):
        self.url = check_webhook_url(url)
        if not 0 < min_backoff_s <= max_backoff_s or timeout_s <= 0:
            raise ValueError(f"need 0 < min_backoff_s <= max_backoff_s and timeout_s > 0: {min_backoff_s}, "
                             f"{max_backoff_s}, {timeout_s}")
        self.timeout_s, self.min_backoff_s, self.max_backoff_s = timeout_s, min_backoff_s, max_backoff_s
        self.headers = {"User-Agent": "mirasol-edge", **(headers or {}), "Content-Type": "application/json"}
        self._opener = urllib.request.build_opener(_NoRedirects)
        super().__init__(spool_dir, max_events=max_events, max_bytes=max_bytes, fsync=fsync)
        self._start()

    def _post(self, entry: Entry) -> tuple[int | None, str, float | None]:
        """(HTTP status or None when there was no answer, what happened, Retry-After seconds)."""
        request = urllib.request.Request(self.url, data=entry.data, headers=self.headers, method="POST")
        try:
            with self._opener.open(request, timeout=self.timeout_s) as response:
                response.read()
                return response.status, f"HTTP {response.status}", None
        except urllib.error.HTTPError as e:
            retry_after = None
            value = e.headers.get("Retry-After") if e.headers else None
            if value and value.strip().isdigit():
                retry_after = float(value.strip())
            e.close()
            return e.code, f"HTTP {e.code} {e.reason}", retry_after
        except (OSError, http.client.HTTPException) as e:  # URLError, refused, reset, timeout
            reason = getattr(e, "reason", None) or e
            return None, f"no answer ({reason})", None

    def _deliver_loop(self) -> None:
        delay = self.min_backoff_s
        failing_since_logged = False
        while (entry := self._next()) is not None:
            status, what, retry_after = self._post(entry)
            if status is not None and 200 <= status < 300:
                self.spool.remove(entry.seq)
                self._count("sent")
                if failing_since_logged:
                    log.info("webhook %s: delivering again", self.url)
                failing_since_logged = False
                delay = self.min_backoff_s
            elif status is not None and status < 500 and status not in RETRY_STATUS:
                self.spool.remove(entry.seq)
                self._count("rejected")
                log.error("webhook %s refused event %d (%s): dropped; it would refuse it again", self.url,
                          entry.seq, what)
            else:
                if not failing_since_logged:
                    log.warning("webhook %s: %s; retrying event %d with backoff up to %.1f s (events wait in %s)",
                                self.url, what, entry.seq, self.max_backoff_s, self.spool.folder)
                    failing_since_logged = True
                self._count("retries")
                wait = min(max(delay, retry_after or 0.0), self.max_backoff_s)
                self._stop.wait(wait)
                delay = min(delay * 2, self.max_backoff_s)

