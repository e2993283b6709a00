"""``MqttSink``: watch events published to an MQTT broker (paho-mqtt 2.x), in order, from a durable spool.

For each event, two messages, both QoS 1:

- ``PREFIX/<stream>/<watch>``: the event's JSON, as spooled;
- ``PREFIX/<stream>/<watch>/state``, retained: the watch's current state
  (``{"answer", "probability", "chunk_index", "time"}``), so a subscriber arriving later learns it.

One event is in flight at a time: it leaves the spool only once the broker acknowledged both
(PUBACK, paho's ``on_publish``). While the broker is away, paho reconnects by itself
(``reconnect_delay_set``, ``loop_start``) and, on reconnecting, sends the unacknowledged head again
(with the DUP flag); events sent meanwhile wait in the spool behind it. So delivery is
at-least-once (the head in flight when the connection dropped may arrive twice) and in order.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import uuid
from typing import Any

from mirasol_edge.errors import MirasolError, UsageError
from mirasol_edge.events.sink import SpoolingSink
from mirasol_edge.events.urls import check_slugs, parse_mqtt_url

log = logging.getLogger(__name__)

STATE_KEYS = ("answer", "probability", "chunk_index", "time")


def paho_client_module():
    """paho-mqtt's client module (2.x), or a UsageError saying how to install it."""
    try:
        import paho.mqtt.client as mqtt
    except ImportError as e:
        raise UsageError("--mqtt needs paho-mqtt 2.x, which is not installed: pip install 'mirasol-edge[events]'") from e
    if not hasattr(mqtt, "CallbackAPIVersion"):
        raise UsageError("--mqtt needs paho-mqtt 2.x; an older one is installed: pip install 'mirasol-edge[events]'")
    return mqtt


def state_payload(event: dict[str, Any]) -> bytes:
    """What the retained ``.../state`` topic holds for ``event``."""
    return json.dumps({key: event.get(key) for key in STATE_KEYS}, separators=(",", ":")).encode()


class MqttSink(SpoolingSink):
    """Publish each event to ``mqtt://HOST[:PORT]/PREFIX``; see the module's docstring."""

    thread_name = "mqtt-sink"

    def __init__(self, url: str, spool_dir: str | os.PathLike[str], *, client_id: str | None = None,
                 keepalive_s: int = 30, min_reconnect_s: float = 0.5, max_reconnect_s: float = 30.0,
                 max_events: int = 10_000, max_bytes: int = 32 * 1024 * 1024, fsync: bool = True):
        self.target = parse_mqtt_url(url)
        self.url = url
        mqtt = paho_client_module()
        super().__init__(spool_dir, max_events=max_events, max_bytes=max_bytes, fsync=fsync)
        self._acks = threading.Condition()
        self._acked: set[int] = set()
        self._connected = threading.Event()
        self._connects = 0
        self.client_id = client_id or f"mirasol-edge-{uuid.uuid4().hex[:12]}"
        try:
            self._client = self._connect(mqtt, keepalive_s, min_reconnect_s, max_reconnect_s)
        except (OSError, ValueError) as e:
            self.spool.close()
            raise UsageError(f"--mqtt {url!r}: {e}") from e
        self._start()

    def _connect(self, mqtt, keepalive_s: int, min_reconnect_s: float, max_reconnect_s: float):
        client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id,
                             clean_session=True)
        client.reconnect_delay_set(min_reconnect_s, max_reconnect_s)  # type: ignore[arg-type] (floats work)
        if self.target.username:
            client.username_pw_set(self.target.username, self.target.password)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.connect_async(self.target.host, self.target.port, keepalive=keepalive_s)
        client.loop_start()  # connects, and reconnects whenever the broker goes away
        return client

    # -- paho's callbacks (its network thread) ----------------------------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.error("mqtt %s refused the connection: %s", self.url, reason_code)
            return
        self._connects += 1
        if self._connects > 1:
            self._count("retries")
            log.info("mqtt %s: connected again; resending what is unacknowledged", self.url)
        self._connected.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        if self._connected.is_set() and not self._stop.is_set():
            log.warning("mqtt %s: connection lost (%s); reconnecting, events wait in %s", self.url, reason_code,
                        self.spool.folder)
        self._connected.clear()

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        with self._acks:
            self._acked.add(mid)
            self._acks.notify_all()

    # -- the sender thread ------------------------------------------------------------------------
    def _publish(self, topic: str, payload: bytes, retain: bool) -> int:
        info = self._client.publish(topic, payload, qos=1, retain=retain)
        # MQTT_ERR_NO_CONN still keeps a QoS 1 message queued: paho sends it once connected.
        if info.rc not in (0, 4):  # MQTT_ERR_SUCCESS, MQTT_ERR_NO_CONN
            raise MirasolError(f"mqtt {self.url}: paho could not queue a message to {topic} (rc {info.rc})")
        return info.mid

    def _deliver_loop(self) -> None:
        while (entry := self._next()) is not None:
            event = entry.event
            try:
                stream, watch = check_slugs(event)
            except UsageError as e:
                log.error("%s; event %d dropped", e, entry.seq)
                self.spool.remove(entry.seq)
                self._count("rejected")
                continue
            mids = {self._publish(self.target.event_topic(stream, watch), entry.data, retain=False),
                    self._publish(self.target.state_topic(stream, watch), state_payload(event), retain=True)}
            with self._acks:
                while not mids <= self._acked and not self._stop.is_set():
                    self._acks.wait(0.5)
                if not mids <= self._acked:
                    return  # stopping: the event stays in the spool for the next run
                self._acked -= mids
            self.spool.remove(entry.seq)
            self._count("sent")

    def _interrupt(self) -> None:
        with self._acks:
            self._acks.notify_all()

    def _release(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), "connected": self._connected.is_set()}
