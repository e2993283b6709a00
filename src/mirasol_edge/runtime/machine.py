"""Describe the machine a number was measured on: CPU model, cores, GPU, library versions."""

from __future__ import annotations

import os
import platform
import socket
from importlib import metadata
from pathlib import Path


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def describe() -> dict:
    info = {
        "host": socket.gethostname(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {
            name: v
            for name in ("mirasol-edge", "torch", "onnx", "onnxruntime", "onnxruntime-gpu",
                         "tensorrt", "tensorrt-rtx-cu13", "nvidia-dali-cuda130", "av", "numpy")
            if (v := package_version(name))
        },
        "gpu": None,
    }
    try:
        import torch

        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            info["gpu"] = {"name": props.name, "compute_capability": f"{props.major}.{props.minor}",
                           "memory_gib": round(props.total_memory / 2**30, 1)}
    except ImportError:
        pass
    return info


def _status_mib(field: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def rss_mib() -> float | None:
    """This process's resident memory now (Linux; None elsewhere)."""
    return _status_mib("VmRSS")


def peak_rss_mib() -> float | None:
    """This process's own high-water mark (VmHWM: ru_maxrss would carry a parent's across exec)."""
    return _status_mib("VmHWM")


def reset_peak_rss() -> bool:
    """Start a new high-water mark (Linux: ``echo 5 > /proc/self/clear_refs``), so a step's peak
    is its own; False where that isn't possible (the peak then spans the process)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False
