"""What embedding code may rely on, whether the stream runs here (``MirasolStream``) or on a
Triton server (``serve.RemoteStream``): the same calls, the same results."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol, runtime_checkable

from .decode.types import ChunkSpec
from .results import Answer, ChunkResult
from .watch import Watch, WatchEvent


@runtime_checkable
class Stream(Protocol):
    chunks_seen: int  # pushes so far: the next push's ChunkResult.index

    @property
    def spec(self) -> ChunkSpec:
        """How to cut chunks for this stream's engines: ``chunks(source, stream.spec)``."""

    def push(self, chunk=None, *, frames=None, mel=None) -> ChunkResult: ...

    def ask(self, question: str, max_new_tokens: int | None = None,
            on_token: Callable[[str], None] | None = None) -> Answer: ...

    def snapshot(self, path: str | Path) -> Path: ...

    def load_snapshot(self, path: str | Path) -> None: ...

    def close(self) -> None: ...

    def watch(self, question: str, answers=None, **settings) -> Watch:
        """A standing question; its events come back in each push's ``ChunkResult.events``."""

    def unwatch(self, watch: Watch | str) -> None: ...

    @property
    def watches(self) -> tuple[Watch, ...]: ...

    def on_event(self, listener: Callable[[WatchEvent], None]) -> None: ...
