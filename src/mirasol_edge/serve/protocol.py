"""What the client and the stream model say to each other: one home for the tensor names.

One Triton model (``mirasol``) holds every stream. A request carries an ``OP`` and the inputs
that op needs; the sequence batcher's correlation ID says which stream it is for, and its
START / END controls open and close that stream's state on the server.
"""

from __future__ import annotations

import hashlib

import numpy as np

STREAM_MODEL = "mirasol"
OPS = ("push", "ask", "snapshot", "restore", "close")

OP = "OP"  # STRING [1]: one of OPS
VIDEO = "VIDEO"  # the chunk encoder's video input, one chunk
MEL = "MEL"  # its log-mel input, where the model has audio
QUESTION = "QUESTION"  # STRING [1]
MAX_TOKENS = "MAX_TOKENS"  # INT32 [1]; 0 = the engines' limit
SNAPSHOT_IN = "SNAPSHOT_IN"  # STRING [1]: snapshot bytes, for restore
START, END = "START", "END"  # sequence controls, filled in by Triton's sequence batcher

OUTPUTS = "OUTPUTS"  # FP32 [m, d]: the AR step's outputs for the chunk
CHUNK_INDEX = "CHUNK_INDEX"  # INT64 [1]: which chunk of the stream that was
TIMINGS = "TIMINGS"  # FP64 [4]: upload, encode, AR, total ms on the server
ANSWER = "ANSWER"  # STRING [1]: the Answer as JSON
SNAPSHOT_OUT = "SNAPSHOT_OUT"  # STRING [1]: snapshot bytes

OUTPUTS_OF = {"push": (OUTPUTS, CHUNK_INDEX, TIMINGS), "ask": (ANSWER,), "snapshot": (SNAPSHOT_OUT,),
              "restore": (CHUNK_INDEX,), "close": (CHUNK_INDEX,)}

# How the stream model says a stream's state is gone (idle release, close, restart); the client
# turns it (and Triton's own "must specify the START flag") into StreamLost.
NOT_OPEN = "is not open on this server"
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


def strings(value: str | bytes) -> np.ndarray:
    """A STRING tensor of one item, batch 1."""
    return np.array([[value.encode() if isinstance(value, str) else value]], dtype=np.object_)
