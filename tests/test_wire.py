"""The wire layer for real: ZeroMQ PUB/SUB and REQ/REP on 127.0.0.1, msgpack on the wire.

ZeroMQ's slow-joiner effect (a SUB socket receives nothing published before its connection and
subscription have reached the publisher) is handled honestly: tests publish a `sync` topic until
the subscriber has seen one, and only then publish what they check.
"""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Iterator

import msgpack
import numpy as np
import pytest
import zmq
import zmq.auth

import streamav
from streamav.clock import now_ns, ns_to_s
from streamav.errors import EndpointError
from streamav.wire import messages, protocol
from streamav.wire.control import ControlServer, request
from streamav.wire.protocol import SCHEMA_VERSION, Message, decode, encode
from streamav.wire.publisher import Publisher
from conftest import free_tcp_port
from streamav.wire.subscriber import Subscriber, subscribe_to_jsonl
import wire_samples

SYNC = "sync"
DEADLINE_S = 10.0


@pytest.fixture
def publisher(endpoint: str) -> Iterator[Publisher]:
    pub = Publisher(endpoint, stream_id="test-stream")
    pub.start()
    yield pub
    pub.stop()


def wait_connected(pub: Publisher, sub: Subscriber) -> None:
    """Publish `sync` until the subscriber receives one (the connection and subscription are up)."""
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        pub.publish_map(SYNC, {}, now_ns())
        message = sub.recv(timeout_s=0.02)
        if message is not None:
            return
    raise AssertionError(f"subscriber on {sub.endpoint} saw nothing within {DEADLINE_S} s")


def recv_topic(sub: Subscriber, topic: str, timeout_s: float = DEADLINE_S) -> Message:
    """The next message on `topic`, skipping leftover `sync` messages."""
    deadline = time.monotonic() + timeout_s
    while (remaining_s := deadline - time.monotonic()) > 0:
        message = sub.recv(timeout_s=remaining_s)
        if message is not None and message.topic == topic:
            return message
    raise AssertionError(f"no {topic!r} message within {timeout_s} s")


def wait_until(condition, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


# ---- protocol, no sockets --------------------------------------------------------------------


def test_encode_decode_round_trip_converts_numpy_and_writes_float64() -> None:
    frame = np.arange(64 * 64 * 3, dtype=np.uint8).reshape(64, 64, 3)
    envelope = wire_samples.envelope().to_dict()
    payload = {"p": np.array([0.25, 0.75], dtype=np.float32), "c": np.float32(0.5), "n": np.int64(3),
               "label": "happy", "found": np.bool_(True), "box": (1, 2, 3, 4)}
    frames = encode("ext.custom", {**envelope, **payload}, [frame])
    assert frames[0] == b"ext.custom"
    assert b"\xca" not in frames[1]  # no msgpack float32 anywhere
    message = decode(frames)
    assert message.topic == "ext.custom"
    assert message.payload == {**envelope, "p": [0.25, 0.75], "c": 0.5, "n": 3, "label": "happy",
                               "found": True, "box": [1, 2, 3, 4]}
    assert message.buffers == (frame.tobytes(),)
    assert message.body is None  # not a topic of the protocol: no type


def test_encode_rejects_what_msgpack_cannot_write() -> None:
    with pytest.raises(TypeError, match="set"):
        encode("emotion", {"x": {1, 2}})
    with pytest.raises(TypeError, match="keys are str"):
        encode("emotion", {1: "x"})
    with pytest.raises(TypeError, match=r"keys are str.*probs\.0"):
        encode("emotion", {"probs": {0: 0.5}})


def test_decode_rejects_non_messages() -> None:
    with pytest.raises(ValueError, match="at least 2 frames"):
        decode([b"emotion"])
    with pytest.raises(ValueError, match="not valid msgpack"):
        decode([b"emotion", b"\xc1"])
    with pytest.raises(ValueError, match="not a map"):
        decode([b"emotion", msgpack.packb([1, 2])])


@pytest.mark.parametrize(
    ("endpoint", "loopback"),
    [("tcp://127.0.0.1:5555", True), ("tcp://127.3.2.1:5555", True), ("tcp://localhost:5555", True),
     ("tcp://[::1]:5555", True), ("ipc:///tmp/streamav", True), ("inproc://streamav", True),
     ("tcp://0.0.0.0:5555", False), ("tcp://*:5555", False), ("tcp://eth0:5555", False),
     ("tcp://192.168.1.20:5555", False), ("tcp://[::]:5555", False)],
)
def test_loopback_policy(endpoint: str, loopback: bool) -> None:
    assert protocol.is_loopback_endpoint(endpoint) is loopback


def test_publish_drops_and_counts_when_the_queue_is_full() -> None:
    pub = Publisher(f"tcp://127.0.0.1:{free_tcp_port()}", queue_size=4)  # not started: nothing drains
    results = [pub.publish(wire_samples.emotion(i), now_ns()) for i in range(3)]
    results += [pub.publish_map("tick", {"i": i}, now_ns()) for i in range(3)]
    assert results == [True] * 4 + [False] * 2
    assert pub.dropped_queue_full == 2
    with pytest.raises(ValueError, match="reserved"):
        pub.publish_map("tick", {"seq": 1}, now_ns())
    with pytest.raises(TypeError):
        pub.publish_map("tick", {"x": object()}, now_ns())
    with pytest.raises(ValueError, match="protocol topic.*messages.Emotion"):
        pub.publish_map("emotion", {"top": "happy"}, now_ns())  # the protocol's topics are typed
    with pytest.raises(TypeError, match="publish_map"):
        pub.publish("emotion", {"top": "happy"}, now_ns())  # type: ignore[arg-type]
    video, pixels = wire_samples.denoised()
    with pytest.raises(ValueError, match="raw buffer"):
        pub.publish(video, now_ns())  # video.denoised without its pixels
    with pytest.raises(ValueError, match="12288 bytes, not 3"):
        pub.publish(video, now_ns(), [b"abc"])
    with pytest.raises(ValueError, match="not a valid message.*probs"):
        pub.publish(messages.Emotion(labels=("a",), probs=("x",), top="a", confidence=1.0,
                                     uncertain=False, baseline_s=None, profile=None,
                                     frame_seq=0), now_ns())
    assert pub.dropped_queue_full == 2  # what raised was never queued
    pub.stop()
    assert pub.dropped_at_stop == 4


# ---- PUB/SUB on 127.0.0.1 ----------------------------------------------------------------------


def test_round_trip_with_raw_buffer_and_envelope(publisher: Publisher, endpoint: str) -> None:
    with Subscriber(endpoint, topics=("video.denoised", "emotion", SYNC)) as sub:
        wait_connected(publisher, sub)
        rng = np.random.default_rng(0)
        frames = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(3)]
        t_capture_ns = [now_ns() for _ in frames]
        sent = [wire_samples.emotion(i) for i in range(3)]
        for i, (frame, t_ns) in enumerate(zip(frames, t_capture_ns)):
            assert publisher.publish(messages.VideoDenoised(width=64, height=64, frame_seq=i), t_ns, [frame])
            frame[:] = 0  # the caller may reuse its array at once: publish() copied it
            assert publisher.publish(sent[i], t_ns)

        received = {"video.denoised": [], "emotion": []}
        while len(received["video.denoised"]) < 3 or len(received["emotion"]) < 3:
            message = sub.recv(timeout_s=DEADLINE_S)
            assert message is not None
            if message.topic in received:
                received[message.topic].append(message)
        rng = np.random.default_rng(0)
        for i, message in enumerate(received["video.denoised"]):
            expected = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
            image = np.frombuffer(message.buffers[0], dtype=np.uint8).reshape(message.payload["height"], message.payload["width"], 3)
            assert np.array_equal(image, expected)
            assert message.payload["frame_seq"] == i
            assert message.body == messages.VideoDenoised(width=64, height=64, format="rgb24", frame_seq=i)
        for topic, got in received.items():
            assert [m.seq for m in got] == [0, 1, 2]  # per topic, from 0
            for message, t_ns in zip(got, t_capture_ns):
                assert message.schema == SCHEMA_VERSION
                assert message.stream == "test-stream"
                assert isinstance(message.t_capture_s, float)
                assert message.t_capture_s == ns_to_s(t_ns)
                assert message.t_capture_s <= message.t_publish_s <= ns_to_s(now_ns())
        # rounded on the wire (5 decimals), and only there: the message sent keeps full precision
        body = received["emotion"][0].body
        assert isinstance(body, messages.Emotion)
        assert body.confidence == 0.61235 and sent[0].confidence == 0.6123456789
        assert body.probs == (0.12922, 0.61235, 0.12922, 0.12922)
        assert body.baseline_s == 12.35 and body.labels == wire_samples.LABELS
        assert sub.dropped == 0
    assert publisher.published >= 6
    assert publisher.latency.count == publisher.published


def test_on_sent_hook_sees_every_sent_message(endpoint: str) -> None:
    sent: list[tuple[str, int, int, int]] = []
    pub = Publisher(endpoint)
    pub.on_sent = lambda *args: sent.append(args)
    t_capture_ns = now_ns()
    pub.publish(wire_samples.emotion(), t_capture_ns)
    pub.start()
    pub.stop()
    assert len(sent) == 1
    topic, t_cap_ns, t_enqueue_ns, t_sent_ns = sent[0]
    assert (topic, t_cap_ns) == ("emotion", t_capture_ns)
    assert t_capture_ns <= t_enqueue_ns <= t_sent_ns


def test_slow_subscriber_does_not_block_the_publisher_and_sees_the_drops(endpoint: str) -> None:
    n = 20_000
    blob = bytes(4096)  # 80 MB in all: far more than the high-water marks and the TCP buffers hold
    pub = Publisher(endpoint, queue_size=n + 100, send_hwm=10)
    pub.start()
    try:
        with Subscriber(endpoint, topics=("bulk", SYNC), rcv_hwm=10) as sub:
            wait_connected(pub, sub)

            def produce() -> None:
                for i in range(n):
                    pub.publish_map("bulk", {"i": i}, now_ns(), [blob])

            producer = threading.Thread(target=produce)
            producer.start()
            producer.join(timeout=60)
            assert not producer.is_alive()
            wait_until(lambda: pub.published + pub.dropped_send >= n + 1, timeout_s=60)  # + sync
            assert pub.dropped_queue_full == 0

            seqs = []
            while (message := sub.recv(timeout_s=0.5)) is not None:
                if message.topic == "bulk":
                    seqs.append(message.seq)
            assert seqs, "the subscriber received nothing"
            assert seqs == sorted(seqs)
            dropped = sub.dropped_by_topic.get("bulk", 0)
            assert dropped > 0
            assert len(seqs) + dropped == seqs[-1] - seqs[0] + 1
    finally:
        pub.stop()


def test_late_joiner_receives_from_then_on_without_counting_drops(publisher: Publisher, endpoint: str) -> None:
    running = threading.Event()
    running.set()

    def tick() -> None:
        while running.is_set():
            publisher.publish_map("tick", {}, now_ns())
            time.sleep(0.001)

    ticker = threading.Thread(target=tick)
    ticker.start()
    try:
        wait_until(lambda: publisher.published > 50, timeout_s=DEADLINE_S)
        with Subscriber(endpoint, topics="tick") as sub:  # a plain str is one topic
            seqs = [recv_topic(sub, "tick").seq for _ in range(20)]
        assert seqs[0] > 0
        assert seqs == list(range(seqs[0], seqs[0] + 20))
        assert sub.dropped == 0
    finally:
        running.clear()
        ticker.join()


def test_stop_sends_what_is_still_queued(endpoint: str) -> None:
    pub = Publisher(endpoint)
    pub.start()
    with Subscriber(endpoint, topics=("last", SYNC)) as sub:
        wait_connected(pub, sub)
        for i in range(100):
            pub.publish_map("last", {"i": i}, now_ns())
        pub.stop()
        assert pub.publish_map("last", {}, now_ns()) is False
        seqs = [recv_topic(sub, "last", timeout_s=2.0).seq for _ in range(100)]
    assert seqs == list(range(100))
    assert pub.dropped == 1  # the one published after stop


def test_endpoint_in_use_is_a_clear_endpoint_error(publisher: Publisher, endpoint: str) -> None:
    second = Publisher(endpoint)
    with pytest.raises(EndpointError, match=f"{endpoint} is already in use"):
        second.start()
    with pytest.raises(EndpointError, match="already in use"):
        ControlServer(endpoint).start()


def test_non_loopback_bind_without_keys_is_refused() -> None:
    for endpoint in (f"tcp://0.0.0.0:{free_tcp_port()}", f"tcp://*:{free_tcp_port()}"):
        with pytest.raises(EndpointError, match="CURVE"):
            Publisher(endpoint).start()
        with pytest.raises(EndpointError, match="CURVE"):
            ControlServer(endpoint).start()


def test_curve_round_trip(tmp_path, endpoint: str) -> None:
    """CURVE without a client allow-list ("any"): encrypted, the server authenticated; the
    allow-list itself is tested in test_wire_auth.py."""
    public_file, secret_file = zmq.auth.create_certificates(tmp_path, "server")
    with pytest.raises(EndpointError, match="only a public key"):
        Publisher(endpoint, curve_secret_key_file=public_file).start()
    with pytest.raises(EndpointError, match="allow-list .* does not exist"):
        Publisher(endpoint, curve_secret_key_file=secret_file).start()
    with Publisher(endpoint, curve_secret_key_file=secret_file, curve_client_keys="any") as pub:
        with Subscriber(endpoint, topics=("emotion", SYNC), curve_server_public_key_file=public_file) as sub:
            wait_connected(pub, sub)
            pub.publish(wire_samples.emotion(top="sad"), now_ns())
            assert recv_topic(sub, "emotion").body.top == "sad"
        # A plain (non-CURVE) subscriber gets nothing.
        with Subscriber(endpoint, topics=SYNC) as plain:
            for _ in range(10):
                pub.publish_map(SYNC, {}, now_ns())
            assert plain.recv(timeout_s=0.3) is None


# ---- subscribe_to_jsonl ------------------------------------------------------------------------


@pytest.mark.parametrize("buffers_base64", [False, True])
def test_subscribe_to_jsonl_prints_json_lines(publisher: Publisher, endpoint: str, buffers_base64: bool) -> None:
    out = io.StringIO()
    printed: list[int] = []
    worker = threading.Thread(
        target=lambda: printed.append(
            subscribe_to_jsonl(endpoint, ["ext.face"], 3, out, timeout_s=DEADLINE_S, buffers_base64=buffers_base64)
        )
    )
    worker.start()
    i = 0
    while worker.is_alive():  # publish until the subscriber has what it wants (slow joiner)
        publisher.publish_map("ext.face", {"found": True, "box": [1, 2, 3, 4], "score": float("nan")}, now_ns(), [b"abc"])
        i += 1
        time.sleep(0.005)
    worker.join()
    assert printed == [3]
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(lines) == 3
    for line in lines:
        assert line["topic"] == "ext.face"
        assert line["found"] is True and line["box"] == [1, 2, 3, 4]
        assert line["score"] is None  # NaN is not JSON
        assert {"schema", "stream", "seq", "t_capture", "t_publish"} <= line.keys()
        expected = {"bytes": 3, "base64": "YWJj"} if buffers_base64 else {"bytes": 3}
        assert line["buffers"] == [expected]
    assert [line["seq"] for line in lines] == sorted(line["seq"] for line in lines)


def test_subscribe_to_jsonl_stops_when_nothing_arrives_for_timeout_s(endpoint: str) -> None:
    out = io.StringIO()
    assert subscribe_to_jsonl(endpoint, ("",), None, out, timeout_s=0.2) == 0
    assert out.getvalue() == ""


# ---- control socket ----------------------------------------------------------------------------


@pytest.fixture
def control() -> Iterator[ControlServer]:
    server = ControlServer(f"tcp://127.0.0.1:{free_tcp_port()}")
    server.start()
    yield server
    server.stop()


def test_control_ping_version_and_registered_commands(control: ControlServer) -> None:
    reply = request(control.endpoint, "ping")
    assert reply["ok"] is True
    assert abs(reply["t_monotonic"] - ns_to_s(now_ns())) < 5.0
    assert abs(reply["t_wall"] - time.time()) < 5.0
    assert request(control.endpoint, "version") == {
        "ok": True, "version": streamav.__version__, "schema": SCHEMA_VERSION
    }
    control.register("echo", lambda args: {"args": args})
    assert request(control.endpoint, "echo", x=1, name="a") == {"ok": True, "args": {"x": 1, "name": "a"}}
    control.register("nothing", lambda args: None)
    assert request(control.endpoint, "nothing") == {"ok": True}
    assert "echo" in request(control.endpoint, "commands")["commands"]
    with pytest.raises(ValueError, match="built-in"):
        control.register("ping", lambda args: None)


def test_control_unknown_failing_and_malformed_requests(control: ControlServer) -> None:
    reply = request(control.endpoint, "fly")
    assert reply["ok"] is False
    assert reply["error"].startswith("unknown command fly; known: ")
    assert "ping" in reply["error"] and "version" in reply["error"]

    def broken(args):
        raise RuntimeError("no recording running")

    control.register("record.stop", broken)
    reply = request(control.endpoint, "record.stop")
    assert reply == {"ok": False, "error": "record.stop failed: no recording running"}
    control.register("bad.reply", lambda args: {"value": {1, 2}})
    assert request(control.endpoint, "bad.reply")["ok"] is False

    context = zmq.Context()
    try:
        for frames in ([b"\xc1"], [msgpack.packb([1, 2])], [msgpack.packb({"x": 1})],
                       [msgpack.packb({"cmd": 5})], [b"a", b"b"]):
            req = context.socket(zmq.REQ)
            req.linger = 0
            req.connect(control.endpoint)
            req.send_multipart(frames)
            assert req.poll(int(DEADLINE_S * 1000)), f"no reply to {frames!r}"
            reply = msgpack.unpackb(req.recv(), raw=False)
            assert reply["ok"] is False and reply["error"].startswith("malformed request"), reply
            req.close()
    finally:
        context.term()
    assert request(control.endpoint, "ping")["ok"] is True  # still alive


def test_control_request_without_server_times_out_with_endpoint_error() -> None:
    endpoint = f"tcp://127.0.0.1:{free_tcp_port()}"
    with pytest.raises(EndpointError, match="no reply"):
        request(endpoint, "ping", timeout_s=0.2)
