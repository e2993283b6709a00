"""A real Mosquitto broker for the MQTT tests, a gate in front of it, and a subscriber."""

from __future__ import annotations

import json
import os
import selectors
import shutil
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest

from .helpers import wait_until


def mosquitto_binary() -> str | None:
    found = shutil.which("mosquitto")
    if found:
        return found
    return "/usr/sbin/mosquitto" if os.access("/usr/sbin/mosquitto", os.X_OK) else None


def require_mosquitto() -> str:
    binary = mosquitto_binary()
    if binary is None:
        if os.environ.get("MIRASOL_REQUIRE_MQTT"):
            pytest.fail("MIRASOL_REQUIRE_MQTT is set but mosquitto is not installed (apt-get install mosquitto)")
        pytest.skip("mosquitto is not installed (apt-get install mosquitto; `make test` does)")
    return binary


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


class Broker:
    """Mosquitto on 127.0.0.1:``port``, started and killed by the test."""

    def __init__(self, binary: str, folder: Path, port: int):
        self.binary, self.port = binary, port
        self.config = folder / "mosquitto.conf"
        self.log = folder / "mosquitto.log"
        lines = [f"listener {port} 127.0.0.1", "allow_anonymous true", "persistence false"]
        if os.geteuid() == 0:
            lines.append("user root")  # as root it would otherwise switch to the user 'mosquitto'
        self.config.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen | None = None

    def start(self) -> Broker:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([self.binary, "-c", str(self.config)], stdout=log, stderr=log)
        deadline = time.monotonic() + 10
        while not _accepts(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"mosquitto did not start on {self.port}:\n{self.log.read_text()}")
            time.sleep(0.05)
        return self

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None


class Gate:
    """A TCP relay to the broker; while shut, it refuses new connections.

    The sink connects through it, so after a broker restart the test can subscribe first and then
    let the sink back in: otherwise the sink could publish before the new subscription exists."""

    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.open = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        self.port = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                continue
            if not self.open.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=1)
            except OSError:
                client.close()
                continue
            thread = threading.Thread(target=self._pump, args=(client, upstream), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        with selectors.DefaultSelector() as sel:
            sel.register(a, selectors.EVENT_READ, b)
            sel.register(b, selectors.EVENT_READ, a)
            while not self._stop.is_set():
                for key, _ in sel.select(0.05):
                    try:
                        data = key.fileobj.recv(65536)
                        if data:
                            key.data.sendall(data)
                    except OSError:
                        data = b""
                    if not data:
                        a.close()
                        b.close()
                        return
        a.close()
        b.close()

    def stop(self) -> None:
        self._stop.set()
        self._listener.close()
        for thread in self._threads:
            thread.join(5)


class Subscriber:
    """A paho client subscribed to ``topic``; ``messages`` holds (topic, payload dict, retain)."""

    def __init__(self, port: int, topic: str, messages: list | None = None):
        import paho.mqtt.client as mqtt

        self.messages = [] if messages is None else messages
        self._subscribed = threading.Event()
        self.client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
                                  client_id=f"test-sub-{uuid.uuid4().hex[:8]}")
        self.client.on_message = lambda c, u, m: self.messages.append((m.topic, json.loads(m.payload), m.retain))
        self.client.on_subscribe = lambda *args: self._subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(topic, qos=1)
        self.client.loop_start()
        wait_until(self._subscribed.is_set, f"the subscription to {topic}")

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
