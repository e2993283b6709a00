"""What ``mirasol-run --view`` costs the stream: push p50 with a page open and updating against the
push with no page fed, side by side in one run, on the bundled tiny model (ONNX Runtime, CPU).

One stream, one view serving throughout, one page open in headless Chromium (Selenium; without
it, a thread reading the SSE stream and fetching each new frame, as a page does). Blocks of
pushes alternate: "off" pushes hand the view nothing (the page sits idle), "on" pushes hand it
each chunk and result the way mirasol-run does (the page updates: SSE, frame and mel fetches,
chart redraws), so a noisy machine slows both alike. Pushes come at most every ``--pace-ms``
(a live stream's pace, so the page has time to update between them); each push's own time
(``timings.total_ms``) is what is compared. Cost = (on p50 - off p50) / off p50.

    .venv/bin/python bench/view.py [--pushes 200] [--block 20] [--pace-ms 40] [--no-browser]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from mirasol_edge.assets import BUNDLED_CHECKPOINT
from mirasol_edge.demo.synthetic import make_long_clip
from mirasol_edge.measure.stats import stats
from mirasol_edge.runtime import machine
from mirasol_edge.runtime.decode.chunks import chunks
from mirasol_edge.runtime.engines import MirasolEngines
from mirasol_edge.toolkit.build import build
from mirasol_edge.toolkit.recipe import load_recipe
from mirasol_edge.view.server import View

OUT = Path(__file__).parent / "results" / "view.json"


def _browser_page(url: str):
    """A headless Chromium on the page, or None (no selenium or Debian's chromium here)."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        options = webdriver.ChromeOptions()
        options.binary_location = "/usr/bin/chromium"
        for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
            options.add_argument(arg)
        driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    except Exception:
        return None
    driver.set_page_load_timeout(30)
    driver.get(url)
    return driver


def _sse_page(url: str, stop: threading.Event) -> threading.Thread:
    """Without a browser: read the events and fetch each new frame, as the page does."""
    def run():
        with urllib.request.urlopen(url + "events", timeout=30) as events:
            seen = 0
            for line in events:
                if stop.is_set():
                    return
                if line.startswith(b"data: "):
                    version = json.loads(line[6:])["frame_version"]
                    if version != seen:
                        seen = version
                        urllib.request.urlopen(url + "frame.jpg", timeout=10).read()
                        urllib.request.urlopen(url + "mel.png", timeout=10).read()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def measure(engine_dir: Path, clip: Path, pushes: int, block: int, browser: bool, pace_ms: float) -> dict:
    engines = MirasolEngines(engine_dir)
    stream = engines.stream(name="bench")
    decoded = list(chunks(clip, engines.spec))
    view = View(stream, "127.0.0.1", 0).start()
    stop, page = threading.Event(), None
    try:
        page = _browser_page(view.url) if browser else None
        if page is None:
            _sse_page(view.url, stop)
        time.sleep(2)  # the page loaded and connected
        for chunk in decoded[:5]:  # warm-up
            view.push(chunk, stream.push(chunk))
        push_ms = {"off": [], "on": []}
        n = 0
        while n < 2 * pushes:
            mode = "on" if (n // block) % 2 else "off"
            chunk = decoded[n % len(decoded)]
            tick = time.perf_counter()
            result = stream.push(chunk)
            push_ms[mode].append(result.timings.total_ms)
            if mode == "on":
                view.push(chunk, result)
            n += 1
            time.sleep(max(0.0, pace_ms / 1e3 - (time.perf_counter() - tick)))  # a stream's pace, not flat out
        counters = view.state.snapshot()["counters"]
        frames = page.execute_script("return Number(document.getElementById('frame').dataset.version)") if page else None
    finally:
        stop.set()
        if page is not None:
            page.quit()
        view.close()
        stream.close()
    off, on = stats(push_ms["off"]), stats(push_ms["on"])
    return {"page": "headless chromium (selenium)" if page is not None else "SSE reader thread",
            "pushes_each": pushes, "block": block, "pace_ms": pace_ms, "push_ms_off": off, "push_ms_on": on,
            "cost": round((on["p50"] - off["p50"]) / off["p50"], 3), "view_counters": counters,
            "frames_shown_on_page": frames}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pushes", type=int, default=200, help="pushes with the page fed, and as many without")
    parser.add_argument("--block", type=int, default=20)
    parser.add_argument("--pace-ms", type=float, default=40.0,
                        help="one push at most every this many ms (a live stream's pace; 0: flat out)")
    parser.add_argument("--no-browser", action="store_true", help="an SSE reader thread instead of Chromium")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        engine_dir = Path(tmp) / "tiny-cpu"
        build(load_recipe("cpu"), engine_dir, checkpoint=BUNDLED_CHECKPOINT)
        clip, _ = make_long_clip(7, tmp, chunks=40)
        result = measure(engine_dir, clip, args.pushes, args.block, not args.no_browser, args.pace_ms)
    report = {"bench": "view", "model": "tiny (bundled)", "recipe": "cpu", "machine": machine.describe(), **result}
    OUT.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({k: report[k] for k in ("page", "push_ms_off", "push_ms_on", "cost")}, indent=1))


if __name__ == "__main__":
    main()
