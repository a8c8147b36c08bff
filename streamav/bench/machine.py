"""What a benchmark result belongs to: the machine, the library versions, the GPU, the model.

All of it goes into the JSON envelope every `streamav bench` result shares:

    {"schema", "kind", "created", "command", "machine", "versions", "gpu", "model", "settings"}
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

from streamav.bench import SCHEMA
from streamav.host import cpu_name, package_version, process_cores  # noqa: F401 (re-exported)

VERSIONED_PACKAGES = ("streamav", "torch", "onnxruntime", "onnx", "onnxscript", "torch_tensorrt",
                      "tensorrt", "nvidia-modelopt", "numpy", "mediapipe", "av")


def memory_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 ** 2, 2)  # kB → GiB
    except (OSError, ValueError, IndexError):
        pass
    return None


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def machine_info(load_at_start: list[float] | None) -> dict:
    """The CPU, cores, memory, OS, Python and the load average at the start and now (the end)."""
    return {"cpu": cpu_name(), "cores": process_cores(), "cores_total": os.cpu_count(),
            "memory_gb": memory_gb(), "os": platform.platform(),
            "python": platform.python_version(), "hostname": platform.node(),
            "load_average_start": load_at_start, "load_average_end": load_average()}


def versions() -> dict:
    return {name.replace("-", "_"): package_version(name) for name in VERSIONED_PACKAGES}


def gpu_info() -> dict | None:
    """The first CUDA GPU PyTorch sees (name, compute capability, memory, driver, CUDA); None
    without one."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    return {"name": props.name, "compute_capability": f"{props.major}.{props.minor}",
            "memory_gb": round(props.total_memory / 1024 ** 3, 2), "count": torch.cuda.device_count(),
            "cuda": torch.version.cuda, "driver": _nvidia_driver()}


def _nvidia_driver() -> str | None:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return out.strip().splitlines()[0] if out.strip() else None


def model_info(folder: Path, model) -> dict:
    """Folder, preset, the weights' sha256 (as the engine cache computes it) and size."""
    from streamav.engines.registry import weights_sha256

    return {"folder": str(folder), "preset": model.cfg.preset,
            "weights_sha256": weights_sha256(model),
            "params": int(sum(p.numel() for p in model.parameters()))}


def envelope(kind: str, load_at_start: list[float] | None, model: dict | None,
             settings: dict) -> dict:
    """The fields every result starts with; the caller adds its "backends"."""
    return {"schema": SCHEMA, "kind": kind,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "command": list(sys.argv), "machine": machine_info(load_at_start),
            "versions": versions(), "gpu": gpu_info(), "model": model, "settings": settings}
