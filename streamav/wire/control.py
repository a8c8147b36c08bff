"""The control socket: a REQ/REP server thread that answers commands, and the client `request()`.

Requests are msgpack maps `{"cmd": "<name>", <args>...}`; replies are msgpack maps
`{"ok": bool, ...}`, with `"error": "<one line>"` when ok is false. Both are typed in
streamav/wire/messages.py (`Ping` -> `PingReply`, ..., `ErrorReply`). Built in: `ping` (replies
`t_monotonic`, the server's monotonic clock in s, and `t_wall`, its unix time in s taken at the
same moment: a wall-clock anchor for late joiners), `version` (`version`, `schema`) and
`commands` (the list of known commands). The pipeline adds its own (`reset`, `profile.load`)
with `register(request_type, handler)`.

Handlers run in the control thread, one request at a time: they must be quick and thread-safe
(typically they set a flag or put a request on a queue that the worker reads). A handler
registered with a request type gets the request as that type, validated first (a request that
does not fit it is answered `malformed request` without calling the handler), and returns a
`Reply`; one registered by name gets the arguments as a dict and returns a dict merged into the
reply (or None). A handler that raises gives `{"ok": false, "error": ...}`; the server never
dies on a bad request. The same endpoint rules as the PUB socket apply: a
non-loopback endpoint needs CURVE keys, and with CURVE only clients on the allow-list connect
(streamav/wire/auth.py).

Bounds (streamav/wire/limits.py): a request is at most `CONTROL_MAX_REQUEST_BYTES` (a larger one
makes ZeroMQ drop the connection before reading it), at most `CONTROL_RCVHWM` requests wait per
connection, a request of more than `CONTROL_MAX_FRAMES` frames resets the socket, and a reply
never quotes more than a few dozen characters of the request.

State-changing commands: every registered command unless registered with
`changes_state=False`. With an allow-list, the server checks the sender's key (ZAP's User-Id)
against the list again for each of them, so a key removed from the list cannot `reset` even on
a connection it opened before.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import zmq

import streamav
from streamav.clock import wall_anchor
from streamav.errors import EndpointError
from streamav.wire import messages, protocol
from streamav.wire.auth import user_id
from streamav.wire.limits import (CONTROL_MAX_FRAMES, CONTROL_MAX_REPLY_BYTES,
                                  CONTROL_MAX_REQUEST_BYTES, CONTROL_RCVHWM, clip, quote)
from streamav.wire.listener import Listener, ListenerCounters
from streamav.wire.messages import (SCHEMA_VERSION, CommandsReply, DecodeError, ErrorReply,
                                    PingReply, Reply, Request, VersionReply)

log = logging.getLogger(__name__)

DEFAULT_CONTROL_ENDPOINT = "tcp://127.0.0.1:5556"
_POLL_MS = 100
_START_TIMEOUT_S = 10.0

Handler = Callable[[Any], "Reply | Mapping[str, Any] | None"]
"""A command handler: gets the request (its type, or for a command registered by name its
arguments as a dict: the map without "cmd"), returns its reply (a Reply, reply fields or None)."""


def _pack(obj: Mapping[str, Any]) -> bytes:
    return protocol.packb(dict(obj))  # the same msgpack rules as messages (numpy, float64)


def _error(text: str) -> ErrorReply:
    return ErrorReply(error=clip(" ".join(text.split())))  # one line, never long


class ControlServer(ListenerCounters):
    """The REP side: a thread owning the socket. Use as a context manager, or start()/stop()."""

    BUILTIN_COMMANDS = ("ping", "version", "commands")

    def __init__(
        self,
        endpoint: str = DEFAULT_CONTROL_ENDPOINT,
        curve_secret_key_file: Path | None = None,
        curve_client_keys: Path | str | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.curve_secret_key_file = curve_secret_key_file
        self.curve_client_keys = curve_client_keys
        self.requests = 0
        self.errors = 0
        self.refused = 0  # state-changing commands from a client no longer on the allow-list
        self._handlers: dict[str, Handler] = {
            "ping": lambda request: PingReply(**wall_anchor()),  # also a clock anchor
            "version": lambda request: VersionReply(version=streamav.__version__,
                                                    schema=SCHEMA_VERSION),
            "commands": lambda request: CommandsReply(commands=tuple(self.commands())),
        }
        self._request_types: dict[str, type[Request]] = {
            cmd: messages.REQUEST_TYPES[cmd] for cmd in self.BUILTIN_COMMANDS}
        self._read_only = set(self.BUILTIN_COMMANDS)
        self._lock = threading.Lock()
        self._listener: Listener | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stopping = threading.Event()
        self._start_error: BaseException | None = None

    def register(self, cmd: str | type[Request], handler: Handler, *,
                 changes_state: bool | None = None) -> None:
        """Answer a command with `handler` (any time, also after start). Built-ins cannot be
        replaced.

        `cmd`: a request type (streamav.wire.messages: `Reset`, `ProfileLoad`, ...; the
        handler gets the validated request and returns a `Reply`), or a name (the handler gets
        the arguments as a dict). `changes_state`: False for a command that only reads (with an
        allow-list, any connected client may send it; the others need a key that is still on
        the list); default: the request type's `CHANGES_STATE`, True for a name.
        """
        request_type = None
        if isinstance(cmd, type) and issubclass(cmd, Request):
            request_type, cmd = cmd, cmd.CMD
            if changes_state is None:
                changes_state = request_type.CHANGES_STATE
        if not isinstance(cmd, str) or not cmd:
            raise ValueError(f"a command is a non-empty str, not {cmd!r}")
        if cmd in self.BUILTIN_COMMANDS:
            raise ValueError(f"{cmd!r} is a built-in command")
        with self._lock:
            self._handlers[cmd] = handler
            if request_type is None:
                self._request_types.pop(cmd, None)
            else:
                self._request_types[cmd] = request_type
            if changes_state is None or changes_state:
                self._read_only.discard(cmd)
            else:
                self._read_only.add(cmd)

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
        listener = Listener(
            zmq.REP, self.endpoint,
            {zmq.RCVHWM: CONTROL_RCVHWM, zmq.MAXMSGSIZE: CONTROL_MAX_REQUEST_BYTES,
             zmq.SNDHWM: CONTROL_RCVHWM},
            curve_secret_key_file=self.curve_secret_key_file,
            curve_client_keys=self.curve_client_keys, role="control socket")
        self._listener = listener
        try:
            try:
                listener.open()
            except BaseException as exc:  # reported to start() in the caller's thread
                self._start_error = exc
                return
            finally:
                self._ready.set()
            while not self._stopping.is_set():
                sock = listener.ensure()
                if sock is None:
                    self._stopping.wait(_POLL_MS / 1000)
                    continue
                if sock.poll(_POLL_MS, zmq.POLLIN):
                    self._serve_one(listener, sock)
        finally:
            listener.close(0)

    def _serve_one(self, listener: Listener, sock: zmq.Socket) -> None:
        """Read one request frame by frame (keeping only the first), answer it."""
        try:
            first = sock.recv(copy=False)
        except zmq.ZMQError:
            return
        n_frames = 1
        more = first.more
        while more:  # the rest is read and dropped, never gathered
            if n_frames >= CONTROL_MAX_FRAMES:
                self.requests += 1
                self.errors += 1
                listener.reset(f"a request of more than {CONTROL_MAX_FRAMES} frames",
                               offender=user_id(first))
                return
            try:
                more = sock.recv(copy=False).more
            except zmq.ZMQError:
                return
            n_frames += 1
        reply = self._answer(first.bytes, n_frames, user_id(first))
        try:
            sock.send(reply, flags=zmq.NOBLOCK)
        except zmq.ZMQError:  # the requester is gone; REP drops the reply
            pass

    def _answer(self, frame: bytes, n_frames: int = 1, sender: str | None = None) -> bytes:
        """The packed reply to one request; never raises, never quotes more than a few dozen
        characters of the request."""
        self.requests += 1
        try:
            reply = self._dispatch(frame, n_frames, sender)
        except Exception as exc:  # noqa: BLE001 - the server never dies on a request
            log.exception("answering a control request failed")
            reply = _error(f"internal error: {type(exc).__name__}")
        if isinstance(reply, ErrorReply):
            self.errors += 1
            reply = _error(reply.error)
        try:
            return reply.encode() if isinstance(reply, Reply) else _pack(reply)
        except (TypeError, ValueError) as exc:
            self.errors += 1
            return _error(f"reply could not be encoded: {quote(str(exc), 200)}").encode()

    def _dispatch(self, frame: bytes, n_frames: int,
                  sender: str | None) -> Reply | dict[str, Any]:
        if n_frames != 1:
            return _error(f"malformed request: {n_frames} frames, expected 1")
        try:
            cmd, args = messages.parse_request(frame)
        except DecodeError as exc:
            return _error(f"malformed request: {quote(str(exc))}")
        with self._lock:
            handler = self._handlers.get(cmd)
            request_type = self._request_types.get(cmd)
            known = sorted(self._handlers)
            read_only = cmd in self._read_only
        if handler is None:
            return _error(f"unknown command {quote(cmd)}; known: {', '.join(known)}")
        listener = self._listener
        allow_list = listener.allow_list if listener is not None else None
        if not read_only and allow_list is not None and not allow_list.allows(sender):
            self.refused += 1
            return _error(f"{cmd}: this client's key is not on the allow-list (any more)")
        request: Any = args
        if request_type is not None:
            try:
                request = messages.convert(args, request_type, cmd)
            except DecodeError as exc:
                return _error(f"malformed request: {quote(str(exc), 200)}")
        try:
            fields = handler(request)
        except Exception as exc:
            log.exception("control command %r failed", cmd)
            return _error(f"{cmd} failed: {quote(str(exc), 200)}")
        if fields is None:
            return Reply()
        if isinstance(fields, Reply):
            return fields
        reply: dict[str, Any] = {"ok": True}
        reply.update(fields)
        return reply


def _round_trip(endpoint: str, payload: bytes, timeout_s: float,
                curve_server_public_key_file: Path | None,
                curve_client_secret_key_file: Path | None) -> bytes:
    """Send one request frame, return the reply frame (EndpointError: none in time)."""
    context = zmq.Context()
    sock = context.socket(zmq.REQ)
    try:
        sock.linger = 0
        sock.sndtimeo = int(timeout_s * 1000)
        sock.maxmsgsize = CONTROL_MAX_REPLY_BYTES
        protocol.secure_client(sock, curve_server_public_key_file, curve_client_secret_key_file)
        protocol.connect(sock, endpoint)
        try:
            sock.send(payload)
        except zmq.Again as exc:
            raise EndpointError(f"cannot send to {endpoint} within {timeout_s} s") from exc
        if not sock.poll(int(timeout_s * 1000), zmq.POLLIN):
            raise EndpointError(f"no reply from {endpoint} within {timeout_s} s (is streamav running?)")
        return sock.recv()
    finally:
        sock.close(linger=0)
        context.term()


def request(
    endpoint: str,
    cmd: str,
    timeout_s: float = 2.0,
    *,
    curve_server_public_key_file: Path | None = None,
    curve_client_secret_key_file: Path | None = None,
    **args: Any,
) -> dict[str, Any]:
    """Send one command to a control socket and return its reply map (`ok` may be false).

    Raises EndpointError if no reply came within `timeout_s` (nothing listening, busy, or this
    client refused: a CURVE server with an allow-list answers nothing to a key not on it), the
    reply is not a msgpack map, or the endpoint is invalid. `curve_client_secret_key_file`:
    this client's key pair (`streamav keys --client NAME`). Example:
    `request("tcp://127.0.0.1:5556", "ping")["t_monotonic"]`; `call()` is the typed variant.
    """
    payload = _pack({"cmd": cmd, **args})
    data = _round_trip(endpoint, payload, timeout_s, curve_server_public_key_file,
                       curve_client_secret_key_file)
    try:
        return messages.decode_map(data, "the reply")
    except DecodeError as exc:
        raise EndpointError(f"{endpoint} sent a bad reply: {exc}") from exc


def call(
    endpoint: str,
    req: Request,
    timeout_s: float = 2.0,
    *,
    curve_server_public_key_file: Path | None = None,
    curve_client_secret_key_file: Path | None = None,
) -> Reply:
    """Send a typed request (`Ping()`, `ProfileLoad(name="anna")`, ...) and return its typed
    reply (`PingReply`, ...), or `ErrorReply` when the server answered ok false.

    Raises EndpointError as `request()` does, and when the reply is not the request's reply type.
    """
    data = _round_trip(endpoint, req.encode(), timeout_s, curve_server_public_key_file,
                       curve_client_secret_key_file)
    try:
        return messages.decode_reply(data, type(req))
    except DecodeError as exc:
        raise EndpointError(f"{endpoint} sent a bad reply: {exc}") from exc
