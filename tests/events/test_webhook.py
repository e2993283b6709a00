"""WebhookSink against a real HTTP server on 127.0.0.1: order, outages, restarts, refusals."""

import re
import threading

import pytest

from mirasol_edge.events import WebhookSink

from .helpers import Receiver, event, free_port, wait_until

FAST = {"min_backoff_s": 0.05, "max_backoff_s": 0.2, "timeout_s": 5.0}


@pytest.fixture
def closing():
    """Things to stop after the test, last made first stopped; then no sender thread is left."""
    stack = []
    yield stack.append
    for close in reversed(stack):
        close()
    assert not [t.name for t in threading.enumerate() if t.name == "webhook-sink"]


def spooled(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if re.fullmatch(r"ev-\d{12}\.json", p.name))


def test_thirty_events_through_an_outage_arrive_once_in_order(tmp_path, closing):
    rx = Receiver().start()
    closing(rx.stop)
    sink = WebhookSink(rx.url, tmp_path / "spool", **FAST)
    closing(sink.close)
    for i in range(10):
        sink.send(event(i))
    wait_until(lambda: sink.stats()["sent"] == 10, "the first 10 delivered")
    rx.stop()
    for i in range(10, 20):
        sink.send(event(i))  # returns while the receiver is down
    assert rx.chunks() == list(range(10))  # nothing of these was delivered yet
    wait_until(lambda: sink.stats()["retries"] >= 2, "retries while the receiver is down")
    assert sink.stats()["pending"] == 10 and sink.stats()["sent"] == 10
    rx.start()  # the same port again
    for i in range(20, 30):
        sink.send(event(i))
    wait_until(lambda: sink.stats()["sent"] == 30, "all 30 delivered")
    assert rx.chunks() == list(range(30))  # exactly once, in order (none was in flight at the stop)
    assert [e for e, _ in rx.attempts] == [event(i) for i in range(30)]
    assert {ctype for _, ctype in rx.attempts} == {"application/json"}
    stats = sink.stats()
    assert (stats["pending"], stats["rejected"], stats["dropped"]) == (0, 0, 0)
    assert spooled(tmp_path / "spool") == []


def test_send_returns_while_a_post_hangs(tmp_path, closing):
    rx = Receiver()
    rx.hold = threading.Event()
    rx.start()
    closing(rx.stop)
    sink = WebhookSink(rx.url, tmp_path / "spool", **FAST)
    closing(sink.close)
    sink.send(event(0))
    wait_until(rx.in_request.is_set, "the first POST to reach the receiver")
    for i in range(1, 5):
        sink.send(event(i))  # the sender thread is stuck in the POST; these return anyway
    assert rx.chunks() == [] and sink.stats()["pending"] == 5
    rx.hold.set()
    wait_until(lambda: sink.stats()["sent"] == 5, "the 5 delivered once the receiver answers")
    assert rx.chunks() == [0, 1, 2, 3, 4]


def test_a_new_sink_on_the_spool_delivers_what_the_last_one_left(tmp_path, closing):
    port = free_port()  # nothing listens yet
    folder = tmp_path / "spool"
    first = WebhookSink(f"http://127.0.0.1:{port}/hook", folder, **FAST)
    for i in range(5):
        first.send(event(i))
    wait_until(lambda: first.stats()["retries"] >= 1, "a failed attempt")
    first.close(timeout_s=5)
    assert first.stats()["pending"] == 5 and len(spooled(folder)) == 5
    with pytest.raises(RuntimeError, match="closed"):
        first.send(event(99))
    second = WebhookSink(f"http://127.0.0.1:{port}/hook", folder, **FAST)  # as after a process restart
    closing(second.close)
    assert second.stats()["pending"] == 5  # found what the first left (nothing listens yet: none delivered)
    rx = Receiver(port).start()
    closing(rx.stop)
    second.send(event(5))
    wait_until(lambda: second.stats()["sent"] == 6, "the 5 left and a new one delivered")
    assert rx.chunks() == [0, 1, 2, 3, 4, 5]
    assert spooled(folder) == []


@pytest.mark.parametrize("status", [400, 404, 302])  # a redirect is not followed: the POST would become a GET
def test_a_refused_event_is_dropped_and_counted_the_rest_go_on(tmp_path, closing, status):
    rx = Receiver()
    rx.respond = lambda e: status if e["chunk_index"] == 1 else 200
    rx.start()
    closing(rx.stop)
    sink = WebhookSink(rx.url, tmp_path / "spool", **FAST)
    closing(sink.close)
    for i in range(3):
        sink.send(event(i))
    wait_until(lambda: sink.stats()["sent"] + sink.stats()["rejected"] == 3, "all 3 answered")
    assert sink.stats()["rejected"] == 1 and sink.stats()["sent"] == 2 and sink.stats()["retries"] == 0
    assert rx.attempted() == [0, 1, 2]  # the refused one was tried once, never again
    assert rx.chunks() == [0, 2]


def test_server_errors_retry_the_head_and_nothing_overtakes_it(tmp_path, closing):
    answers = iter([503, 500, 429])
    rx = Receiver()
    rx.respond = lambda e: next(answers, 200) if e["chunk_index"] == 0 else 200
    rx.start()
    closing(rx.stop)
    sink = WebhookSink(rx.url, tmp_path / "spool", **FAST)
    closing(sink.close)
    for i in range(3):
        sink.send(event(i))
    wait_until(lambda: sink.stats()["sent"] == 3, "all 3 delivered")
    assert rx.attempted() == [0, 0, 0, 0, 1, 2]
    assert rx.chunks() == [0, 1, 2]
    assert sink.stats()["retries"] == 3 and sink.stats()["rejected"] == 0
