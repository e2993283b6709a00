"""Serving many streams on Triton Inference Server: the model repository, the stateful stream
model that runs inside it, and ``RemoteStream``, the client with the stream API."""

from .client import RemoteStream, ServerError, StreamLost

__all__ = ["RemoteStream", "ServerError", "StreamLost"]
