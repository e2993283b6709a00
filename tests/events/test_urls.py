"""Bad URLs and unwritable spool folders are usage errors that name the option."""

import pytest

from mirasol_edge.errors import UsageError
from mirasol_edge.events import MqttSink, WebhookSink, sink_from_url
from mirasol_edge.events.urls import check_slugs, parse_mqtt_url


@pytest.mark.parametrize("url", ["ftp://example.org/hook", "http://", "http:///hook", "localhost:8080/hook",
                                 "", "http://example.org:99999/hook", "http://example.org:port/hook"])
def test_a_bad_webhook_url_names_the_option(tmp_path, url):
    with pytest.raises(UsageError) as caught:
        WebhookSink(url, tmp_path / "spool")
    assert "--webhook" in str(caught.value) and repr(url) in str(caught.value)
    assert caught.value.exit_code == 2
    assert not (tmp_path / "spool").exists()  # refused before anything was made


@pytest.mark.parametrize("url, why", [
    ("http://broker:1883/site", "mqtt://"), ("mqtt:///site", "no host"), ("mqtt://broker:abc/site", "port"),
    ("mqtt://broker:0/site", "port"), ("mqtt://broker:1883", "prefix"), ("mqtt://broker:1883/", "prefix"),
    ("mqtt://broker/a/+/b", "wildcards"), ("mqtt://broker/a/#", "wildcards"), ("mqtt://broker/a//b", "empty level"),
    ("mqtts://broker:8883/site", "not supported"), ("mqtt://broker/site?x=1", "query"),
])
def test_a_bad_mqtt_url_names_the_option(tmp_path, url, why):
    with pytest.raises(UsageError) as caught:
        MqttSink(url, tmp_path / "spool")
    message = str(caught.value)
    assert "--mqtt" in message and repr(url) in message and why in message, message
    assert not (tmp_path / "spool").exists()


def test_good_mqtt_urls_parse():
    target = parse_mqtt_url("mqtt://broker.local/site-a")
    assert (target.host, target.port, target.prefix, target.username) == ("broker.local", 1883, "site-a", None)
    target = parse_mqtt_url("mqtt://edge:s%40cret@10.0.0.2:1884/a/b/")
    assert (target.host, target.port, target.prefix) == ("10.0.0.2", 1884, "a/b")
    assert (target.username, target.password) == ("edge", "s@cret")
    assert target.event_topic("cam-7", "door") == "a/b/cam-7/door"
    assert target.state_topic("cam-7", "door") == "a/b/cam-7/door/state"


def test_sink_from_url_picks_by_scheme(tmp_path):
    sink = sink_from_url("http://127.0.0.1:9/hook", tmp_path / "w")
    try:
        assert isinstance(sink, WebhookSink)
    finally:
        sink.close(timeout_s=5)
    with pytest.raises(UsageError, match="mqtts://"):
        sink_from_url("mqtts://broker/site", tmp_path / "m")
    with pytest.raises(UsageError, match="--webhook.*--mqtt"):
        sink_from_url("ftp://example.org/x", tmp_path / "f")


def test_an_unwritable_spool_folder_names_it(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    with pytest.raises(UsageError, match=r"--spool .*not-a-folder/events.*not writable"):
        WebhookSink("http://127.0.0.1:9/hook", blocker / "events")
    with pytest.raises(UsageError, match=r"--spool .*not-a-folder/events.*not writable"):
        MqttSink("mqtt://127.0.0.1:9/site", blocker / "events")


def test_an_event_without_slugs_is_refused():
    assert check_slugs({"stream": "cam-7", "watch": "door.v2"}) == ("cam-7", "door.v2")
    with pytest.raises(UsageError, match="'watch'"):
        check_slugs({"stream": "cam-7", "watch": "a/b"})
