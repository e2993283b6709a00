"""Serving many streams on Triton Inference Server: the model repository, the stateful stream
model that runs inside it, and ``RemoteStream``, the client with the stream API."""

from .access import AccessDenied
from .client import RemoteStream, ServerError, ServerFull, StreamLost

__all__ = ["AccessDenied", "RemoteStream", "ServerError", "ServerFull", "StreamLost"]
