"""The one small interface every backend implements (in the manner of Polygraphy's runners).

A backend runs a component by name on named inputs and returns named outputs. Inputs and
outputs are the backend's own device arrays (an ``OrtValue``, a ``torch.Tensor``, a
TensorRT device buffer), so the stream state passes from one step to the next without
a trip through the host. Only ``upload`` and ``download`` cross the host boundary.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from mirasol_edge.errors import MirasolError

DeviceArray = Any
# The one list of backend names: what a build makes engines for, and what may run them.
TENSORRT = ("tensorrt", "tensorrt-rtx")  # one code path for both (runtime.trt)
ENGINE_BACKENDS = ("onnxruntime", *TENSORRT)
NAMES = ("auto", *ENGINE_BACKENDS, "torch")  # "torch": the toolkit's PyTorch reference


class BackendError(MirasolError, RuntimeError):
    """A backend cannot open or run these engines here; the message says what it expected and found."""

    exit_code = 2


class Runner(ABC):
    """One component, ready to run. Stateful components get one runner per stream.

    ``run`` checks the feeds for every backend, as Polygraphy's base runner does; a backend
    implements ``_run`` and sets ``name`` and ``input_names``.
    """

    name: str
    input_names: list[str]

    def run(self, feeds: dict[str, DeviceArray]) -> dict[str, DeviceArray]:
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise BackendError(f"{self.name}: input {missing[0]!r} not given ({len(missing)} missing; "
                               f"it takes {', '.join(self.input_names)})")
        return self._run(feeds)

    @abstractmethod
    def _run(self, feeds: dict[str, DeviceArray]) -> dict[str, DeviceArray]: ...

    def close(self) -> None:  # noqa: B027 - a runner that holds nothing has nothing to release
        """Release what this runner holds on the device."""


class OpenRunners:
    """The runners a backend handed out and has not seen closed: as many as the streams open now,
    not every stream ever opened. A runner's ``close`` removes it; the backend's closes the rest."""

    def __init__(self) -> None:
        self._runners: dict[int, Runner] = {}
        self._lock = threading.Lock()  # streams open and close on any thread

    def add(self, runner: Runner) -> Runner:
        with self._lock:
            self._runners[id(runner)] = runner
        return runner

    def discard(self, runner: Runner) -> None:
        with self._lock:
            self._runners.pop(id(runner), None)

    def __iter__(self):
        with self._lock:
            return iter(list(self._runners.values()))

    def __len__(self) -> int:
        return len(self._runners)

    def close_all(self) -> None:
        for runner in self:
            runner.close()


class Backend(ABC):
    name: str
    device: str
    # Whether ``upload_device`` takes frames decoded on the GPU (``DeviceFrames``) device to device;
    # a backend without it is given them through the host (``numpy.asarray``).
    takes_device_frames: bool = False

    def lane(self) -> object | None:
        """An ordered queue of device work for one path of one stream (its pushes, or its
        questions): a CUDA stream on TensorRT, nothing where the backend orders work itself."""
        return None

    @abstractmethod
    def runner(self, component: str, lane: object | None = None) -> Runner:
        """A runner for the component, working on ``lane``; the backend decides what runners share."""

    @abstractmethod
    def upload(self, array: np.ndarray, into: DeviceArray | None = None, lane: object | None = None) -> DeviceArray:
        """Host -> device; ``into`` is a previous upload the backend may reuse (fixed addresses);
        with a ``lane`` the copy is ordered before that lane's later work."""

    @abstractmethod
    def download(self, value: DeviceArray) -> np.ndarray: ...

    def upload_device(self, frames, into: DeviceArray | None = None, lane: object | None = None) -> DeviceArray:
        """``DeviceFrames`` device to device into an input, as batch 1 (``takes_device_frames``)."""
        raise BackendError(f"backend {self.name!r} takes no frames on the GPU; give them through the host")

    def stack(self, values: list[DeviceArray], batch: int, key: str = "", lane: object | None = None) -> DeviceArray:
        """Batch-1 arrays -> one array of ``batch`` rows (zero rows pad the rest); ``key`` names
        the tensor, so a backend can keep one persistent buffer per tensor."""
        host = [self.download(v) for v in values]
        pad = [np.zeros_like(host[0])] * (batch - len(host))
        return self.upload(np.concatenate(host + pad))

    def unstack(self, value: DeviceArray, count: int, into: list | None = None,
                lane: object | None = None) -> list[DeviceArray]:
        """Rows -> batch-1 arrays; ``into`` are buffers the backend may overwrite (the streams' old state)."""
        host = self.download(value)
        return [self.upload(np.ascontiguousarray(host[i : i + 1])) for i in range(count)]

    def mark(self, lane: object | None = None) -> object:
        """A point in ``lane``'s work, for timing stages without waiting on the device between them."""
        return time.perf_counter()  # synchronous backends: the host clock is the work's clock

    def elapsed_ms(self, start: object, end: object) -> float:
        """Milliseconds between two marks, once the work after ``end`` was waited for."""
        return (end - start) * 1e3

    def describe(self) -> dict:
        return {"backend": self.name, "device": self.device}

    def close(self) -> None:  # noqa: B027 - a backend that holds nothing has nothing to release
        """Release device memory; the backend is unusable afterwards."""
