"""CURVE key pairs on disk, in zmq.auth's certificate format (what `zmq.auth.load_certificate`
reads, and what the Node.js example in docs/protocol.md parses).

Layout made by `make_keys(folder, clients)` (`streamav keys`):

    keys/server.key          the server's public key: give it to every client
    keys/server.key_secret   the server's secret key (0600): `live --curve-secret-key`
    keys/clients/NAME.key    a client's public key: the allow-list the server reads
    keys/NAME.key_secret     that client's key pair (0600): give it to that client only,
                             with server.key, then delete it here

Secret files are created with mode 0600 (never readable by others, whatever the umask) and
existing files are never overwritten.
"""

from __future__ import annotations

import datetime
import os
import re
from dataclasses import dataclass
from pathlib import Path

import zmq

from streamav.errors import InputError
from streamav.wire.auth import CLIENTS_FOLDER

SERVER_NAME = "server"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")

_PUBLIC_BANNER = """#   ****  Generated on {now} by streamav keys  ****
#   ZeroMQ CURVE Public Certificate
#   Exchange securely, or use a secure mechanism to verify the contents
#   of this file after exchange. Store public certificates in your home
#   directory, in the .curve subdirectory.

"""
_SECRET_BANNER = """#   ****  Generated on {now} by streamav keys  ****
#   ZeroMQ CURVE **Secret** Certificate
#   DO NOT PROVIDE THIS FILE TO OTHER USERS nor change its permissions.

"""


@dataclass(frozen=True)
class KeyFiles:
    name: str
    public: Path  # NAME.key
    secret: Path  # NAME.key_secret
    created: bool  # False: the pair existed and was kept


def check_client_name(name: str) -> str:
    if not _NAME.fullmatch(name) or name.endswith(".") or name == SERVER_NAME:
        raise InputError(f"client name {name!r}: use 1-64 letters, digits, '_', '-' or '.', "
                         f"starting with a letter or digit, not {SERVER_NAME!r}")
    return name


def _certificate(banner: str, public_key: bytes, secret_key: bytes | None) -> str:
    lines = [banner.format(now=datetime.datetime.now().isoformat(timespec="seconds")),
             "metadata\n", "curve\n", f'    public-key = "{public_key.decode("ascii")}"\n']
    if secret_key is not None:
        lines.append(f'    secret-key = "{secret_key.decode("ascii")}"\n')
    return "".join(lines)


def _write_new(path: Path, text: str, mode: int) -> None:
    """Create `path` with `mode` (not widened by the umask's absence, not narrowed later) and
    write `text`; refuse if it exists."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)  # the umask may have removed bits from a public file; set exactly
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            fd = -1
            handle.write(text)
    finally:
        if fd != -1:
            os.close(fd)


def write_key_pair(public_file: Path, secret_file: Path) -> None:
    """A new CURVE key pair: the public certificate (0644) and the secret one (0600, holding
    the public key too, as zmq.auth writes it)."""
    public_key, secret_key = zmq.curve_keypair()
    for path in (public_file, secret_file):
        if path.exists() or path.is_symlink():
            raise InputError(f"{path} exists: not overwritten (remove it to make a new key)")
    _write_new(secret_file, _certificate(_SECRET_BANNER, public_key, secret_key), 0o600)
    try:
        _write_new(public_file, _certificate(_PUBLIC_BANNER, public_key, None), 0o644)
    except BaseException:
        secret_file.unlink(missing_ok=True)
        raise


def _folder(path: Path, mode: int) -> None:
    if path.exists() and not path.is_dir():
        raise InputError(f"{path} is not a folder")
    try:
        path.mkdir(mode=mode, parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot make the folder {path}: {exc.strerror or exc}") from None


def make_keys(folder: Path, clients: list[str] = (), server: bool = True) -> list[KeyFiles]:
    """The server's key pair in `folder` (kept if it exists) and one new pair per client name
    (its public key into `folder/clients/`, the allow-list). Returns what is there now."""
    names = [check_client_name(name) for name in clients]
    if len(set(names)) != len(names):
        raise InputError("a client name was given twice")
    folder = Path(folder)
    allowed = folder / CLIENTS_FOLDER
    for name in names:  # refuse before writing anything
        for path in (allowed / f"{name}.key", folder / f"{name}.key_secret"):
            if path.exists():
                raise InputError(f"client {name!r} exists already ({path}); pick another name or "
                                 "remove its files")
    _folder(folder, 0o700)
    made: list[KeyFiles] = []
    if server:
        public, secret = folder / f"{SERVER_NAME}.key", folder / f"{SERVER_NAME}.key_secret"
        exists = public.exists() and secret.exists()
        if not exists:
            write_key_pair(public, secret)
        made.append(KeyFiles(SERVER_NAME, public, secret, created=not exists))
    if names:
        _folder(allowed, 0o755)
    for name in names:
        public, secret = allowed / f"{name}.key", folder / f"{name}.key_secret"
        write_key_pair(public, secret)
        made.append(KeyFiles(name, public, secret, created=True))
    return made
