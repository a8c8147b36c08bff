"""The wire's typed messages (streamav/wire/messages.py): every topic survives the wire as its
type, rounding happens when it is encoded and nowhere else, and the decoder and the control
socket's parser take anything a peer can send (hypothesis) without raising anything but the
documented `DecodeError` or answering anything but a short error reply.

The control socket is a real ControlServer on 127.0.0.1 (REQ/REP), as a client would reach it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from datetime import timedelta

import msgpack
import msgspec
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import wire_samples
from conftest import free_tcp_port
from streamav.wire import messages as m
from streamav.wire.control import ControlServer, call
from streamav.wire.limits import MAX_ERROR_CHARS, MAX_QUOTED_CHARS
from streamav.wire.protocol import RESERVED_FIELDS, Message, decode
from streamav.wire.subscriber import message_to_json

FUZZ = settings(max_examples=200, deadline=timedelta(seconds=1), database=None,
                suppress_health_check=[HealthCheck.too_slow])


def _frames(message: m.TopicMessage, buffers=(), seq: int = 0) -> list[bytes]:
    return m.encode_frames(message, wire_samples.envelope(seq), buffers)


# ---- the types -----------------------------------------------------------------------------------


def test_every_topic_has_one_type_whose_fields_are_not_reserved() -> None:
    assert set(m.TOPIC_TYPES) == {"face", "emotion", "emotion.change", "video.denoised", "latent",
                                  "stats", "status"}
    assert {type(message).TOPIC for message, _ in wire_samples.every_topic()} == set(m.TOPICS)
    for topic, cls in m.TOPIC_TYPES.items():
        assert cls.TOPIC == topic
        names = {f.encode_name for f in msgspec.structs.fields(cls)}
        assert not names & RESERVED_FIELDS, (topic, names & RESERVED_FIELDS)
        assert set(cls.DIGITS) <= {f.name for f in msgspec.structs.fields(cls)}
        with pytest.raises(AttributeError):  # frozen
            setattr(next(msg for msg, _ in wire_samples.every_topic() if type(msg) is cls),
                    "frame_seq" if "frame_seq" in names else "final", 1)


@pytest.mark.parametrize("message, buffers", wire_samples.every_topic(),
                         ids=lambda v: getattr(v, "TOPIC", "") or "")
def test_each_topic_survives_the_wire_as_its_type_rounded_there_only(message, buffers) -> None:
    frames = _frames(message, buffers, seq=7)
    received = decode(frames)
    assert received.topic == message.TOPIC and received.seq == 7
    assert received.stream == "test-stream" and received.t_capture_s == 100.0
    assert received.buffers == tuple(buffers)
    assert type(received.body) is type(message)
    assert received.body == m.rounded(message)  # what went out: the DIGITS fields rounded
    for name in msgspec.structs.fields(message):  # every other field exactly as given
        if name.name not in message.DIGITS:
            assert getattr(received.body, name.name) == getattr(message, name.name), name.name


def test_rounding_happens_when_encoding_and_only_there() -> None:
    emotion = wire_samples.emotion()
    assert emotion.confidence == 0.6123456789  # the producer's type keeps full precision
    on_wire = msgspec.msgpack.decode(m.encode_body(emotion))
    assert on_wire["confidence"] == 0.61235 and on_wire["probs"][1] == 0.61235
    assert on_wire["baseline_s"] == 12.35
    face = msgspec.msgpack.decode(m.encode_body(wire_samples.face()))
    assert face["landmarks"][1] == [120.12, 121.99]  # 110 + 10.123456, 120.987654 + 1
    assert face["box"] == [100.25, 80.5, 120.0, 150.75]  # not in DIGITS: as given
    latent = msgspec.msgpack.decode(m.encode_body(wire_samples.latent()))
    assert latent["w"][3] == 0.01 * 3  # full float64, never rounded
    nan = msgspec.structs.replace(emotion, confidence=float("nan"))
    assert math.isnan(msgspec.msgpack.decode(m.encode_body(nan))["confidence"])


def test_the_change_message_says_from_on_the_wire() -> None:
    on_wire = msgspec.msgpack.decode(m.encode_body(wire_samples.change()))
    assert on_wire == {"from": "neutral", "to": "happy", "confidence": 0.77778, "frame_seq": 0}


def test_a_face_not_found_has_no_landmarks_on_the_wire() -> None:
    on_wire = msgspec.msgpack.decode(m.encode_body(wire_samples.face(found=False)))
    assert on_wire["found"] is False and on_wire["box"] is None and "landmarks" not in on_wire
    with pytest.raises(ValueError, match="landmarks"):
        m.Face(found=False, box=None, landmarks=((1.0, 2.0),), frame_seq=0,
               image_size=(4, 4), pts=None)


def test_decode_refuses_what_is_not_a_message_of_this_schema() -> None:
    good = _frames(wire_samples.emotion())
    payload = msgpack.unpackb(good[1])
    video, pixels = wire_samples.denoised()
    video_map = _frames(video, [pixels])[1]

    def with_map(**changes) -> list[bytes]:
        return [good[0], msgpack.packb({**payload, **changes})]

    cases = [
        (with_map(schema=2), "schema 2"),
        ([good[0], msgpack.packb({k: v for k, v in payload.items() if k != "schema"})],
         "without a schema"),
        ([good[0], msgpack.packb({k: v for k, v in payload.items() if k != "seq"})], "seq"),
        (with_map(seq=-1), "seq"),
        (with_map(probs=[0.5]), "4 labels but 1 probabilities"),
        (with_map(top="bored"), "top class"),
        (with_map(confidence="high"), r"Expected `float`, got `str` - at `\$.confidence`"),
        ([b"video.denoised", video_map, b"short"], "bytes, not 5"),
        ([b"video.denoised", video_map], "1 raw buffer"),
        ([b"\xff", good[1]], "utf-8"),
        ([good[0], good[1][:-1]], "not valid msgpack"),
        ([good[0], msgpack.packb({**payload, 1: 2})], "str keys"),
        ([good[0], msgpack.packb({**payload, "x": msgpack.ExtType(3, b"")})], "extension type"),
        ([good[0], msgpack.packb({**payload, "x": [msgpack.Timestamp(1, 0)]})],
         "datetime is not a protocol value"),  # msgspec would hand out a datetime
        ([good[0], b"\x81\xa1x" + b"\x91" * 100_000], "nested too deeply"),
    ]
    for frames, reason in cases:
        with pytest.raises(m.DecodeError, match=reason):
            decode(frames)
    # a topic this version does not know: the envelope checked, no body
    unknown = decode([b"ext.mine", msgpack.packb({**payload, "x": 1})])
    assert unknown.body is None and unknown.payload["x"] == 1
    # fields it does not know are ignored (they may appear without a schema change)
    assert decode(with_map(new_field=[1, 2])).body == m.rounded(wire_samples.emotion())


# ---- fuzzing the decoder ---------------------------------------------------------------------------

_leaves = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=40)
           | st.binary(max_size=40))
_values = st.recursive(
    _leaves,
    lambda children: (st.lists(children, max_size=6)
                      | st.dictionaries(st.text(max_size=12) | st.integers(-5, 5), children,
                                        max_size=6)),
    max_leaves=40)
_topics = st.sampled_from(m.TOPICS) | st.sampled_from(["", "ext.mine", "emotion.changed"])
_valid = [(_frames(message, buffers), tuple(buffers))
          for message, buffers in wire_samples.every_topic()]


def _check_decodes_or_refuses(frames: list[bytes]) -> Message | None:
    """decode() returns a message (its body of its topic's type, which encodes again, and
    which `streamav subscribe` can print) or raises DecodeError; nothing else."""
    try:
        message = decode(frames)
    except m.DecodeError:
        return None
    cls = m.TOPIC_TYPES.get(message.topic)
    if cls is None:
        assert message.body is None
    else:
        assert type(message.body) is cls
        m.encode_body(message.body)  # what the decoder accepts, the encoder accepts
        message.body.check_buffers(message.buffers)
    json.dumps(message_to_json(message, buffers_base64=True), allow_nan=False)
    return message


@FUZZ
@given(st.lists(st.binary(max_size=300), max_size=4))
def test_fuzz_decode_arbitrary_bytes(frames: list[bytes]) -> None:
    _check_decodes_or_refuses(frames)


@FUZZ
@given(_topics, _values, st.lists(st.binary(max_size=50), max_size=2))
def test_fuzz_decode_arbitrary_msgpack_structures(topic: str, value, buffers) -> None:
    _check_decodes_or_refuses([topic.encode(), msgpack.packb(value), *buffers])
    if isinstance(value, dict):  # the same structure behind a valid envelope
        envelope = wire_samples.envelope().to_dict()
        frames = [topic.encode(), msgpack.packb({**envelope, **value}), *buffers]
        _check_decodes_or_refuses(frames)


@FUZZ
@given(st.sampled_from(range(len(_valid))), st.data())
def test_fuzz_decode_valid_messages_with_one_field_changed(index: int, data) -> None:
    frames, buffers = _valid[index]
    payload = msgpack.unpackb(frames[1])
    key = data.draw(st.sampled_from(sorted(payload)) | st.text(max_size=8), label="key")
    action = data.draw(st.sampled_from(["replace", "delete"]), label="action")
    if action == "delete":
        payload.pop(key, None)
    else:
        payload[key] = data.draw(_values, label="value")
    received = _check_decodes_or_refuses([frames[0], msgpack.packb(payload), *buffers])
    cls = m.TOPIC_TYPES[frames[0].decode()]
    required = {f.encode_name for cls_ in (cls, m.Envelope) for f in msgspec.structs.fields(cls_)
                if f.required}
    if action == "delete" and key in required:
        assert received is None, f"{cls.__name__} decoded without {key!r}"


def test_the_fuzz_strategies_reach_valid_messages_too() -> None:
    """The mutation fuzzer's starting points decode (it is not only exercising refusals)."""
    for frames, _ in _valid:
        assert _check_decodes_or_refuses(frames) is not None


# ---- fuzzing the control socket ---------------------------------------------------------------------


class _Served:
    def __init__(self) -> None:
        self.server = ControlServer(f"tcp://127.0.0.1:{free_tcp_port()}")
        self.calls: list[m.Request] = []
        self.server.register(m.Reset, lambda request: self._called(request, m.ResetReply()))
        self.server.register(m.ProfileLoad, lambda request: self._called(
            request, m.ProfileLoadReply(profile=request.name)))
        self.context = zmq.Context()
        self.req: zmq.Socket | None = None

    def _called(self, request: m.Request, reply: m.Reply) -> m.Reply:
        self.calls.append(request)
        return reply

    def ask(self, frame: bytes) -> bytes:
        if self.req is None:
            self.req = self.context.socket(zmq.REQ)
            self.req.linger = 0
            self.req.connect(self.server.endpoint)
        self.req.send(frame)
        if not self.req.poll(5000):
            self.req.close()
            self.req = None
            raise AssertionError(f"no reply to a request of {len(frame)} bytes")
        return self.req.recv()


@pytest.fixture(scope="module")
def served() -> Iterator[_Served]:
    served = _Served()
    served.server.start()
    yield served
    if served.req is not None:
        served.req.close()
    served.context.term()
    served.server.stop()


def _long_strings(value) -> Iterator[bytes]:
    """Every str / bytes in `value` longer than a reply may quote, as UTF-8 bytes."""
    if isinstance(value, str) and len(value) > MAX_QUOTED_CHARS:
        yield value.encode()
    elif isinstance(value, bytes) and len(value) > MAX_QUOTED_CHARS:
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _long_strings(key)
            yield from _long_strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _long_strings(item)


def _check_reply(reply_bytes: bytes, request_bytes: bytes, long_strings=()) -> dict:
    reply = msgpack.unpackb(reply_bytes, raw=False)
    assert isinstance(reply, dict) and isinstance(reply.get("ok"), bool), reply
    if not reply["ok"]:
        error = reply["error"]
        assert set(reply) == {"ok", "error"}
        assert isinstance(error, str) and 0 < len(error) <= MAX_ERROR_CHARS
        assert "\n" not in error and "\r" not in error  # one line
    squeezed = " ".join(reply_bytes.decode("utf-8", "replace").split())
    for text in long_strings:  # never echoed, not even with its white space squeezed
        assert text not in reply_bytes
        assert " ".join(text.decode("utf-8", "replace").split()) not in squeezed
    if len(request_bytes) > MAX_QUOTED_CHARS:
        assert request_bytes not in reply_bytes
    return reply


_long_text = st.text(min_size=MAX_QUOTED_CHARS - 4, max_size=300)
_requests = st.builds(
    lambda fixed, extra: {**extra, **fixed},
    st.fixed_dictionaries(
        {"cmd": st.sampled_from(["ping", "version", "commands", "reset", "profile.load"])
         | _long_text | _values},
        optional={"name": _values | _long_text}),
    st.dictionaries(_long_text | st.text(max_size=8) | st.integers(-3, 3),
                    _values | _long_text, max_size=3))


@FUZZ
@given(st.binary(max_size=4000))
def test_fuzz_control_arbitrary_bytes_get_an_error_reply(served: _Served, frame: bytes) -> None:
    reply = _check_reply(served.ask(frame), frame)
    if not reply["ok"]:
        assert reply["error"].startswith("malformed request") or \
            reply["error"].startswith("unknown command")


@FUZZ
@given(st.one_of(_requests, _requests, _values))
def test_fuzz_control_arbitrary_requests(served: _Served, request) -> None:
    frame = msgpack.packb(request)
    calls = len(served.calls)
    reply = _check_reply(served.ask(frame), frame, list(_long_strings(request)))
    is_map = isinstance(request, dict) and all(isinstance(k, str) for k in request)
    cmd = request.get("cmd") if is_map else None
    name = request.get("name") if is_map else None
    name_ok = name is None or (isinstance(name, str) and 1 <= len(name) <= 64)
    expected_ok = cmd in ("ping", "version", "commands", "reset") or (
        cmd == "profile.load" and name_ok)
    assert reply["ok"] is expected_ok, (request, reply)
    if cmd in ("reset", "profile.load") and expected_ok:  # the handler got its type, validated
        assert len(served.calls) == calls + 1
        assert type(served.calls[-1]) is m.REQUEST_TYPES[cmd]
        if cmd == "profile.load":
            assert served.calls[-1].name == request.get("name")
            assert reply == {"ok": True, "profile": request.get("name")}
    else:
        assert len(served.calls) == calls  # nothing malformed reaches a handler
    if not reply["ok"] and not is_map:
        assert reply["error"].startswith("malformed request")


def test_control_typed_client_and_replies(served: _Served) -> None:
    endpoint = served.server.endpoint
    assert isinstance(call(endpoint, m.Ping()), m.PingReply)
    version = call(endpoint, m.Version())
    assert isinstance(version, m.VersionReply) and version.schema == m.SCHEMA_VERSION
    commands = call(endpoint, m.Commands())
    assert set(commands.commands) == {"commands", "ping", "profile.load", "reset", "version"}
    assert call(endpoint, m.ProfileLoad(name="anna")) == m.ProfileLoadReply(profile="anna")
    assert type(served.calls[-1]) is m.ProfileLoad and served.calls[-1].name == "anna"
    wrong = msgpack.packb({"cmd": "profile.load", "name": 5})
    reply = msgpack.unpackb(served.ask(wrong))
    assert reply["ok"] is False and reply["error"].startswith("malformed request: profile.load")
    assert "Expected `str | null`, got `int`" in reply["error"]
