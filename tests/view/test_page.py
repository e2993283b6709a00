"""mirasol-run --view in a real headless Chromium: the frame changes, the latency chart gains
points, a question typed into the page is answered while the stream goes on, a watch event
shows a playable evidence clip, a second page works at once, and the summary stays up after the
last chunk. Then the token rule, over plain HTTP."""

import os
import re
import shutil
from pathlib import Path

import pytest

from mirasol_edge.demo.synthetic import COLOURS, make_long_clip
from tests.events.helpers import free_port
from tests.view.helpers import http, require_browser, wait_for

QUESTION = "what colour is the square?"
DOCS_SHOT = Path(__file__).resolve().parents[2] / "docs" / "view.png"


@pytest.fixture
def browser():
    driver = require_browser()
    yield driver
    driver.quit()


@pytest.fixture
def long_clip(tmp_path):
    return make_long_clip(7, tmp_path, chunks=20)[0]


def _frame(browser):
    """The frame image's version once it has loaded (naturalWidth > 0)."""
    return browser.execute_script(
        "const f = document.getElementById('frame');"
        "return f.complete && f.naturalWidth > 0 ? Number(f.dataset.version) : 0;")


def _points(browser) -> int:
    return int(browser.find_element("id", "chart").get_attribute("data-points") or 0)


def test_the_page_follows_the_stream_answers_and_plays_evidence(bundled_engines, long_clip, browser, run_view,
                                                                tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    run = run_view([str(long_clip), "--sample", "-e", str(bundled_engines), "--view", f"127.0.0.1:{port}",
                    "--view-linger", "60", "--watch", QUESTION, "--watch-answers", "open",
                    "--evidence", str(tmp_path / "evidence"), "--evidence-seconds", "2"], pace_s=0.4)
    run.wait_serving(url)
    browser.get(url)
    first = wait_for(lambda: _frame(browser), "the first frame on the page")
    points = wait_for(lambda: _points(browser), "the chart's first point")
    wait_for(lambda: _frame(browser) > first, "a newer frame")
    wait_for(lambda: _points(browser) > points, "the chart gaining points")
    assert browser.execute_script("const m = document.getElementById('mel'); return m.naturalWidth;") > 0

    browser.find_element("id", "question").send_keys(QUESTION)
    browser.find_element("id", "ask-button").click()
    answer = wait_for(lambda: browser.find_element("id", "ask-result").get_attribute("data-answer"),
                      "the page's question answered")
    assert answer in COLOURS, answer  # the bundled model names a colour
    wait_for(lambda: any(li.text.startswith(QUESTION) and "asked from the page" in li.text
                         for li in browser.find_elements("css selector", "#answers li")), "the answer in the list")

    wait_for(lambda: browser.find_elements("css selector", "#events li.event video"), "a watch event with evidence")
    duration = wait_for(lambda: browser.execute_script(
        "const v = document.querySelector('#events li.event video'); return v.readyState >= 1 ? v.duration : 0;"),
        "the evidence clip's metadata")
    assert 0 < duration < 10, duration  # a real clip: about the two seconds before, and the chunk
    watch = browser.find_element("css selector", "#watches .watch")
    assert QUESTION in watch.text

    main = browser.current_window_handle
    browser.switch_to.new_window("tab")  # a second page at once, on its own event stream
    browser.get(url)
    second = wait_for(lambda: _frame(browser), "a frame on the second page")
    assert wait_for(lambda: _points(browser), "the second page's chart") > 0
    browser.switch_to.window(main)
    wait_for(lambda: _frame(browser) > second or not browser.find_element("id", "summary-section").get_attribute(
        "hidden"), "the first page still following")

    # a file: after the last chunk the page stays up, showing the summary
    summary = wait_for(lambda: browser.find_element("id", "summary").text, "the summary after the last chunk", 60)
    assert '"chunks": 20' in summary, summary
    facts = browser.find_element("id", "facts").text
    assert "onnxruntime" in facts and "chunks_seen 20" in facts and "dropped 0" in facts, facts
    assert "precision fp32" in facts and "decoder pyav" in facts, facts
    assert re.search(r"realtime_factor \d+(\.\d+)?", facts), facts
    assert run.process.poll() is None, run.output()  # still up: lingering
    browser.save_screenshot(str(tmp_path / "view.png"))
    assert (tmp_path / "view.png").stat().st_size > 10_000
    if os.environ.get("MIRASOL_UPDATE_DOCS") == "1":  # the README's screenshot
        DOCS_SHOT.parent.mkdir(exist_ok=True)
        shutil.copy(tmp_path / "view.png", DOCS_SHOT)
    assert run.stop() == 0, run.output()  # Ctrl-C while lingering: a clean exit


def test_a_page_on_another_address_needs_its_token(bundled_engines, run_view):
    port = free_port()
    run = run_view(["--sample", "-e", str(bundled_engines), "--view", f"0.0.0.0:{port}", "--view-token", "s3cret",
                    "--view-linger", "60"])
    base = f"http://127.0.0.1:{port}"
    run.wait_serving(base + "/")
    for path in ("/", "/state", "/frame.jpg", "/events", "/evidence/0"):
        assert http(base + path)[0] == 403, path
        assert http(base + path + "?token=wrong")[0] == 403, path
    assert http(base + "/?token=s3cret")[0] == 200
    status, body = http(base + "/state", {"X-Mirasol-Token": "s3cret"})
    assert status == 200 and b'"facts"' in body
    assert http(base + "/state", {"Authorization": "Bearer s3cret"})[0] == 200


def test_a_loopback_page_checks_a_token_when_given(bundled_engines, run_view):
    port = free_port()
    run = run_view(["--sample", "-e", str(bundled_engines), "--view", str(port), "--view-token", "t",
                    "--view-linger", "60"])
    run.wait_serving(f"http://127.0.0.1:{port}/")
    assert http(f"http://127.0.0.1:{port}/state")[0] == 403
    assert http(f"http://127.0.0.1:{port}/state?token=t")[0] == 200


def test_a_port_in_use_is_a_usage_error_before_any_push(bundled_engines):
    import socket

    from click.testing import CliRunner

    from mirasol_edge.cli.run import main as run_main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(run_main, ["--sample", "-e", str(bundled_engines), "--json",
                                               "--view", f"127.0.0.1:{port}"])
    assert result.exit_code == 2, result.output
    assert "cannot serve there" in result.output and '"event": "chunk"' not in result.output
