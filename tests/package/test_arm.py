"""The runtime on Arm, emulated: the built wheel and its aarch64 dependencies (with the ``jetson``
extra) in Debian's arm64 ``python3.11`` under ``qemu-user-static`` stream the bundled sample
through ``cpu`` engines built here on x86 and answer its six questions.

No binfmt: ``qemu-aarch64-static -cpu max -L SYSROOT SYSROOT/usr/bin/python3.11``, the sysroot
from ``apt-get download`` of Debian's arm64 packages unpacked with ``dpkg-deb -x``. ONNX Runtime's
CPU probe crashes on the host's x86 ``/proc/cpuinfo``, so an Arm one (Orin's Cortex-A78AE, one
entry per host CPU) is bound over it in a private mount namespace (``unshare -m``). Needs root
(dpkg, apt, mount); skipped otherwise, or without qemu-user-static (``make debian-packages``
installs it) or apt; ``make test`` run as root (CI) sets MIRASOL_REQUIRE_ARM: there, missing fails.
The sysroot and the dependencies are cached in ~/.cache/mirasol-edge/arm64.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from mirasol_edge.assets import BUNDLED_CHECKPOINT

from .targets import AARCH64, DEBIAN_ARM64, build_wheel, requirements

pytestmark = pytest.mark.slow

# Not $XDG_CACHE_HOME: tests/calib points that at a temporary folder for the rest of the session.
CACHE = Path.home() / ".cache" / "mirasol-edge" / "arm64"
# Debian 12's python3.11 and the libraries its standard library and the wheels' extensions load.
DEBS = ("python3.11-minimal", "libpython3.11-minimal", "libpython3.11-stdlib", "libc6", "libgcc-s1", "libstdc++6",
        "zlib1g", "libexpat1", "libssl3", "libffi8", "libbz2-1.0", "liblzma5", "libuuid1", "libcrypt1",
        "libsqlite3-0", "libncursesw6", "libtinfo6", "libreadline8")
PIP_TARGET = (*AARCH64, "--python-version", "3.11")
ARM_CPU = """processor\t: {i}
BogoMIPS\t: 62.50
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x0
CPU part\t: 0xd42
CPU revision\t: 1

"""
# In the emulated interpreter: say where it runs and what it loaded, then be mirasol-run.
WRAPPER = """import json, platform, runpy, sys
import onnxruntime
print(json.dumps({"event": "platform", "machine": platform.machine(), "onnxruntime": onnxruntime.__file__}), flush=True)
runpy.run_module("mirasol_edge.cli.run", run_name="__main__", alter_sys=True)
"""


def unavailable(reason: str):
    if os.environ.get("MIRASOL_REQUIRE_ARM"):
        pytest.fail(f"MIRASOL_REQUIRE_ARM is set, but {reason}")
    pytest.skip(reason)


def sh(cmd, timeout=600, **kwargs):
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, **kwargs)


def host_ready() -> str:
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        unavailable("needs root on Linux (dpkg --add-architecture, apt-get, a private mount namespace)")
    for tool in ("dpkg", "dpkg-deb", "apt-get", "apt-cache", "unshare"):
        if shutil.which(tool) is None:
            unavailable(f"no {tool} here (a Debian host is needed)")
    qemu = shutil.which("qemu-aarch64-static")
    if qemu is None:
        unavailable("qemu-user-static is not installed (make debian-packages installs it)")
    if sh(["unshare", "-m", "true"], timeout=30).returncode != 0:
        # A container without CAP_SYS_ADMIN: nothing a test command can install, so a skip even in CI.
        pytest.skip("unshare -m is not permitted here (no CAP_SYS_ADMIN?)")
    return qemu


def sysroot() -> Path:
    """Debian's arm64 python3.11 with its libraries, unpacked once into the cache."""
    root, stamp = CACHE / "sysroot", CACHE / "sysroot.ok"
    if stamp.is_file() and stamp.read_text() == "\n".join(DEBS) and (root / "usr/bin/python3.11").is_file():
        return root
    CACHE.mkdir(parents=True, exist_ok=True)
    if "arm64" not in sh(["dpkg", "--print-foreign-architectures"]).stdout.split():
        added = sh(["dpkg", "--add-architecture", "arm64"])
        if added.returncode != 0:
            unavailable(f"dpkg --add-architecture arm64 failed: {added.stderr[-500:]}")
    policy = sh(["apt-cache", "policy", "python3.11-minimal:arm64"]).stdout
    if not policy or "Candidate: (none)" in policy:  # the arm64 package lists are not there yet
        updated = sh(["apt-get", "update", "-q"])
        if updated.returncode != 0:
            unavailable(f"apt-get update failed: {updated.stderr[-500:]}")
    with tempfile.TemporaryDirectory(dir=CACHE, prefix=".sysroot-") as tmp:
        debs, unpacked = Path(tmp) / "debs", Path(tmp) / "root"
        debs.mkdir()
        got = sh(["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", *(f"{d}:arm64" for d in DEBS)], cwd=debs)
        if got.returncode != 0:
            unavailable(f"apt-get download of the arm64 packages failed: {got.stderr[-800:]}")
        for deb in sorted(debs.glob("*.deb")):
            result = sh(["dpkg-deb", "-x", deb, unpacked])
            assert result.returncode == 0, f"{deb.name}: {result.stderr}"
        shutil.rmtree(root, ignore_errors=True)
        os.replace(unpacked, root)
    stamp.write_text("\n".join(DEBS))
    return root


def dependencies(wanted: list[str]) -> Path:
    """The wheel's aarch64 dependencies for Python 3.11, installed once per requirement set."""
    key = hashlib.sha256("\n".join([*sorted(wanted), *PIP_TARGET]).encode()).hexdigest()[:16]
    site = CACHE / f"site-{key}"
    if (site / ".ok").is_file():
        return site
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=CACHE, prefix=".site-"))
    result = sh([sys.executable, "-m", "pip", "install", "-q", "--no-compile", "--target", tmp, *PIP_TARGET, *wanted])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (tmp / ".ok").touch()
    for old in CACHE.glob("site-*"):  # earlier requirement sets
        shutil.rmtree(old, ignore_errors=True)
    os.replace(tmp, site)
    return site


def test_the_wheel_streams_the_sample_on_arm64_python_under_qemu(tmp_path):
    qemu = host_ready()
    root = sysroot()
    wheel = build_wheel(tmp_path / "dist")
    deps = dependencies(requirements(wheel, DEBIAN_ARM64, ("jetson",)))
    own = tmp_path / "site"
    result = sh([sys.executable, "-m", "pip", "install", "-q", "--no-compile", "--no-deps", "--target", own, wheel])
    assert result.returncode == 0, result.stderr[-3000:]

    from mirasol_edge.toolkit.build import build
    from mirasol_edge.toolkit.recipe import load_recipe

    engines = tmp_path / "engines"
    build(load_recipe("cpu"), engines, checkpoint=BUNDLED_CHECKPOINT)  # on x86, with torch

    possible = Path("/sys/devices/system/cpu/possible").read_text().strip()  # "0-1": one entry per CPU
    cpus = int(possible.split(",")[-1].split("-")[-1]) + 1
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("".join(ARM_CPU.format(i=i) for i in range(cpus)))
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path), "LC_ALL": "C.UTF-8",
           "PYTHONPATH": f"{own}:{deps}", "PYTHONNOUSERSITE": "1"}
    command = ["unshare", "-m", "sh", "-c", 'mount --bind "$0" /proc/cpuinfo && exec "$@"', cpuinfo,
               qemu, "-cpu", "max", "-L", root, root / "usr/bin/python3.11", "-c", WRAPPER,
               "--sample", "--engines", engines, "--json"]
    ran = sh(command, timeout=600, env=env, cwd=tmp_path)
    assert ran.returncode == 0, ran.stdout[-2000:] + ran.stderr[-3000:]
    events = [json.loads(line) for line in ran.stdout.splitlines() if line.startswith("{")]
    where = events[0]
    assert where["event"] == "platform" and where["machine"] == "aarch64", where
    assert where["onnxruntime"].startswith(str(deps)), where  # the aarch64 wheel, not the host's
    graded = [e for e in events if e["event"] == "answer"]
    assert len(graded) == 6 and all(e["correct"] for e in graded), graded
