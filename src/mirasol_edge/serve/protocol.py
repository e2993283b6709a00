"""What the client and the stream model say to each other: one home for the tensor names.

One Triton model (``mirasol``) holds every stream. A request carries an ``OP`` and the inputs
that op needs; the sequence batcher's correlation ID says which stream it is for, and its
START / END controls open and close that stream's state on the server.
"""

from __future__ import annotations

import hashlib

import numpy as np

STREAM_MODEL = "mirasol"
OPS = ("push", "ask", "snapshot", "restore", "close", "watch", "unwatch")

OP = "OP"  # STRING [1]: one of OPS
VIDEO = "VIDEO"  # the chunk encoder's video input, one chunk
MEL = "MEL"  # its log-mel input, where the model has audio
QUESTION = "QUESTION"  # STRING [1]
MAX_TOKENS = "MAX_TOKENS"  # INT32 [1]; 0 = the engines' limit
SNAPSHOT_IN = "SNAPSHOT_IN"  # STRING [1]: snapshot bytes, for restore
START, END = "START", "END"  # sequence controls, filled in by Triton's sequence batcher
STREAM_ID = "STREAM_ID"  # STRING [1]: the stream's name; its hash must be the correlation ID
TOKEN = "TOKEN"  # STRING [1]: the client's access token (servers built with an access file)
STREAM_KEY = "STREAM_KEY"  # STRING [1]: the key the server minted when the stream opened
TAKEOVER = "TAKEOVER"  # BOOL [1]: START replaces a stream another client holds (if this one may open it)
WATCH = "WATCH"  # STRING [1]: watch: the watch's settings as JSON (runtime.watch.Watch.to_dict); unwatch: its name

OUTPUTS = "OUTPUTS"  # FP32 [m, d]: the AR step's outputs for the chunk
CHUNK_INDEX = "CHUNK_INDEX"  # INT64 [1]: which chunk of the stream that was
TIMINGS = "TIMINGS"  # FP64 [4]: upload, encode, AR, total ms on the server
ANSWER = "ANSWER"  # STRING [1]: the Answer as JSON
SNAPSHOT_OUT = "SNAPSHOT_OUT"  # STRING [1]: snapshot bytes
STREAM_KEY_OUT = "STREAM_KEY_OUT"  # STRING [1]: the stream's key, in every answer to its holder
EVENTS = "EVENTS"  # STRING [1]: push: the watch events it fired, a JSON list (WatchEvent.to_dict)
WATCHES = "WATCHES"  # STRING [1]: watch, unwatch: the stream's watches now, a JSON list (Watch.to_dict)

OUTPUTS_OF = {"push": (OUTPUTS, CHUNK_INDEX, TIMINGS, EVENTS, STREAM_KEY_OUT), "ask": (ANSWER, STREAM_KEY_OUT),
              "snapshot": (SNAPSHOT_OUT, STREAM_KEY_OUT), "restore": (CHUNK_INDEX, STREAM_KEY_OUT),
              "close": (CHUNK_INDEX, STREAM_KEY_OUT), "watch": (WATCHES, STREAM_KEY_OUT),
              "unwatch": (WATCHES, STREAM_KEY_OUT)}
MAX_WATCH_BYTES = 16384  # one watch's settings as JSON

# How the stream model says a stream's state is gone (idle release, close, restart); the client
# turns it (and Triton's own "must specify the START flag") into StreamLost.
NOT_OPEN = "is not open on this server"
# How it refuses a new stream when it holds its maximum (``max_streams``); the client raises ServerFull.
FULL = "server is full"
# How it refuses a request its client may not make (the client raises AccessDenied).
DENIED = "access denied"
MODEL_CONFIG = "model_config"  # the stream model's parameter: the Mirasol config, as JSON

# Routers pin a stream to a server by this gRPC header (its value is the stream ID).
STREAM_HEADER = "mirasol-stream"


def sequence_id(stream_id: str | int) -> int:
    """Triton's correlation ID for a stream: the integer itself, or a stable 63-bit hash of a
    name (string correlation IDs fail with batching in Triton 2.51)."""
    if isinstance(stream_id, int):
        if not 0 < stream_id < 2**63:
            raise ValueError(f"stream id {stream_id} is out of range (1 .. 2**63-1)")
        return stream_id
    digest = hashlib.sha256(str(stream_id).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1 or 1


def stream_name(stream_id: str | int) -> str:
    """What a request sends as ``STREAM_ID``: the name, or ``#N`` for an integer ID."""
    return f"#{stream_id}" if isinstance(stream_id, int) else str(stream_id)


def strings(value: str | bytes) -> np.ndarray:
    """A STRING tensor of one item, batch 1."""
    return np.array([[value.encode() if isinstance(value, str) else value]], dtype=np.object_)
