"""MqttSink against a real Mosquitto broker: order through a broker restart, the retained state, restarts."""

import re
import sys
import threading

import pytest

from mirasol_edge.errors import UsageError
from mirasol_edge.events import MqttSink

from .broker import Broker, Gate, Subscriber, require_mosquitto
from .helpers import event, free_port, wait_until

PREFIX = "test-site/edge"
FAST = {"min_reconnect_s": 0.1, "max_reconnect_s": 0.5}


@pytest.fixture
def closing():
    stack = []
    yield stack.append
    for close in reversed(stack):
        close()
    assert not [t.name for t in threading.enumerate() if t.name == "mqtt-sink" or t.name.startswith("paho-mqtt")]


@pytest.fixture
def broker(tmp_path, closing):
    b = Broker(require_mosquitto(), tmp_path, free_port())
    closing(b.kill)
    return b


def events_of(messages):
    return [m for topic, m, _ in messages if topic == f"{PREFIX}/cam-7/door"]


def test_every_event_arrives_in_order_through_a_broker_restart(tmp_path, broker, closing):
    broker.start()
    gate = Gate(broker.port)
    closing(gate.stop)
    gate.open.set()
    messages = []
    sub = Subscriber(broker.port, f"{PREFIX}/#", messages)
    sink = MqttSink(f"mqtt://127.0.0.1:{gate.port}/{PREFIX}", tmp_path / "spool", **FAST)
    closing(sink.close)
    for i in range(10):
        sink.send(event(i))
    wait_until(lambda: sink.stats()["sent"] == 10, "the first 10 acknowledged")
    wait_until(lambda: len(events_of(messages)) == 10, "the first 10 received")

    gate.open.clear()
    broker.kill()
    sub.stop()
    for i in range(10, 20):
        sink.send(event(i))  # the broker is away: they wait in the spool
    wait_until(lambda: not sink.stats()["connected"], "the sink to see the broker gone")
    assert sink.stats()["sent"] == 10 and sink.stats()["pending"] == 10

    broker.start()  # the same port
    sub = Subscriber(broker.port, f"{PREFIX}/#", messages)  # subscribed before the sink is let back in
    closing(sub.stop)
    gate.open.set()
    for i in range(20, 30):
        sink.send(event(i))
    wait_until(lambda: sink.stats()["sent"] == 30, "all 30 acknowledged")
    wait_until(lambda: len(events_of(messages)) >= 30, "all 30 received")
    got = events_of(messages)
    assert [e["chunk_index"] for e in got] == list(range(30))  # once each, in order
    assert got == [event(i) for i in range(30)]
    assert sink.stats()["retries"] >= 1 and sink.stats()["pending"] == 0
    states = [m for topic, m, _ in messages if topic == f"{PREFIX}/cam-7/door/state"]
    assert [s["chunk_index"] for s in states] == list(range(30))

    fresh = Subscriber(broker.port, f"{PREFIX}/cam-7/door/state")  # arrives late: gets the retained state
    closing(fresh.stop)
    wait_until(lambda: fresh.messages, "the retained state")
    topic, state, retained = fresh.messages[0]
    last = event(29)
    assert retained and state == {k: last[k] for k in ("answer", "probability", "chunk_index", "time")}
    assert state["answer"] == "no"


def test_events_left_by_a_closed_sink_go_out_with_the_next(tmp_path, broker, closing):
    folder = tmp_path / "spool"
    first = MqttSink(f"mqtt://127.0.0.1:{broker.port}/{PREFIX}", folder, **FAST)  # no broker yet
    for i in range(3):
        first.send(event(i))
    first.close(timeout_s=5)
    assert first.stats()["pending"] == 3 and first.stats()["sent"] == 0
    assert len([p for p in folder.iterdir() if re.fullmatch(r"ev-\d{12}\.json", p.name)]) == 3
    broker.start()
    sub = Subscriber(broker.port, f"{PREFIX}/+/+")
    closing(sub.stop)
    second = MqttSink(f"mqtt://127.0.0.1:{broker.port}/{PREFIX}", folder, client_id="edge-test", **FAST)
    closing(second.close)
    second.send(event(3))
    wait_until(lambda: second.stats()["sent"] == 4, "the 3 left and a new one acknowledged")
    wait_until(lambda: len(sub.messages) >= 4, "4 received")
    assert [m["chunk_index"] for _, m, _ in sub.messages] == [0, 1, 2, 3]
    assert {topic for topic, _, _ in sub.messages} == {f"{PREFIX}/cam-7/door"}


def test_without_paho_the_error_says_what_to_install(tmp_path, monkeypatch):
    for name in ("paho", "paho.mqtt", "paho.mqtt.client"):
        monkeypatch.setitem(sys.modules, name, None)  # as if it were not installed
    with pytest.raises(UsageError, match=re.escape("pip install 'mirasol-edge[events]'")):
        MqttSink("mqtt://127.0.0.1:1883/site", tmp_path / "spool")
    assert not (tmp_path / "spool").exists()
