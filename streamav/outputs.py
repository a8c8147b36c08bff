"""Checks that an output file or folder can be written, made before the work that produces it
(a run, a benchmark, an evaluation) so that a bad path fails at once instead of at the end."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from streamav.errors import InputError


def check_writable_file(path: Path, flag: str) -> None:
    """InputError unless `path` can be written as a regular file: it is one, or does not exist
    yet and its folder exists or can be made; the folder is tried with a temporary file."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{flag} {path} is a directory; give a file name")
    if path.exists() and not path.is_file():
        raise InputError(f"{flag} {path} is not a regular file (a device, a pipe or a socket)")
    check_writable_folder(path.parent, flag, path)
    if path.exists() and not os.access(path, os.W_OK):
        raise InputError(f"{flag} {path} exists and is not writable")


def check_writable_folder(folder: Path, flag: str, path: Path | None = None) -> None:
    """InputError unless files can be written in `folder` (made with its parents if missing):
    the first folder that exists is tried with a temporary file."""
    shown = path if path is not None else folder
    existing = Path(folder)
    while not existing.exists():  # the run creates the missing folders: the first that exists
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"{flag} {shown}: {existing} is not a directory")
    try:  # os.access is not enough (root, read-only mounts): write a temporary file there
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise InputError(f"{flag} {shown}: cannot write in {existing} "
                         f"({exc.strerror or exc})") from None
