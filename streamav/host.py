"""Facts about this machine and its files that several modules record: installed package
versions, the CPU's name, the cores this process may use, a file's sha256."""

from __future__ import annotations

import hashlib
import importlib.metadata as metadata
import os
import platform
from pathlib import Path


def package_version(name: str) -> str | None:
    """The installed version of a distribution (`torch_tensorrt` or `torch-tensorrt`), or None."""
    for candidate in (name, name.replace("_", "-")):
        try:
            return metadata.version(candidate)
        except metadata.PackageNotFoundError:
            continue
    return None


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def process_cores() -> int:
    """The cores this process may run on (its affinity), not every core of the machine."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def file_sha256(path: Path | str) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def streamav_command() -> list[str]:
    """How to run this installation's `streamav` in a subprocess: the console script beside
    this Python, else the one on PATH, else `python -m streamav` (scripts/ and the tests)."""
    import shutil
    import sys

    script = Path(sys.executable).with_name("streamav")
    if script.exists():
        return [str(script)]
    found = shutil.which("streamav")
    return [found] if found else [sys.executable, "-m", "streamav"]
