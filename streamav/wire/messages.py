"""The wire's typed messages: one frozen msgspec Struct per topic, the envelope, and the control
socket's requests and replies; how each is encoded (rounded here, and only here) and validated.

Producers build these types and hand them to the publisher (`Publisher.publish(message, ...)`);
the subscriber client decodes every message of a topic it knows into its type
(`Message.body`); the preview, the status line and the run's outputs read the same types.
docs/protocol.md documents every field (tests/test_protocol_doc.py compares the two).

Rules:

- A message's map is the envelope (`Envelope`, written by the publisher thread) followed by the
  topic's own fields, in the order they are declared here. Floats go out as float64.
- Values are held at full precision; `encode_body` rounds the fields a type lists in `DIGITS`
  (e.g. probabilities to 5 decimals) as it encodes. Nothing upstream rounds.
- `encode_body` validates what it wrote by decoding it again with the type, so a producer can
  never send a message that the subscriber client would reject: a field of the wrong type
  raises TypeError / ValueError in the producer's thread, before anything is queued. numpy
  scalars are written as the Python values they hold (msgspec itself refuses even np.float64).
- Decoding is lenient about what the protocol allows to grow (unknown fields are ignored, new
  `status` states and `stats` stages are plain strings) and strict about the rest (types,
  required fields, lengths that must agree). Every failure is a `DecodeError` (a ValueError).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, ClassVar, Union

import msgspec
import numpy as np
from msgspec import UNSET, UnsetType, field

SCHEMA_VERSION = 1

# Topics. Subscribers match by prefix: subscribing to "emotion" also delivers "emotion.change".
TOPIC_EMOTION = "emotion"
TOPIC_EMOTION_CHANGE = "emotion.change"
TOPIC_FACE = "face"
TOPIC_VIDEO_DENOISED = "video.denoised"
TOPIC_LATENT = "latent"
TOPIC_STATS = "stats"
TOPIC_STATUS = "status"


class DecodeError(ValueError):
    """What was received is not a valid streamav message (or control request / reply)."""


Count = Annotated[int, msgspec.Meta(ge=0)]
Size = Annotated[int, msgspec.Meta(ge=1, le=1 << 16)]


class _Frozen(msgspec.Struct, frozen=True, kw_only=True):
    # (kw_only is not inherited: every subclass says it again)
    """A frozen, keyword-only Struct; maps on the wire."""

    def to_dict(self) -> dict[str, Any]:
        """Plain Python values (tuples, dicts), by the wire's field names; not rounded."""
        return msgspec.to_builtins(self)


# ---- the envelope and the topics ----------------------------------------------------------------


class Envelope(_Frozen, kw_only=True):
    """The fields every message's map starts with, written by the publisher thread."""

    schema: int
    stream: str
    seq: Count
    t_capture: float
    t_publish: float


class TopicMessage(_Frozen, kw_only=True):
    """The base of the topic types: `TOPIC` is the topic frame; `DIGITS` the fields rounded on
    the wire, to that many decimals; `BUFFERS` how many raw buffers follow the map."""

    TOPIC: ClassVar[str] = ""
    DIGITS: ClassVar[Mapping[str, int]] = {}
    BUFFERS: ClassVar[int] = 0

    def check_buffers(self, buffers: Sequence[bytes | bytearray | memoryview]) -> None:
        """ValueError unless `buffers` are the raw buffers this message describes."""
        if len(buffers) != self.BUFFERS:
            raise ValueError(f"{self.TOPIC!r} has {self.BUFFERS} raw buffer(s), not {len(buffers)}")


class Face(TopicMessage, kw_only=True):
    """`face`: every processed frame, found or not."""

    TOPIC: ClassVar[str] = TOPIC_FACE
    DIGITS: ClassVar[Mapping[str, int]] = {"landmarks": 2}

    found: bool
    box: Union[tuple[float, float, float, float], None]
    landmarks: Union[tuple[tuple[float, float], ...], UnsetType] = UNSET  # only when found
    frame_seq: Count
    image_size: tuple[Size, Size]
    pts: Union[float, None]

    def __post_init__(self) -> None:
        if not self.found and self.landmarks is not UNSET:
            raise ValueError("landmarks are sent only when the face was found")


class Emotion(TopicMessage, kw_only=True):
    """`emotion`: every frame with a face, from the model stage."""

    TOPIC: ClassVar[str] = TOPIC_EMOTION
    DIGITS: ClassVar[Mapping[str, int]] = {"probs": 5, "confidence": 5, "baseline_s": 2}

    labels: tuple[str, ...]
    probs: tuple[float, ...]
    top: str
    confidence: float
    uncertain: bool
    baseline_s: Union[float, None]
    profile: Union[str, None]
    frame_seq: Count

    def __post_init__(self) -> None:
        if len(self.probs) != len(self.labels):
            raise ValueError(f"{len(self.labels)} labels but {len(self.probs)} probabilities")
        if self.top not in self.labels:
            raise ValueError("the top class is not one of the labels")


class EmotionChange(TopicMessage, kw_only=True):
    """`emotion.change`: the smoothed top label changed (`from_` is the wire's `from`)."""

    TOPIC: ClassVar[str] = TOPIC_EMOTION_CHANGE
    DIGITS: ClassVar[Mapping[str, int]] = {"confidence": 5}

    from_: Union[str, None] = field(name="from")
    to: str
    confidence: float
    frame_seq: Count


class VideoDenoised(TopicMessage, kw_only=True):
    """`video.denoised`: the model's decoded face; its pixels are the one raw buffer."""

    TOPIC: ClassVar[str] = TOPIC_VIDEO_DENOISED
    BUFFERS: ClassVar[int] = 1

    width: Size
    height: Size
    format: str = "rgb24"
    frame_seq: Count

    def check_buffers(self, buffers: Sequence[bytes | bytearray | memoryview]) -> None:
        super().check_buffers(buffers)
        if self.format == "rgb24" and len(buffers[0]) != self.width * self.height * 3:
            raise ValueError(f"an rgb24 {self.width}x{self.height} image is "
                             f"{self.width * self.height * 3} bytes, not {len(buffers[0])}")


class Latent(TopicMessage, kw_only=True):
    """`latent`: the MDVAE's posterior for this frame (the array sizes are the model's)."""

    TOPIC: ClassVar[str] = TOPIC_LATENT

    w: tuple[float, ...]
    w_var: tuple[float, ...]
    z_av: tuple[float, ...]
    z_a: tuple[float, ...]
    z_v: tuple[float, ...]
    frame_seq: Count

    def __post_init__(self) -> None:
        if len(self.w_var) != len(self.w):
            raise ValueError("w and w_var differ in length")


class Percentiles(_Frozen, kw_only=True):
    """One stage's latency percentiles (ms); null when the stage saw no samples."""

    p50: Union[float, None]
    p99: Union[float, None]


class Stats(TopicMessage, kw_only=True):
    """`stats`: once a second (this window's numbers), and once at the end (the whole run's)."""

    TOPIC: ClassVar[str] = TOPIC_STATS

    fps: float
    frames: Count
    faces_found: Count
    dropped_frames: Count
    stale_dropped: Count = 0  # of dropped_frames, those dropped as staler than the bound
    audio_overflows: Count
    audio_samples_lost: Count
    has_audio: bool
    publish_dropped: Count
    nonfinite_frames: Count
    model_engine: Union[str, None]
    av_skew_ms: Union[float, None]
    av_skew_p99_ms: Union[float, None]
    latency_ms: dict[str, Percentiles]
    elapsed_s: float
    final: bool


class Anchor(_Frozen, kw_only=True):
    """One reading of the publisher's monotonic clock and of its unix wall clock, together."""

    t_monotonic: float
    t_wall: float


class Status(TopicMessage, kw_only=True):
    """`status`: started, source lost / back / failed, reset, stopping (new states may appear:
    a str)."""

    TOPIC: ClassVar[str] = TOPIC_STATUS

    state: str
    reason: str
    anchor: Anchor


TOPIC_TYPES: dict[str, type[TopicMessage]] = {
    cls.TOPIC: cls for cls in (Face, Emotion, EmotionChange, VideoDenoised, Latent, Stats, Status)}
TOPICS = tuple(TOPIC_TYPES)


# ---- encoding: rounding happens here ------------------------------------------------------------

def _enc_hook(value: Any) -> Any:
    """numpy scalars and arrays as Python values (float64 for every float); else TypeError."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot encode a value of type {type(value).__qualname__} in a message")


# msgspec's module-level encode() and decode() keep their state per call, and any thread may
# encode (the worker, a source's thread, the main thread). Older msgspec Encoder objects keep
# their output buffer in the object, and enc_hook runs Python code, during which another thread
# can take the GIL; the functions cost no more here (measured: ~1.3 us for a `latent`).


def _encode(value: Any) -> bytes:
    return msgspec.msgpack.encode(value, enc_hook=_enc_hook)


def round_value(value: Any, digits: int) -> Any:
    """`value` with every float in it (nested tuples and lists too) rounded to `digits`."""
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return round(value, digits) if math.isfinite(value) else value
    if isinstance(value, (tuple, list)):
        return tuple(round_value(item, digits) for item in value)
    return value


def rounded(message: msgspec.Struct) -> msgspec.Struct:
    """The message as it goes on the wire: the fields in its `DIGITS` rounded."""
    digits: Mapping[str, int] = getattr(message, "DIGITS", {})
    if not digits:
        return message
    changes = {name: round_value(getattr(message, name), n) for name, n in digits.items()}
    return msgspec.structs.replace(message, **changes)


def encode_body(message: msgspec.Struct) -> bytes:
    """The message's msgpack map (its own fields, no envelope), rounded, then checked by decoding
    it again with its type. TypeError / ValueError when it is not a valid message."""
    try:
        body = _encode(rounded(message))
    except TypeError as exc:
        raise TypeError(f"{type(message).__name__}: {exc}") from None
    try:
        msgspec.msgpack.decode(body, type=type(message))
    except msgspec.ValidationError as exc:
        raise ValueError(f"{type(message).__name__} is not a valid message: {exc}") from None
    return body


def split_map(body: bytes) -> tuple[int, bytes]:
    """(number of entries, the entries' bytes) of one msgpack map, without its header."""
    first = body[0]
    if 0x80 <= first <= 0x8F:
        return first & 0x0F, body[1:]
    if first == 0xDE:
        return int.from_bytes(body[1:3], "big"), body[3:]
    if first == 0xDF:
        return int.from_bytes(body[1:5], "big"), body[5:]
    raise ValueError("not a msgpack map")


def map_header(n_entries: int) -> bytes:
    """The msgpack header of a map of `n_entries` entries."""
    if n_entries < 16:
        return bytes((0x80 | n_entries,))
    if n_entries < 1 << 16:
        return b"\xde" + n_entries.to_bytes(2, "big")
    return b"\xdf" + n_entries.to_bytes(4, "big")


def encode_envelope(envelope: Envelope) -> tuple[int, bytes]:
    """The envelope's entries (count, bytes), to be prepended to a body's."""
    return split_map(_encode(envelope))


def encode_frames(message: TopicMessage, envelope: Envelope,
                  buffers: Sequence[bytes] = ()) -> list[bytes]:
    """A whole message's multipart frames, [topic, map (envelope first), *buffers]: what the
    publisher sends (for tests and tools; the publisher itself splits the work in two)."""
    message.check_buffers(buffers)
    n_env, env = encode_envelope(envelope)
    n_body, body = split_map(encode_body(message))
    return [message.TOPIC.encode("utf-8"), map_header(n_env + n_body) + env + body,
            *(bytes(b) for b in buffers)]


# ---- decoding -----------------------------------------------------------------------------------

_PLAIN = (str, int, float, bool, bytes, type(None))


def _ext_hook(code: int, data: memoryview) -> Any:
    raise ValueError(f"msgpack extension type {code} is not part of the protocol")




def _check_plain(value: Any) -> None:
    """ValueError unless `value` holds only what the protocol writes: nil, bool, int, float, str,
    bin, arrays and maps (no msgpack timestamps, which msgspec turns into datetimes)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
            stack.extend(item.keys())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
        elif not isinstance(item, _PLAIN):
            raise ValueError(f"a {type(item).__name__} is not a protocol value")


def decode_map(data: bytes | memoryview, what: str = "map") -> dict[str, Any]:
    """One msgpack map with str keys and plain values; DecodeError otherwise."""
    try:
        value = msgspec.msgpack.decode(data, type=dict[str, Any], ext_hook=_ext_hook)
        _check_plain(value)
    except msgspec.ValidationError as exc:
        raise DecodeError(f"{what} is not a map with str keys: {exc}") from None
    except (msgspec.DecodeError, ValueError) as exc:
        raise DecodeError(f"{what} is not valid msgpack: {exc}") from None
    except RecursionError:
        raise DecodeError(f"{what} is nested too deeply") from None
    return value


def convert(fields: Mapping[str, Any], cls: type[msgspec.Struct], what: str) -> Any:
    """`fields` as a `cls`, validated; DecodeError naming the first problem."""
    try:
        return msgspec.convert(fields, cls)
    except msgspec.ValidationError as exc:
        raise DecodeError(f"{what}: {exc}") from None


def decode_envelope(payload: Mapping[str, Any], topic: str) -> Envelope:
    """The envelope of a received map; DecodeError when it is missing, invalid or of another
    schema than this client's."""
    schema = payload.get("schema")
    if type(schema) is not int:
        raise DecodeError(f"{topic!r} message without a schema number")
    if schema != SCHEMA_VERSION:
        raise DecodeError(f"{topic!r} message of schema {schema} (this client reads schema "
                          f"{SCHEMA_VERSION})")
    return convert(payload, Envelope, f"envelope of a {topic!r} message")


def decode_body(topic: str, payload: Mapping[str, Any],
                buffers: Sequence[bytes]) -> TopicMessage | None:
    """The typed message of a known topic (None for a topic this version does not know)."""
    cls = TOPIC_TYPES.get(topic)
    if cls is None:
        return None
    message = convert(payload, cls, f"{topic!r} message")
    try:
        message.check_buffers(buffers)
    except ValueError as exc:
        raise DecodeError(str(exc)) from None
    return message


# ---- the control socket ------------------------------------------------------------------------


class Request(_Frozen, kw_only=True):
    """A control request: `{"cmd": CMD, <its fields>}`. `CHANGES_STATE`: needs an allowed
    client when the socket has an allow-list."""

    CMD: ClassVar[str] = ""
    CHANGES_STATE: ClassVar[bool] = True

    def encode(self) -> bytes:
        n, entries = split_map(_encode(self))
        return map_header(n + 1) + _encode("cmd") + _encode(self.CMD) + entries


class Reply(_Frozen, kw_only=True):
    """A control reply: `{"ok": true, <its fields>}`."""

    ok: bool = True

    def encode(self) -> bytes:
        return _encode(self)


class ErrorReply(Reply, kw_only=True):
    """`{"ok": false, "error": "<one line>"}`."""

    ok: bool = False
    error: str


class Ping(Request, kw_only=True):
    CMD: ClassVar[str] = "ping"
    CHANGES_STATE: ClassVar[bool] = False


class PingReply(Reply, kw_only=True):
    t_monotonic: float
    t_wall: float


class Version(Request, kw_only=True):
    CMD: ClassVar[str] = "version"
    CHANGES_STATE: ClassVar[bool] = False


class VersionReply(Reply, kw_only=True):
    version: str
    schema: int


class Commands(Request, kw_only=True):
    CMD: ClassVar[str] = "commands"
    CHANGES_STATE: ClassVar[bool] = False


class CommandsReply(Reply, kw_only=True):
    commands: tuple[str, ...]


class Reset(Request, kw_only=True):
    CMD: ClassVar[str] = "reset"


class ResetReply(Reply, kw_only=True):
    pass


ProfileName = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]  # see emotion.profiles


class ProfileLoad(Request, kw_only=True):
    CMD: ClassVar[str] = "profile.load"

    name: Union[ProfileName, None] = None  # None: no profile


class ProfileLoadReply(Reply, kw_only=True):
    profile: Union[str, None]


# Each request type and the reply type it is answered with (when ok).
REPLY_TYPES: dict[type[Request], type[Reply]] = {
    Ping: PingReply, Version: VersionReply, Commands: CommandsReply, Reset: ResetReply,
    ProfileLoad: ProfileLoadReply}
REQUEST_TYPES: dict[str, type[Request]] = {cls.CMD: cls for cls in REPLY_TYPES}


def parse_request(frame: bytes | memoryview) -> tuple[str, dict[str, Any]]:
    """(cmd, arguments) of one request frame; DecodeError (a short reason that never quotes
    the request) when it is not a msgpack map with a "cmd" string."""
    request = decode_map(frame, "the request")
    cmd = request.pop("cmd", None)
    if not isinstance(cmd, str):
        raise DecodeError('no "cmd" string')
    return cmd, request


def decode_reply(data: bytes, request_type: type[Request] | None = None) -> Reply:
    """A reply as its type: ErrorReply when ok is false, else `request_type`'s reply type (plain
    `Reply` without one). DecodeError when it is neither."""
    fields = decode_map(data, "the reply")
    if fields.get("ok") is False:
        return convert(fields, ErrorReply, "error reply")
    if fields.get("ok") is not True:
        raise DecodeError('a reply has "ok": true or false')
    return convert(fields, REPLY_TYPES.get(request_type, Reply), "reply")
