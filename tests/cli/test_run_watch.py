"""mirasol-run --watch end to end: event lines, and the same events delivered to a real local
webhook receiver and a real Mosquitto broker, with evidence MP4s that decode back to the chunks."""

import json

import av
import pytest
from click.testing import CliRunner

from mirasol_edge.cli.run import main as run_main
from tests.events.broker import Broker, Subscriber, require_mosquitto
from tests.events.helpers import Receiver, free_port, wait_until

QUESTION = "what colour is the square?"


def _events(output: str) -> list[dict]:
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    return [line for line in lines if line["event"] == "event"]


def test_watch_events_reach_the_terminal_a_webhook_and_mqtt_with_evidence(tiny_engines, tmp_path):
    broker = Broker(require_mosquitto(), tmp_path, free_port()).start()
    receiver = Receiver().start()
    subscriber = Subscriber(broker.port, "site/#")
    try:
        result = CliRunner().invoke(run_main, [
            "--sample", "-e", str(tiny_engines), "--stream-id", "cam-7", "--json",
            "--watch", QUESTION, "--watch-answers", "open", "--watch", "is the square red?",
            "--evidence", str(tmp_path / "evidence"), "--evidence-seconds", "2",
            "--webhook", receiver.url, "--mqtt", f"mqtt://127.0.0.1:{broker.port}/site", "--spool", str(tmp_path / "spool")])
        assert result.exit_code == 0, result.output
        events = _events(result.output)
        assert events, result.output  # the lively model's open answer changes: events to deliver
        summary = json.loads(result.output.splitlines()[-1])
        assert sum(summary["events"].values()) == len(events)
        wait_until(lambda: len(receiver.delivered) == len(events), "every event at the webhook")
        assert [(e["watch"], e["chunk_index"], e["answer"]) for e in receiver.delivered] == [
            (e["watch"], e["chunk_index"], e["answer"]) for e in events]
        published = lambda: [m for m in subscriber.messages if not m[0].endswith("/state")]  # noqa: E731
        wait_until(lambda: len(published()) == len(events), "every event at the broker")
        assert [m[0] for m in published()] == [f"site/cam-7/{e['watch']}" for e in events]
        first = events[0]
        assert first["stream"] == "cam-7" and first["evidence"]
        with av.open(first["evidence"]) as clip:
            frames = sum(1 for _ in clip.decode(video=0))
        fired = first["chunk_index"]
        assert frames == (min(fired, 2) + 1) * 4  # two seconds before (as far as there were) and the chunk: 4 frames each
    finally:
        subscriber.stop()
        receiver.stop()
        broker.kill()


@pytest.mark.parametrize("args, message", [
    (["--watch-answers", "yes,no"], "--watch-answers goes with --watch"),
    (["--watch", "is it?", "--watch-answers", "yes"], "two or more answers"),
    (["--watch", "is it?", "--watch-answers", "a,b", "--watch-answers", "c,d"], "one per --watch"),
    (["--webhook", "http://127.0.0.1:9/hook"], "go with --watch"),
    (["--watch", "is it?", "--webhook", "ftp://example.com/x"], "--webhook"),
    (["--watch", "is it?", "--mqtt", "mqtt://127.0.0.1:1883/"], "--mqtt"),
    (["--watch", "is it?", "--mqtt", "mqtt://127.0.0.1:99999/site"], "--mqtt"),
    (["--watch", ""], "--watch question"),
])
def test_bad_watch_options_name_the_option(tiny_engines, tmp_path, args, message):
    result = CliRunner().invoke(run_main, ["--sample", "-e", str(tiny_engines), "--spool", str(tmp_path / "s"), *args])
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_an_evidence_folder_that_cannot_be_written_is_refused_before_streaming(tiny_engines, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = CliRunner().invoke(run_main, ["--sample", "-e", str(tiny_engines), "--watch", "is it?",
                                           "--evidence", str(blocker / "evidence")])
    assert result.exit_code == 2, result.output
    assert "--evidence" in result.output and "chunk" not in result.output.split("--evidence")[0]
