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
killed build leaves no half engine behind). A damaged engine (a truncated or corrupt file, a
manifest that does not parse or is of the wrong shape, a file where the folder should be, ...)
is reported in one log line, removed and rebuilt: never an exception, so that `--backend onnx`
does not fail and `auto` is not sent to a slower backend run after run.

A build killed outright (SIGKILL, power loss) leaves its `.build-<key>-*` folder. Such a folder
is stale exactly when nobody holds its key's lock (a builder holds it until its folder is
renamed into place; the kernel releases a dead process's locks): every `get_or_build` removes
those, and any other `.build-*` entry older than a day.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import re
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
BUILD_PREFIX = ".build-"
_BUILD_NAME = re.compile(r"\.build-([0-9a-f]{16})-")
_ORPHAN_AGE_S = 24 * 3600  # a .build-* entry whose key cannot be read: removed at this age


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
        if not folder.exists() and not folder.is_symlink():
            return None
        manifest, problem = self._check(folder, identity)
        if manifest is not None:
            return CachedEngine(folder, manifest, False)
        log.warning("engine %s is unusable (%s): rebuilding it", folder.name, problem)
        self.discard(folder)
        return None

    def _check(self, folder: Path, identity: dict) -> tuple[dict | None, str]:
        """(the manifest, "") when the engine in `folder` is intact and is `identity`'s; else
        (None, what is wrong). Any damage is a reason, never an exception."""
        try:
            return self._check_manifest(folder, identity)
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            return None, f"unreadable ({type(exc).__name__}: {exc})"

    def _check_manifest(self, folder: Path, identity: dict) -> tuple[dict | None, str]:
        if not folder.is_dir():
            return None, "not a folder"
        try:
            manifest = json.loads((folder / MANIFEST_FILE).read_text())
        except FileNotFoundError:
            return None, "no manifest.json"
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None, "manifest.json does not parse"
        if not isinstance(manifest, dict):
            return None, "manifest.json is not a JSON object"
        if manifest.get("format") != MANIFEST_FORMAT or manifest.get("version") != MANIFEST_VERSION:
            return None, "manifest of another format or version"
        if manifest.get("identity") != identity:
            return None, "manifest does not match this environment"
        files = manifest.get("files") or {}
        if not isinstance(files, dict) or not files:
            return None, "manifest lists no engine file"
        for name, meta in files.items():
            path = folder / name
            if not isinstance(meta, dict) or Path(name).name != name:
                return None, f"manifest entry {name!r} is malformed"
            if not path.is_file():
                return None, f"{name} is missing"
            size = path.stat().st_size
            if size != meta.get("bytes"):
                return None, (f"{name} is {size} bytes, the manifest says {meta.get('bytes')} "
                              "(truncated?)")
            if file_sha256(path) != meta.get("sha256"):
                return None, f"{name} does not match its sha256 (corrupt)"
        return manifest, ""

    def discard(self, path: Path) -> None:
        """Remove an engine folder (or whatever stands at its name). One that cannot be removed
        is an OSError naming it: a build into its place would fail anyway."""
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise OSError(exc.errno or errno.EIO,
                          f"engine {path} is damaged and cannot be removed "
                          f"({exc.strerror or exc}): remove it by hand") from None

    # -- builds killed half-way -------------------------------------------------------------------

    def sweep_stale_builds(self) -> list[str]:
        """Remove the `.build-*` folders of builds that are dead (their key's lock is free) and
        returns their names. A build under way (another process, or this one) holds its lock."""
        try:
            entries = [p for p in self.root.iterdir() if p.name.startswith(BUILD_PREFIX)]
        except OSError:
            return []
        removed = []
        for path in entries:
            match = _BUILD_NAME.match(path.name)
            if match is None:
                stale = self._older_than(path, _ORPHAN_AGE_S)
            else:
                stale = self._remove_if_unlocked(match.group(1), path)
            if stale:
                removed.append(path.name)
        if removed:
            log.warning("engines: removed %d folder(s) left by killed builds in %s: %s",
                        len(removed), self.root, ", ".join(removed))
        return removed

    def _remove_if_unlocked(self, key: str, path: Path) -> bool:
        try:
            handle = open(self._locks() / f"{key}.lock", "a")
        except OSError:
            return False
        with handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # a build of this key is running
                return False
            try:
                shutil.rmtree(path, ignore_errors=True)
                return not path.exists()
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    @staticmethod
    def _older_than(path: Path, age_s: float) -> bool:
        try:
            if time.time() - path.lstat().st_mtime < age_s:
                return False
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
            return True
        except OSError:
            return False

    # -- building ---------------------------------------------------------------------------------

    def _locks(self) -> Path:
        """The folder of the build locks (made; a file in its place is removed first)."""
        locks = self.root / ".locks"
        if (locks.exists() or locks.is_symlink()) and not locks.is_dir():
            self.discard(locks)
        locks.mkdir(parents=True, exist_ok=True)
        return locks

    @contextmanager
    def _locked(self, key: str) -> Iterator[None]:
        with open(self._locks() / f"{key}.lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def get_or_build(self, identity: dict, build: Callable[[Path], dict]) -> CachedEngine:
        """The cached engine for `identity`, or a new one from `build(folder) -> manifest extras`
        (which writes the engine files into `folder` and returns parity, latency, ...)."""
        self.sweep_stale_builds()
        hit = self.load(identity)
        if hit is not None:
            return hit
        key = identity_key(identity)
        with self._locked(key):
            hit = self.load(identity)  # another process may have built it while we waited
            if hit is not None:
                return hit
            target = self.folder_for(identity)
            tmp = Path(tempfile.mkdtemp(dir=self.root, prefix=f"{BUILD_PREFIX}{key}-"))
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
                if target.exists() or target.is_symlink():
                    self.discard(target)
                os.rename(tmp, target)  # atomic: the folder appears complete or not at all
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        return CachedEngine(target, manifest, True)
