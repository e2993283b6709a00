"""What the package tests need to look at the wheel from another machine's side: building it,
and its requirements as pip would see them on a target (a Jetson, Debian arm64).

``pip download --python-version`` and ``pip install --target --python-version`` choose wheels for
the target but evaluate environment markers for the interpreter running pip (here 3.11), so a
requirement such as ``tomli; python_version < '3.11'`` would be dropped for JetPack 6's 3.10.
The wheel's own requirements are therefore evaluated here for the target and passed explicitly.
(Markers inside the dependencies' own metadata are still pip's to evaluate.)
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
AARCH64 = ("--only-binary=:all:", "--platform", "manylinux_2_28_aarch64", "--platform", "manylinux2014_aarch64",
           "--implementation", "cp")


def target_env(python: str) -> dict[str, str]:
    """The marker environment of CPython ``python`` (``"3.10"``) on aarch64 Linux."""
    return {"python_version": python, "python_full_version": f"{python}.0", "platform_machine": "aarch64",
            "platform_system": "Linux", "sys_platform": "linux", "os_name": "posix", "implementation_name": "cpython",
            "platform_python_implementation": "CPython", "platform_release": "", "platform_version": "",
            "implementation_version": f"{python}.0"}


JETPACK6 = target_env("3.10")  # JetPack 6: Ubuntu 22.04, Python 3.10, glibc 2.35
DEBIAN_ARM64 = target_env("3.11")  # Debian 12's python3.11, what the emulated run uses


def build_wheel(dest: Path) -> Path:
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                             str(dest), str(ROOT)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (path,) = dest.glob("mirasol_edge-*.whl")
    return path


def requirements(wheel: Path, env: dict[str, str], extras: tuple[str, ...] = ()) -> list[str]:
    """The wheel's Requires-Dist that apply on ``env`` with ``extras``, markers removed."""
    with zipfile.ZipFile(wheel) as z:
        (meta,) = [n for n in z.namelist() if n.endswith(".dist-info/METADATA")]
        metadata = Parser().parsestr(z.read(meta).decode())
    wanted = []
    for line in metadata.get_all("Requires-Dist") or []:
        req = Requirement(line)
        if req.marker is None or any(req.marker.evaluate({**env, "extra": e}) for e in ("", *extras)):
            req.marker = None
            wanted.append(str(req))
    return wanted
