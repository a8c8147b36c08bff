"""The control socket: a REQ/REP server thread that answers commands, and the client `request()`.

Requests are msgpack maps `{"cmd": "<name>", <args>...}`; replies are msgpack maps
`{"ok": bool, ...}`, with `"error": "<one line>"` when ok is false. Built in: `ping` (replies
`t_monotonic`, the server's monotonic clock in s, and `t_wall`, its unix time in s taken at the
same moment: a wall-clock anchor for late joiners), `version` (`version`, `schema`) and
`commands` (the list of known commands). The pipeline adds its own (`reset`, `record.start`, ...)
with `register(cmd, handler)`.

Handlers run in the control thread, one request at a time: they must be quick and thread-safe
(typically they set a flag or put a request on a queue that the worker reads) and return a dict
merged into the reply (or None). A handler that raises gives `{"ok": false, "error": ...}`; the
server never dies on a bad request. The same endpoint rules as the PUB socket apply: a
non-loopback endpoint needs CURVE keys.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import msgpack
import zmq

import streamav
from streamav.clock import wall_anchor
from streamav.errors import EndpointError
from streamav.wire import protocol
from streamav.wire.protocol import SCHEMA_VERSION

log = logging.getLogger(__name__)

DEFAULT_CONTROL_ENDPOINT = "tcp://127.0.0.1:5556"
_POLL_MS = 100
_START_TIMEOUT_S = 10.0

Handler = Callable[[dict[str, Any]], "Mapping[str, Any] | None"]
"""A command handler: gets the request's arguments (the map without "cmd"), returns reply fields."""


def _pack(obj: Mapping[str, Any]) -> bytes:
    return protocol.packb(dict(obj))  # the same msgpack rules as messages (numpy, float64)


class ControlServer:
    """The REP side: a thread owning the socket. Use as a context manager, or start()/stop()."""

    BUILTIN_COMMANDS = ("ping", "version", "commands")

    def __init__(
        self,
        endpoint: str = DEFAULT_CONTROL_ENDPOINT,
        curve_secret_key_file: Path | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.curve_secret_key_file = curve_secret_key_file
        self.requests = 0
        self.errors = 0
        self._handlers: dict[str, Handler] = {
            "ping": lambda args: wall_anchor(),  # {"t_monotonic", "t_wall"}: also a clock anchor
            "version": lambda args: {"version": streamav.__version__, "schema": SCHEMA_VERSION},
            "commands": lambda args: {"commands": self.commands()},
        }
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stopping = threading.Event()
        self._start_error: BaseException | None = None

    def register(self, cmd: str, handler: Handler) -> None:
        """Answer `cmd` with `handler` (any time, also after start). Built-ins cannot be replaced."""
        if not isinstance(cmd, str) or not cmd:
            raise ValueError(f"a command is a non-empty str, not {cmd!r}")
        if cmd in self.BUILTIN_COMMANDS:
            raise ValueError(f"{cmd!r} is a built-in command")
        with self._lock:
            self._handlers[cmd] = handler

    def commands(self) -> list[str]:
        with self._lock:
            return sorted(self._handlers)

    # ---- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Bind (in the control thread) and serve. Raises EndpointError here if binding fails."""
        if self._thread is not None:
            raise RuntimeError("ControlServer.start() called twice")
        self._thread = threading.Thread(target=self._run, name="streamav-control", daemon=True)
        self._thread.start()
        if not self._ready.wait(_START_TIMEOUT_S):
            raise EndpointError(f"binding {self.endpoint} did not finish within {_START_TIMEOUT_S} s")
        if self._start_error is not None:
            self._thread.join()
            raise self._start_error

    def stop(self, timeout_s: float = 2.0) -> None:
        """Stop serving and close the socket. Idempotent."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                log.warning("control thread did not end within %.1f s", timeout_s)

    def __enter__(self) -> ControlServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ---- the control thread ---------------------------------------------------------------------

    def _run(self) -> None:
        context = zmq.Context()
        try:
            sock = context.socket(zmq.REP)
            try:
                protocol.secure_server(sock, self.endpoint, self.curve_secret_key_file)
                protocol.bind(sock, self.endpoint)
            except BaseException as exc:  # reported to start() in the caller's thread
                sock.close(linger=0)
                self._start_error = exc
                return
            finally:
                self._ready.set()
            try:
                while not self._stopping.is_set():
                    if sock.poll(_POLL_MS, zmq.POLLIN):
                        frames = sock.recv_multipart()
                        reply = self._answer(frames)
                        try:
                            sock.send(reply, flags=zmq.NOBLOCK)
                        except zmq.Again:  # the requester is gone; REP drops the reply
                            pass
            finally:
                sock.close(linger=0)
        finally:
            context.term()

    def _answer(self, frames: list[bytes]) -> bytes:
        """The packed reply to one request; never raises."""
        self.requests += 1
        reply = self._dispatch(frames)
        if not reply.get("ok", False):
            self.errors += 1
        try:
            return _pack(reply)
        except (TypeError, ValueError) as exc:
            self.errors += 1
            return _pack({"ok": False, "error": f"reply could not be encoded: {exc}"})

    def _dispatch(self, frames: list[bytes]) -> dict[str, Any]:
        if len(frames) != 1:
            return {"ok": False, "error": f"malformed request: {len(frames)} frames, expected 1"}
        try:
            request = msgpack.unpackb(frames[0], raw=False, strict_map_key=False)
        except Exception as exc:  # msgpack raises several unrelated types
            return {"ok": False, "error": f"malformed request: not msgpack ({exc})"}
        if not isinstance(request, dict):
            return {"ok": False, "error": f"malformed request: a {type(request).__name__}, not a map"}
        cmd = request.pop("cmd", None)
        if not isinstance(cmd, str):
            return {"ok": False, "error": 'malformed request: no "cmd" string'}
        with self._lock:
            handler = self._handlers.get(cmd)
            known = sorted(self._handlers)
        if handler is None:
            return {"ok": False, "error": f"unknown command {cmd}; known: {', '.join(known)}"}
        try:
            fields = handler(request)
        except Exception as exc:
            log.exception("control command %r failed", cmd)
            return {"ok": False, "error": f"{cmd} failed: {exc}"}
        reply: dict[str, Any] = {"ok": True}
        if fields is not None:
            reply.update(fields)
        return reply


def request(
    endpoint: str,
    cmd: str,
    timeout_s: float = 2.0,
    *,
    curve_server_public_key_file: Path | None = None,
    **args: Any,
) -> dict[str, Any]:
    """Send one command to a control socket and return its reply map (`ok` may be false).

    Raises EndpointError if no reply came within `timeout_s` (nothing listening, or busy) or the
    endpoint is invalid. Example: `request("tcp://127.0.0.1:5556", "ping")["t_monotonic"]`.
    """
    payload = _pack({"cmd": cmd, **args})
    context = zmq.Context()
    sock = context.socket(zmq.REQ)
    try:
        sock.linger = 0
        sock.sndtimeo = int(timeout_s * 1000)
        protocol.secure_client(sock, curve_server_public_key_file)
        protocol.connect(sock, endpoint)
        try:
            sock.send(payload)
        except zmq.Again as exc:
            raise EndpointError(f"cannot send to {endpoint} within {timeout_s} s") from exc
        if not sock.poll(int(timeout_s * 1000), zmq.POLLIN):
            raise EndpointError(f"no reply from {endpoint} within {timeout_s} s (is streamav running?)")
        reply = msgpack.unpackb(sock.recv(), raw=False)
    except (ValueError, msgpack.ExtraData) as exc:
        raise EndpointError(f"{endpoint} sent a reply that is not msgpack: {exc}") from exc
    finally:
        sock.close(linger=0)
        context.term()
    if not isinstance(reply, dict):
        raise EndpointError(f"{endpoint} sent a {type(reply).__name__}, not a reply map")
    return reply
