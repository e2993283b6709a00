"""Native-library load order, where two libraries define the same symbols.

GStreamer links libunwind (for its backtraces), and loading it through PyGObject puts
libunwind.so.8 in the process's global symbol scope. libunwind exports the C++ unwinder's
``_Unwind_*`` entry points too, so a C++ extension loaded afterwards (matplotlib's ft2font,
TensorRT-RTX's ONNX parser) binds ``_Unwind_Resume`` to libunwind's instead of libgcc's
(``LD_DEBUG=bindings`` shows it), and its first thrown exception aborts the interpreter:
"terminate called" from ``__gxx_personality_v0`` under ``__libunwind_Unwind_Resume``. With PyAV
or torch loaded first, libgcc_s is already mapped but only in their local scope, so it does
not win. Putting libgcc_s in the global scope before GStreamer loads fixes the binding at its
root: the symbol search finds libgcc's unwinder first, for every library loaded later.
"""

from __future__ import annotations

import ctypes
import os
import sys

_done = False


def gcc_unwinder_first() -> None:
    """Make libgcc_s's ``_Unwind_*`` the process's, before anything loads libunwind (once)."""
    global _done
    if _done or not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL("libgcc_s.so.1", mode=os.RTLD_GLOBAL)
    except OSError:  # musl or a static toolchain: no libgcc_s, and no clash to fix
        pass
    _done = True
