"""Where watch events go: sinks that deliver event dicts (``WatchEvent.to_dict()``) from a durable spool.

    sink = sink_from_url("https://example.org/hook", "/var/spool/mirasol/door")   # WebhookSink
    sink = sink_from_url("mqtt://broker:1883/site-a", "/var/spool/mirasol/door")   # MqttSink (the [events] extra)
    sink.send(event)          # never waits on the network: spooled on disk, delivered in order by a thread
    sink.stats()              # {"sent", "pending", "dropped", "rejected", "retries", ...}
    sink.close(timeout_s=5)   # what is not delivered stays in the folder; the next sink on it sends it

Modules: ``spool`` (the on-disk queue), ``sink`` (the protocol and the shared sender thread),
``urls`` (URL checks), ``webhook``, ``mqtt``.
"""

from __future__ import annotations

import os
from typing import Any

from mirasol_edge.errors import UsageError
from mirasol_edge.events.mqtt import MqttSink  # paho is imported only when an MqttSink is made
from mirasol_edge.events.sink import Sink, SpoolingSink
from mirasol_edge.events.spool import Spool
from mirasol_edge.events.webhook import WebhookSink

__all__ = ["Sink", "SpoolingSink", "Spool", "sink_from_url", "WebhookSink", "MqttSink"]


def sink_from_url(url: str, spool_dir: str | os.PathLike[str], **options: Any) -> Sink:
    """A ``WebhookSink`` for http(s) URLs, an ``MqttSink`` for mqtt:// ones; ``options`` go to it."""
    scheme = url.split("://", 1)[0].lower() if isinstance(url, str) and "://" in url else ""
    if scheme in ("http", "https"):
        return WebhookSink(url, spool_dir, **options)
    if scheme in ("mqtt", "mqtts"):
        return MqttSink(url, spool_dir, **options)
    raise UsageError(f"event sink {url!r}: expected an http(s):// URL (--webhook) or an mqtt:// URL (--mqtt)")

