"""mirasol-run --view as a subprocess, and a headless Chromium driven by Selenium (Debian's
chromium and chromium-driver; skipped when missing unless MIRASOL_REQUIRE_BROWSER=1)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
DRIVER = ("/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver")


def _first(paths) -> str | None:
    return next((p for p in paths if Path(p).is_file()), None) or shutil.which(Path(paths[0]).name)


def require_browser():
    """A headless Chromium WebDriver, or a skip (a failure under MIRASOL_REQUIRE_BROWSER=1)."""
    binary, driver = _first(CHROMIUM), _first(DRIVER)
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError as exc:
        binary = None
        why = f"selenium is not installed ({exc})"
    else:
        why = "needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)"
    if binary is None or driver is None:
        if os.environ.get("MIRASOL_REQUIRE_BROWSER") == "1":
            pytest.fail(why + " (MIRASOL_REQUIRE_BROWSER=1)")
        pytest.skip(why)
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1300", "--autoplay-policy=no-user-gesture-required"):
        options.add_argument(arg)
    browser = webdriver.Chrome(service=Service(driver), options=options)
    browser.set_page_load_timeout(30)
    browser.set_script_timeout(30)
    return browser


def wait_for(condition, what: str, timeout_s: float = 30.0, every: float = 0.1):
    """``condition()``'s first truthy value, or an AssertionError naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            value = condition()
        except Exception:  # an element not there yet, a page still loading
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(every)


def http(url: str, headers: dict | None = None, timeout: float = 10.0) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


CHILD = ("import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
         "from mirasol_edge.cli.run import main; sys.argv[0] = 'mirasol-run'; main()")


class Run:
    """``mirasol-run ARGS`` in its own process; ``stop()`` sends Ctrl-C (SIGINT), then kills if it must."""

    def __init__(self, args: list[str], log: Path, pace_s: float = 0.0) -> None:
        env = {**os.environ, "MIRASOL_VIEW_PACE_S": str(pace_s)}
        self.log = log
        self._out = open(log, "wb")
        # Ctrl-C is what stops it; a test run started in the background (nohup, `&`) passes SIGINT
        # down ignored, and Python then never raises KeyboardInterrupt: handle it again, as a terminal would.
        self.process = subprocess.Popen([sys.executable, "-c", CHILD, *args], stdout=self._out,
                                        stderr=subprocess.STDOUT, env=env)

    def wait_serving(self, url: str, timeout_s: float = 60.0) -> None:
        def up():
            if self.process.poll() is not None:
                raise AssertionError(f"mirasol-run exited {self.process.returncode}:\n{self.output()}")
            try:
                return http(url, timeout=2)[0] in (200, 403)
            except OSError:
                return False
        deadline = time.monotonic() + timeout_s
        while not up():
            if time.monotonic() > deadline:
                raise AssertionError(f"mirasol-run did not serve {url} in {timeout_s} s:\n{self.output()}")
            time.sleep(0.1)

    def output(self) -> str:
        if not self._out.closed:
            self._out.flush()
        return self.log.read_text(errors="replace")

    def stop(self, timeout_s: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout_s)
        self._out.close()
        return self.process.returncode
