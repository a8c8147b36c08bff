"""The engine cache: built engines under `engines/`, content-addressed, each with a manifest.

An engine folder is named `<backend>-<device>-<precision>-b<batch>-<key>`, where `key` is the
first 16 hex digits of the sha256 of its *identity*: every field an engine depends on (weights
hash, input shapes, batch, precision, library versions, device name and compute capability,
calibration hash, export format). The folder holds the engine file(s) and `manifest.json`:

    {"format": "streamav-engine", "version": 1, "key": ..., "identity": {...},
     "files": {"step.onnx": {"bytes": ..., "sha256": ...}}, "built_at": ..., "build_s": ...,
     "parity": {...}, "latency_ms": {"p50": ..., "p99": ...}, ...}

`EngineCache.get_or_build(identity, build)` returns a folder whose manifest matches `identity`
exactly and whose files have the recorded sizes and hashes; otherwise it builds one: under an
exclusive file lock (`.locks/<key>.lock`, so concurrent builders wait and then reuse the
winner's engine), into a temporary folder that is renamed into place only when complete (a
killed build leaves no half engine behind). A truncated or corrupt engine file is reported in
one log line, removed and rebuilt.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from streamav.host import file_sha256

log = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = "streamav-engine"
MANIFEST_VERSION = 1
ENGINE_DIR_ENV = "STREAMAV_ENGINE_DIR"


def default_engine_dir() -> Path:
    """$STREAMAV_ENGINE_DIR; else the checkout's `engines/` (next to the package) when running
    from a source tree; else ~/.cache/streamav/engines."""
    if os.environ.get(ENGINE_DIR_ENV):
        return Path(os.environ[ENGINE_DIR_ENV])
    checkout = Path(__file__).resolve().parents[2] / "engines"
    if (checkout / "README.md").is_file():
        return checkout
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "streamav" / "engines"


def identity_key(identity: dict) -> str:
    """sha256 of the identity's canonical JSON (sorted keys), 16 hex digits."""
    text = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class CachedEngine:
    folder: Path
    manifest: dict
    built: bool  # True when this call built it, False on a cache hit

    def file(self, name: str) -> Path:
        return self.folder / name


class EngineCache:
    def __init__(self, root: Path | str | None = None) -> None:
        self.root = Path(root) if root is not None else default_engine_dir()

    def folder_for(self, identity: dict) -> Path:
        name = (f"{identity['backend']}-{identity['device']}-{identity['precision']}"
                f"-b{identity['batch']}-{identity_key(identity)}")
        return self.root / name

    # -- reading ----------------------------------------------------------------------------------

    def load(self, identity: dict) -> CachedEngine | None:
        """The engine for `identity` if present, matching and intact; else None (a damaged one
        is reported and removed)."""
        folder = self.folder_for(identity)
        if not folder.exists():
            return None
        problem = self._check(folder, identity)
        if problem is None:
            return CachedEngine(folder, json.loads((folder / MANIFEST_FILE).read_text()), False)
        log.warning("engine %s is unusable (%s): rebuilding it", folder.name, problem)
        shutil.rmtree(folder, ignore_errors=True)
        return None

    def _check(self, folder: Path, identity: dict) -> str | None:
        try:
            manifest = json.loads((folder / MANIFEST_FILE).read_text())
        except FileNotFoundError:
            return "no manifest.json"
        except (json.JSONDecodeError, UnicodeDecodeError):
            return "manifest.json does not parse"
        if manifest.get("format") != MANIFEST_FORMAT or manifest.get("version") != MANIFEST_VERSION:
            return "manifest of another format or version"
        if manifest.get("identity") != identity:
            return "manifest does not match this environment"
        files = manifest.get("files") or {}
        if not files:
            return "manifest lists no engine file"
        for name, meta in files.items():
            path = folder / name
            if not path.is_file():
                return f"{name} is missing"
            size = path.stat().st_size
            if size != meta.get("bytes"):
                return f"{name} is {size} bytes, the manifest says {meta.get('bytes')} (truncated?)"
            if file_sha256(path) != meta.get("sha256"):
                return f"{name} does not match its sha256 (corrupt)"
        return None

    # -- building ---------------------------------------------------------------------------------

    @contextmanager
    def _locked(self, key: str) -> Iterator[None]:
        locks = self.root / ".locks"
        locks.mkdir(parents=True, exist_ok=True)
        with open(locks / f"{key}.lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def get_or_build(self, identity: dict, build: Callable[[Path], dict]) -> CachedEngine:
        """The cached engine for `identity`, or a new one from `build(folder) -> manifest extras`
        (which writes the engine files into `folder` and returns parity, latency, ...)."""
        hit = self.load(identity)
        if hit is not None:
            return hit
        key = identity_key(identity)
        with self._locked(key):
            hit = self.load(identity)  # another process may have built it while we waited
            if hit is not None:
                return hit
            target = self.folder_for(identity)
            tmp = Path(tempfile.mkdtemp(dir=self.root, prefix=f".build-{key}-"))
            try:
                started = time.time()
                extras = build(tmp)
                files = {p.name: {"bytes": p.stat().st_size, "sha256": file_sha256(p)}
                         for p in sorted(tmp.iterdir()) if p.is_file()}
                manifest = {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "key": key,
                            "identity": identity, "files": files,
                            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                            "build_s": round(time.time() - started, 2), **extras}
                (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
                os.chmod(tmp, 0o755)
                if target.exists():
                    shutil.rmtree(target)
                os.rename(tmp, target)  # atomic: the folder appears complete or not at all
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        return CachedEngine(target, manifest, True)
