"""The wire protocol: message layout, topics, envelope, and the transport rules (loopback or CURVE).

A message is a ZeroMQ multipart message:

    [topic (utf-8), one msgpack map, raw buffer 0, raw buffer 1, ...]

The map holds the envelope fields (`ENVELOPE_FIELDS`) and the topic's own fields. Raw buffers
carry bulk binary data (a video frame) without copying it through msgpack. docs/protocol.md is
the reference for people writing subscribers; this module is its implementation, and
streamav/wire/messages.py holds the protocol's topics as types (one frozen msgspec Struct each).

Encoding: the protocol's topics are sent as their types (`pack_message`: rounded and validated
there). A topic of a program's own (an extension, a test's `sync`) may send a plain map
(`pack_payload`, `encode`), by the same rules:

- Keys of the map (and of maps inside it) are `str`. Floats are written as msgpack float64, never float32.
- numpy values inside a payload are converted, not rejected: numpy scalars become Python
  scalars, arrays become (nested) lists via `ndarray.tolist()` (float32 arrays thus become
  float64 lists). Bulk arrays (images) belong in raw buffers instead.
- Anything msgpack cannot write (sets, datetimes, complex numbers, ...) raises `TypeError` naming
  the offending type, in the caller's thread, before anything is sent.

Decoding (`decode`) validates the envelope and, for a known topic, its fields; everything that
is not a message of this schema raises `DecodeError` (a ValueError), and nothing else does.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union
from urllib.parse import urlsplit

import msgpack
import msgspec
import numpy as np
import zmq
import zmq.auth

from streamav.errors import EndpointError
from streamav.wire.messages import (SCHEMA_VERSION, TOPIC_EMOTION, TOPIC_EMOTION_CHANGE,  # noqa: F401
                                    TOPIC_FACE, TOPIC_LATENT, TOPIC_STATS, TOPIC_STATUS,
                                    TOPIC_VIDEO_DENOISED, TOPIC_TYPES, TOPICS, DecodeError,
                                    Envelope, TopicMessage, decode_body, decode_envelope,
                                    decode_map, encode_body, encode_envelope, map_header,
                                    split_map)

# The schema version and the topics live with the topics' types (streamav/wire/messages.py).
# Fields every message carries, written by the publisher thread (see docs/protocol.md).
ENVELOPE_FIELDS = tuple(f.encode_name for f in msgspec.structs.fields(Envelope))
# Names a payload may not use: the envelope, plus the two keys `streamav subscribe` adds to a line.
RESERVED_FIELDS = frozenset(ENVELOPE_FIELDS) | {"topic", "buffers"}

Buffer = Union[bytes, bytearray, memoryview, np.ndarray]
Frame = Union[bytes, memoryview]


@dataclass(frozen=True)
class Message:
    """One received message: its topic, its whole map (envelope included, unknown fields
    too), its raw buffers, and its typed message (`body`)."""

    topic: str
    payload: dict[str, Any]
    buffers: tuple[bytes, ...] = ()
    # The topic's typed message (streamav.wire.messages: Face, Emotion, ...); None for a topic
    # this version does not know.
    body: TopicMessage | None = None

    @property
    def schema(self) -> int | None:
        return self.payload.get("schema")

    @property
    def stream(self) -> str | None:
        return self.payload.get("stream")

    @property
    def seq(self) -> int | None:
        return self.payload.get("seq")

    @property
    def t_capture_s(self) -> float | None:
        """Capture time of the data this message derives from (publisher's monotonic clock, s)."""
        return self.payload.get("t_capture")

    @property
    def t_publish_s(self) -> float | None:
        """When the publisher sent it (publisher's monotonic clock, s)."""
        return self.payload.get("t_publish")


@dataclass(frozen=True)
class PackedPayload:
    """A payload serialized ahead of time: its field count and its packed key/value pairs.

    The publisher packs payloads in the caller's thread (so encoding errors surface there) and
    prepends the envelope in its own thread, without packing the payload a second time.
    """

    n_fields: int
    body: bytes


def _to_msgpack(obj: Any) -> Any:
    """msgpack's `default` hook: numpy values to Python ones; everything else is a TypeError."""
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):  # np.float32, np.int64, np.bool_, ...
        return obj.item()
    raise TypeError(
        f"cannot encode a value of type {type(obj).__module__}.{type(obj).__qualname__} in a "
        "streamav message; use str, int, float, bool, None, bytes, lists, dicts or numpy values"
    )


def _packer() -> msgpack.Packer:
    # use_single_float=False: every float goes out as float64. use_bin_type: bytes stay binary.
    return msgpack.Packer(default=_to_msgpack, use_bin_type=True, use_single_float=False)


def _check_keys(value: Any, path: str) -> None:
    """Map keys are str at every depth (msgpack itself would write int keys, and many readers choke)."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"map keys are str, not {type(key).__qualname__} ({path}{key!r})")
            if isinstance(item, (Mapping, list, tuple)):
                _check_keys(item, f"{path}{key}.")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            if isinstance(item, (Mapping, list, tuple)):
                _check_keys(item, f"{path}{index}.")


def packb(value: Any) -> bytes:
    """One value as msgpack, by the protocol's rules (str keys, numpy converted, float64 floats)."""
    _check_keys(value, "")
    return _packer().pack(value)


def pack_payload(payload: Mapping[str, Any]) -> PackedPayload:
    """Serialize a payload's fields (not the envelope). Raises TypeError / ValueError on bad input."""
    if not isinstance(payload, Mapping):
        raise TypeError(f"a payload is a dict, not {type(payload).__qualname__}")
    _check_keys(payload, "")
    packer = _packer()
    parts: list[bytes] = []
    for key, value in payload.items():
        if key in RESERVED_FIELDS:
            raise ValueError(f"payload field {key!r} is reserved (envelope or subscribe output)")
        parts.append(packer.pack(key))
        parts.append(packer.pack(value))
    return PackedPayload(n_fields=len(payload), body=b"".join(parts))


def pack_message(message: TopicMessage) -> PackedPayload:
    """Serialize a typed message's fields (rounded, validated: streamav.wire.messages)."""
    n_fields, body = split_map(encode_body(message))
    return PackedPayload(n_fields=n_fields, body=body)


def pack_map(envelope: Envelope, payload: PackedPayload) -> bytes:
    """The message's msgpack map: the envelope fields first, then the pre-packed payload."""
    n_envelope, entries = encode_envelope(envelope)
    return map_header(n_envelope + payload.n_fields) + entries + payload.body


def buffer_to_bytes(buffer: Buffer) -> bytes:
    """A private, immutable copy of a raw buffer (numpy arrays in C order), safe to send later."""
    if isinstance(buffer, bytes):
        return buffer  # immutable already: no copy needed
    if isinstance(buffer, np.ndarray):
        return np.ascontiguousarray(buffer).tobytes()
    if isinstance(buffer, (bytearray, memoryview)):
        return memoryview(buffer).tobytes()
    raise TypeError(
        f"a raw buffer is bytes, bytearray, memoryview or a numpy array, not {type(buffer).__qualname__}"
    )


def encode(topic: str, payload: Mapping[str, Any], buffers: Iterable[Buffer] = ()) -> list[Frame]:
    """The multipart frames of one message: [topic, msgpack map of `payload`, *buffers].

    `payload` is written as given (no envelope is added here; `Publisher` does that). Everything
    is serialized before this returns, so a TypeError can never leave half a message on a socket.
    """
    if not isinstance(topic, str) or not topic:
        raise ValueError(f"a topic is a non-empty str, not {topic!r}")
    if not isinstance(payload, Mapping):
        raise TypeError(f"a payload is a dict, not {type(payload).__qualname__}")
    body = packb(dict(payload))
    return [topic.encode("utf-8"), body, *(buffer_to_bytes(b) for b in buffers)]


def decode(frames: Sequence[bytes | memoryview | Any]) -> Message:
    """Parse received multipart frames into a `Message`, its body typed for a known topic.

    Raises `DecodeError` (a ValueError), and nothing else, when they are not a streamav
    message of this schema: fewer than 2 frames, a topic that is not UTF-8, a map that is not
    msgpack or whose keys are not str, an envelope missing or of another schema, a known
    topic's fields invalid or its raw buffers not the ones it describes. Accepts bytes,
    memoryviews or pyzmq `Frame` objects (anything with the buffer protocol).
    """
    if len(frames) < 2:
        raise DecodeError(f"a streamav message has at least 2 frames (topic, map), got {len(frames)}")
    try:
        raw = [f.bytes if hasattr(f, "bytes") else bytes(f) for f in frames]
    except TypeError as exc:
        raise DecodeError(f"a frame is not bytes: {exc}") from None
    try:
        topic = raw[0].decode("utf-8")
    except UnicodeDecodeError:
        raise DecodeError(f"topic frame is not utf-8: {raw[0][:40]!r}") from None
    what = f"message map for topic {topic[:40]!r}"
    payload = decode_map(raw[1], what)
    decode_envelope(payload, topic[:40])
    buffers = tuple(raw[2:])
    body = decode_body(topic, payload, buffers)
    return Message(topic=topic, payload=payload, buffers=buffers, body=body)


# ---- Transport policy: which endpoints need CURVE; bind and connect with clear errors ---------

_LOOPBACK_NAMES = {"localhost", "lo", "ip6-localhost"}


def endpoint_host(endpoint: str) -> str | None:
    """The host part of a tcp:// endpoint ("127.0.0.1", "::1", "*", "eth0"); None for others."""
    parts = urlsplit(endpoint)
    if parts.scheme != "tcp":
        return None
    netloc = parts.netloc
    if netloc.startswith("["):  # [::1]:5555
        return netloc[1 : netloc.find("]")] if "]" in netloc else netloc[1:]
    return netloc.rsplit(":", 1)[0] if ":" in netloc else netloc


def is_loopback_endpoint(endpoint: str) -> bool:
    """True for endpoints only this machine can reach: 127.0.0.0/8, ::1, localhost, ipc, inproc.

    Wildcards (`*`, 0.0.0.0), interface names other than `lo`, other addresses and other
    transports (pgm, udp, ws) count as reachable from the network.
    """
    scheme = urlsplit(endpoint).scheme
    if scheme in ("ipc", "inproc"):
        return True
    host = endpoint_host(endpoint)
    if host is None:
        return False
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_TRANSPORTS = ("tcp", "ipc", "inproc")


def endpoint_problem(endpoint: str) -> str | None:
    """Why `endpoint` is not a usable ZeroMQ endpoint (a short reason), or None when it is.

    ZeroMQ itself accepts some bad addresses silently: a TCP port above 65535 is taken modulo
    65536 (tcp://127.0.0.1:99999 binds port 34463), so the port is checked here, before binding.
    """
    if not isinstance(endpoint, str) or not endpoint or endpoint != endpoint.strip() \
            or any(c.isspace() for c in endpoint):
        return "an endpoint is transport://address without spaces, e.g. tcp://127.0.0.1:5555"
    scheme, sep, address = endpoint.partition("://")
    if not sep:
        return "expected transport://address, e.g. tcp://127.0.0.1:5555"
    if scheme not in _TRANSPORTS:
        return f"unsupported transport {scheme!r}: use tcp://HOST:PORT, ipc://PATH or inproc://NAME"
    if not address:
        return "the address after :// is empty"
    if scheme != "tcp":
        return None
    host = endpoint_host(endpoint)
    port = address.rsplit(":", 1)[1] if ":" in address and not address.endswith("]") else ""
    if not host or not port:
        return "a tcp endpoint needs a host and a port, e.g. tcp://127.0.0.1:5555"
    if port == "*":
        return None  # an ephemeral port chosen by the system
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        return f"port {port!r} is not a TCP port (1..65535)"
    return None


def is_ipv6_endpoint(endpoint: str) -> bool:
    host = endpoint_host(endpoint)
    return host is not None and ":" in host


def _load_certificate(path: Path) -> tuple[bytes, bytes | None]:
    try:
        return zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise EndpointError(f"cannot read CURVE certificate {path}: {exc}") from exc


def secure_server(socket: zmq.Socket, endpoint: str, curve_secret_key_file: Path | None) -> None:
    """Make `socket` a CURVE server when keys are given; refuse a network endpoint without them.

    Call before `bind`. `curve_secret_key_file` is a zmq.auth secret certificate
    (`*.key_secret`, as written by `streamav keys` or `zmq.auth.create_certificates`). Which
    clients may connect is the ZAP handler's business (streamav/wire/auth.py).
    """
    if curve_secret_key_file is None:
        if not is_loopback_endpoint(endpoint):
            raise EndpointError(
                f"{endpoint} is reachable from the network: binding it needs CURVE keys "
                "(make them with `streamav keys`; see docs/protocol.md), "
                "or bind tcp://127.0.0.1 instead"
            )
        return
    public_key, secret_key = _load_certificate(Path(curve_secret_key_file))
    if secret_key is None:
        raise EndpointError(
            f"{curve_secret_key_file} holds only a public key; the server needs the .key_secret file"
        )
    socket.curve_secretkey = secret_key
    socket.curve_publickey = public_key
    socket.curve_server = True


def secure_client(socket: zmq.Socket, curve_server_public_key_file: Path | None,
                  curve_client_secret_key_file: Path | None = None) -> None:
    """Make `socket` a CURVE client of the server whose public key file is given (None: plain).

    `curve_client_secret_key_file` is this client's own key pair (a `NAME.key_secret` made by
    `streamav keys --client NAME`), which a server with an allow-list requires; without it a
    key pair is generated for this socket, which such a server refuses. Call before `connect`.
    """
    if curve_server_public_key_file is None:
        if curve_client_secret_key_file is not None:
            raise EndpointError("a client key needs the server's public key file too")
        return
    server_public_key, _ = _load_certificate(Path(curve_server_public_key_file))
    if curve_client_secret_key_file is None:
        client_public_key, client_secret_key = zmq.curve_keypair()
    else:
        client_public_key, client_secret_key = _load_certificate(Path(curve_client_secret_key_file))
        if client_secret_key is None:
            raise EndpointError(f"{curve_client_secret_key_file} holds only a public key; the "
                                "client needs its .key_secret file")
    socket.curve_serverkey = server_public_key
    socket.curve_publickey = client_public_key
    socket.curve_secretkey = client_secret_key


def bind(socket: zmq.Socket, endpoint: str) -> None:
    """`socket.bind(endpoint)` with failures turned into EndpointError with a clear reason."""
    problem = endpoint_problem(endpoint)
    if problem:
        raise EndpointError(f"cannot bind {endpoint}: {problem}")
    if is_ipv6_endpoint(endpoint):
        socket.ipv6 = True
    try:
        socket.bind(endpoint)
    except zmq.ZMQError as exc:
        if exc.errno == zmq.EADDRINUSE:
            raise EndpointError(f"{endpoint} is already in use (another streamav running?)") from exc
        raise EndpointError(f"cannot bind {endpoint}: {exc.strerror}") from exc


def connect(socket: zmq.Socket, endpoint: str) -> None:
    """`socket.connect(endpoint)` with failures (bad address) turned into EndpointError."""
    problem = endpoint_problem(endpoint)
    if problem:
        raise EndpointError(f"cannot connect to {endpoint}: {problem}")
    if is_ipv6_endpoint(endpoint):
        socket.ipv6 = True
    try:
        socket.connect(endpoint)
    except zmq.ZMQError as exc:
        raise EndpointError(f"cannot connect to {endpoint}: {exc.strerror}") from exc
