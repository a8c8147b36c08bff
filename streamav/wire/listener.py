"""A bound server socket with streamav's limits and security, which its owner can reset.

`Listener` is what the publisher (XPUB) and the control server (REP) share: its own ZeroMQ
context, the CURVE server keys, the ZAP handler of the client allow-list (streamav/wire/auth.py),
the inbound limits (streamav/wire/limits.py) and, when a peer breaks them in a way ZeroMQ cannot
stop by itself, `reset()`: close the socket, which frees everything every peer had queued or
subscribed, and bind the same endpoint again. With CURVE the offending client's key is refused
for the rest of the run, so it cannot come back; honest clients reconnect by themselves.

A Listener belongs to one thread (ZeroMQ sockets are not thread-safe): create, open, reset and
close it there.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path

import zmq

from streamav.errors import EndpointError
from streamav.wire import auth, protocol
from streamav.wire.limits import REBIND_TIMEOUT_S, quote

log = logging.getLogger(__name__)

_RETRY_EVERY_S = 1.0  # a socket that could not be bound again is retried this often


class ListenerCounters:
    """What a server on a `Listener` reports in `stats` (it sets `self._listener`)."""

    _listener: "Listener | None"

    @property
    def socket_resets(self) -> int:
        return self._listener.resets if self._listener is not None else 0

    @property
    def clients_refused(self) -> int:
        """CURVE handshakes refused because the client's key is not on the allow-list."""
        listener = self._listener
        return listener.allow_list.denied if listener is not None and listener.allow_list else 0


class Listener:
    def __init__(
        self,
        kind: int,
        endpoint: str,
        options: Mapping[int, int],
        curve_secret_key_file: Path | None = None,
        curve_client_keys: Path | str | None = None,
        role: str = "socket",
    ) -> None:
        self.kind = kind
        self.endpoint = endpoint
        self.options = dict(options)
        self.curve_secret_key_file = curve_secret_key_file
        self.curve_client_keys = curve_client_keys
        self.role = role
        self.resets = 0
        self.allow_list: auth.AllowList | None = None
        self.socket: zmq.Socket | None = None
        self._bound_endpoint = endpoint  # the resolved one after the first bind (a "*" port)
        self._context: zmq.Context | None = None
        self._authenticator = None
        self._next_retry = 0.0

    def open(self) -> zmq.Socket:
        """Create the context (and the ZAP handler) and bind. Raises EndpointError."""
        self._context = zmq.Context()
        try:
            self.socket = self._bind(self.endpoint, first=True)
        except BaseException:
            self.close(0)
            raise
        last = self.socket.getsockopt(zmq.LAST_ENDPOINT)
        if last:
            self._bound_endpoint = last.decode("utf-8", "replace")
        return self.socket

    def _bind(self, endpoint: str, first: bool) -> zmq.Socket:
        assert self._context is not None
        sock = self._context.socket(self.kind)
        try:
            for option, value in self.options.items():
                sock.setsockopt(option, value)
            protocol.secure_server(sock, self.endpoint, self.curve_secret_key_file)
            if first and self.curve_secret_key_file is not None:
                self.allow_list = auth.resolve_allow_list(self.curve_secret_key_file,
                                                          self.curve_client_keys)
                if self.allow_list is not None:  # before bind: no handshake without it
                    self._authenticator = auth.start_authenticator(self._context, self.allow_list)
            protocol.bind(sock, endpoint)
        except BaseException:
            sock.close(linger=0)
            raise
        return sock

    def reset(self, reason: str, offender: str | None = None) -> zmq.Socket | None:
        """Close the socket (dropping every peer and all they queued) and bind again.

        `offender`: the z85 key of the authenticated client that caused it, banned for the
        rest of the run. Returns the new socket, or None if the endpoint could not be bound
        again within REBIND_TIMEOUT_S (then `ensure()` retries once a second).
        """
        self.resets += 1
        banned = ""
        if offender is not None and self.allow_list is not None:
            self.allow_list.ban(offender)
            banned = f"; client key {quote(offender)} refused from now on"
        if self.resets == 1 or self.resets % 100 == 0:
            log.warning("%s %s: %s: closed and bound again (reset %d)%s", self.role,
                        self._bound_endpoint, reason, self.resets, banned)
        if self.socket is not None:
            self.socket.close(linger=0)
            self.socket = None
        deadline = time.monotonic() + REBIND_TIMEOUT_S
        while True:
            try:
                self.socket = self._bind(self._bound_endpoint, first=False)
                return self.socket
            except EndpointError as exc:
                # ZeroMQ closes the old listener in its I/O thread: "in use" for a moment.
                if time.monotonic() > deadline:
                    log.error("%s: cannot bind %s again (%s); retrying every %.0f s", self.role,
                              self._bound_endpoint, exc, _RETRY_EVERY_S)
                    self._next_retry = time.monotonic() + _RETRY_EVERY_S
                    return None
                time.sleep(0.005)

    def ensure(self) -> zmq.Socket | None:
        """The socket; after a failed rebind, one more try at most once a second."""
        if self.socket is None and self._context is not None and time.monotonic() >= self._next_retry:
            try:
                self.socket = self._bind(self._bound_endpoint, first=False)
                log.warning("%s: bound %s again", self.role, self._bound_endpoint)
            except EndpointError:
                self._next_retry = time.monotonic() + _RETRY_EVERY_S
        return self.socket

    def close(self, linger_ms: int = 0) -> None:
        """Close the socket, stop the ZAP handler, terminate the context. Idempotent."""
        if self.socket is not None:
            self.socket.close(linger=linger_ms)
            self.socket = None
        if self._authenticator is not None:
            self._authenticator.stop()
            self._authenticator = None
        if self._context is not None:
            self._context.term()
            self._context = None
