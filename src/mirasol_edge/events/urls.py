"""The sinks' URLs, checked when a sink is made: a bad one is a ``UsageError`` naming its option."""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass

from mirasol_edge.errors import UsageError

SLUG_RE = re.compile(r"^[a-z0-9._-]+$")  # a stream's or a watch's name: safe as an MQTT topic level


def _split(url: str, option: str) -> urllib.parse.SplitResult:
    if not isinstance(url, str) or not url.strip():
        raise UsageError(f"{option} {url!r}: expected a URL")
    try:
        parts = urllib.parse.urlsplit(url.strip())
        parts.port  # noqa: B018 (urllib checks the port only when asked)
    except ValueError as e:
        raise UsageError(f"{option} {url!r}: a bad port or address ({e})") from e
    return parts


def check_webhook_url(url: str, option: str = "--webhook") -> str:
    """``url`` if it is an http(s) URL with a host; otherwise a ``UsageError`` naming ``option``."""
    parts = _split(url, option)
    if parts.scheme not in ("http", "https"):
        raise UsageError(f"{option} {url!r}: expected an http:// or https:// URL")
    if not parts.hostname:
        raise UsageError(f"{option} {url!r}: the URL has no host")
    return url.strip()


@dataclass(frozen=True)
class MqttTarget:
    host: str
    port: int
    prefix: str  # topic levels before <stream>/<watch>, without leading or trailing '/'
    username: str | None = None
    password: str | None = None

    def event_topic(self, stream: str, watch: str) -> str:
        return f"{self.prefix}/{stream}/{watch}"

    def state_topic(self, stream: str, watch: str) -> str:
        return f"{self.prefix}/{stream}/{watch}/state"


def parse_mqtt_url(url: str, option: str = "--mqtt") -> MqttTarget:
    """``mqtt://[USER[:PASSWORD]@]HOST[:PORT]/PREFIX`` (port 1883 by default); anything else is a
    ``UsageError`` naming ``option``. ``mqtts://`` (TLS) is refused: not supported yet."""
    parts = _split(url, option)
    if parts.scheme == "mqtts":
        raise UsageError(f"{option} {url!r}: mqtts:// (MQTT over TLS) is not supported yet; use mqtt:// to a "
                         "broker on this host or a trusted network (a local Mosquitto can bridge to a TLS broker)")
    if parts.scheme != "mqtt":
        raise UsageError(f"{option} {url!r}: expected an mqtt://HOST[:PORT]/PREFIX URL")
    if not parts.hostname:
        raise UsageError(f"{option} {url!r}: the URL has no host")
    port = parts.port if parts.port is not None else 1883
    if not 0 < port < 65536:
        raise UsageError(f"{option} {url!r}: port {port} is out of range")
    if parts.fragment or "#" in url:
        raise UsageError(f"{option} {url!r}: the topic prefix can't hold the wildcards '+' or '#'")
    if parts.query:
        raise UsageError(f"{option} {url!r}: the URL can't have a query ('?'); the prefix is its path")
    prefix = urllib.parse.unquote(parts.path).strip("/")
    if not prefix:
        raise UsageError(f"{option} {url!r}: the URL needs a topic prefix, as in mqtt://HOST:1883/mirasol")
    if "+" in prefix or "#" in prefix or "\x00" in prefix:
        raise UsageError(f"{option} {url!r}: the topic prefix {prefix!r} can't hold the wildcards '+' or '#'")
    if "" in prefix.split("/"):
        raise UsageError(f"{option} {url!r}: the topic prefix {prefix!r} has an empty level ('//')")
    user = urllib.parse.unquote(parts.username) if parts.username else None
    password = urllib.parse.unquote(parts.password) if parts.password else None
    return MqttTarget(parts.hostname, port, prefix, user, password)


def check_slugs(event: dict, option: str = "--mqtt") -> tuple[str, str]:
    """The event's stream and watch, checked to be topic-safe slugs."""
    names = []
    for key in ("stream", "watch"):
        value = event.get(key)
        if not isinstance(value, str) or not SLUG_RE.match(value):
            raise UsageError(f"{option}: the event's {key!r} is {value!r}; expected a slug ([a-z0-9._-]+)")
        names.append(value)
    return names[0], names[1]
