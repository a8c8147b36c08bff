"""Who may connect: an allow-list of client public keys for the CURVE sockets, checked by ZAP.

With CURVE keys (`curve_secret_key_file`), the data and control sockets accept only clients
whose public key is in the allow-list folder: one zmq.auth public certificate (`NAME.key`) per
client, as `streamav keys --client NAME` writes them (into `clients/` beside the server's
keys, the default folder). A ZAP handler (pyzmq's `ThreadAuthenticator`, one per ZeroMQ
context) checks each connection during the CURVE handshake: a client that is not on the list
is refused before it can subscribe or send a request, so it receives nothing.

The folder is read again when its contents change (a file added, removed or replaced), so a
client is added or revoked without a restart; revoking refuses new connections at once and the
revoked key's state-changing control commands (the control server asks `allows()` for each),
while an open data connection keeps receiving until it reconnects.

`curve_client_keys = "any"` turns the allow-list off: any client that has the server's public key
connects (server authentication and encryption only, streamav's behaviour before the list).
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from streamav.errors import EndpointError
from streamav.wire.limits import quote

log = logging.getLogger(__name__)

ANY_CLIENT = "any"
CLIENTS_FOLDER = "clients"  # beside the server's secret key: the default allow-list


def client_keys_folder(curve_secret_key_file: Path | str | None,
                       curve_client_keys: Path | str | None) -> Path | None:
    """The allow-list folder for a server with these keys, or None when there is none (no CURVE,
    or `curve_client_keys == "any"`). The default is `clients/` beside the secret key file."""
    if curve_secret_key_file is None:
        return None
    if curve_client_keys is None:
        return Path(curve_secret_key_file).parent / CLIENTS_FOLDER
    if str(curve_client_keys) == ANY_CLIENT:
        return None
    return Path(curve_client_keys)


def resolve_allow_list(curve_secret_key_file: Path | str | None,
                       curve_client_keys: Path | str | None) -> AllowList | None:
    """The allow-list a server with these keys enforces (None: none), loaded now.

    Raises EndpointError when CURVE is on and the folder is missing, unreadable or holds no key.
    """
    folder = client_keys_folder(curve_secret_key_file, curve_client_keys)
    return None if folder is None else AllowList(folder)


def _public_key(path: Path) -> bytes:
    try:
        public_key, _ = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise EndpointError(f"cannot read client key {path}: {exc}") from exc
    if not public_key or len(public_key) != 40:
        raise EndpointError(f"{path} holds no CURVE public key")
    return public_key


class AllowList:
    """The z85 public keys in a folder of `*.key` certificates, plus the keys banned this run.

    Thread-safe: the ZAP thread calls `callback`, the socket threads `allows` and `ban`.
    """

    def __init__(self, folder: Path | str) -> None:
        self.folder = Path(folder)
        self.denied = 0  # handshakes refused
        self._lock = threading.Lock()
        self._banned: set[bytes] = set()
        self._logged: set[bytes] = set()
        self._keys, self._signature = self._load()
        if not self._keys:
            raise EndpointError(
                f"the client allow-list {self.folder} holds no key (*.key): no client could "
                "connect; add one with `streamav keys --client NAME`")

    def _scan(self) -> tuple:
        """What changes when a key file is added, removed or replaced."""
        try:
            entries = sorted((entry.name, entry.stat().st_mtime_ns, entry.stat().st_size)
                             for entry in os.scandir(self.folder)
                             if entry.name.endswith(".key") and entry.is_file())
        except FileNotFoundError:
            raise EndpointError(
                f"the client allow-list {self.folder} does not exist: with CURVE keys only "
                "listed clients may connect; make a client key pair with `streamav keys "
                "--client NAME`, or give [publish] curve_client_keys (a folder of client *.key "
                "files, or \"any\" to let in any client that has the server's public key)") from None
        except NotADirectoryError:
            raise EndpointError(f"the client allow-list {self.folder} is not a folder") from None
        except OSError as exc:
            raise EndpointError(f"cannot read the client allow-list {self.folder}: "
                                f"{exc.strerror or exc}") from None
        return tuple(entries)

    def _load(self) -> tuple[frozenset[bytes], tuple]:
        signature = self._scan()
        keys = frozenset(_public_key(self.folder / name) for name, _, _ in signature)
        return keys, signature

    def _refresh(self) -> None:
        """Reread the folder if it changed; keep the last good list if it cannot be read."""
        try:
            if self._scan() != self._signature:
                self._keys, self._signature = self._load()
                log.info("client allow-list %s reloaded: %d key(s)", self.folder, len(self._keys))
        except EndpointError as exc:
            log.warning("client allow-list not reloaded (keeping the previous one): %s", exc)

    def __len__(self) -> int:
        return len(self._keys)

    def allows(self, key: bytes | str | None) -> bool:
        """Whether the client with this z85 public key may connect and change state now."""
        if key is None:
            return False
        z85 = key.encode("ascii") if isinstance(key, str) else bytes(key)
        with self._lock:
            self._refresh()
            return z85 in self._keys and z85 not in self._banned

    def ban(self, key: bytes | str | None) -> None:
        """Refuse this key for the rest of the run (it abused a socket), even if listed."""
        if key is None:
            return
        z85 = key.encode("ascii") if isinstance(key, str) else bytes(key)
        with self._lock:
            self._banned.add(z85)

    # pyzmq's credentials-provider protocol (ThreadAuthenticator.configure_curve_callback)
    def callback(self, domain: str, key: bytes) -> bool:
        allowed = self.allows(key)
        if not allowed:
            with self._lock:
                self.denied += 1
                first = key not in self._logged and len(self._logged) < 100
                self._logged.add(key)
            if first:
                log.warning("refused a client whose key is not on the allow-list %s: %s",
                            self.folder, quote(key.decode("ascii", "replace")))
        return allowed


def start_authenticator(context: zmq.Context, allow_list: AllowList) -> ThreadAuthenticator:
    """A ZAP handler for every CURVE socket of `context`, admitting only `allow_list`'s keys.

    Start it before binding; `stop()` it before terminating the context.
    """
    authenticator = ThreadAuthenticator(context, log=logging.getLogger("streamav.wire.zap"))
    authenticator.start()
    authenticator.configure_curve_callback(domain="*", credentials_provider=allow_list)
    return authenticator


def user_id(frame: zmq.Frame) -> str | None:
    """The z85 public key of the authenticated client that sent `frame` (ZAP's User-Id), or
    None without authentication."""
    try:
        value = frame.get("User-Id")
    except (zmq.ZMQError, AttributeError):
        return None
    return value or None
