"""The project's errors: each says what is wrong in its message and carries its exit code.

One table for every command (mirasol-build, mirasol-run, mirasol-bench, mirasol-eval):

  2  usage, a recipe, engines or a backend that can't serve here, a missing library
  3  an input that can't be read: a checkpoint, media that doesn't decode
  4  export, or a graph that disagrees with PyTorch
  5  an engine build
  6  the output directory
  7  calibration or quantization
  8  a snapshot
  9  a Triton server: unreachable, refusing, or no longer holding a stream
  10 a Triton server that is full: its maximum of open streams is reached (``ServerFull``)
  11 access denied: a token or stream key that does not allow the request (``AccessDenied``)

Anything else is a bug: the commands let it show its traceback.
"""

from __future__ import annotations


class MirasolError(Exception):
    exit_code = 1


class UsageError(MirasolError, ValueError):
    """Bad arguments or settings; the message names the one at fault."""

    exit_code = 2
