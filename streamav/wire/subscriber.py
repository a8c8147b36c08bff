"""The Python subscriber client: receive streamav messages, count what was lost, print JSON lines.

Example (another program reading emotion events)::

    from streamav.wire.subscriber import Subscriber

    with Subscriber("tcp://127.0.0.1:5555", topics=("emotion.change",)) as sub:
        for msg in sub:  # blocks; use sub.recv(timeout_s=...) to poll instead
            print(msg.body.to, msg.t_capture_s, sub.dropped)  # body: an EmotionChange

Every message of a topic the protocol defines arrives with its typed body
(streamav.wire.messages), validated; what is not a valid message of this schema is skipped and
counted in `malformed`.

Losses are detected from gaps in `seq`, which the publisher numbers per exact topic and per
stream: `dropped` is the total, `dropped_by_topic` the same per topic. The first message seen from
a (stream, topic) pair counts no drops (a late joiner has missed nothing it could know of), and a
`seq` that goes backwards (the publisher restarted under the same stream id) restarts counting.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

import zmq

from streamav.wire import protocol
from streamav.wire.protocol import Message

log = logging.getLogger(__name__)

DEFAULT_SUB_ENDPOINT = "tcp://127.0.0.1:5555"


class Subscriber:
    """A SUB socket connected to a streamav publisher, with drop accounting.

    `topics` are prefixes ("" = everything; "emotion" also matches "emotion.change"); a single
    str is taken as one topic. `rcv_hwm` is how many messages may wait here before ZeroMQ drops
    new ones. `curve_server_public_key_file` is the publisher's public key file (`server.key`)
    when it binds with CURVE, and `curve_client_secret_key_file` this client's own key pair
    (`NAME.key_secret` from `streamav keys --client NAME`), which a publisher with a client
    allow-list requires: a client it refuses receives nothing. Not thread-safe: use one
    Subscriber per thread.

    Counters: `received` (valid messages returned), `dropped`, `dropped_by_topic`, `malformed`
    (multipart messages that were not streamav messages; skipped with a warning).
    """

    def __init__(
        self,
        endpoint: str = DEFAULT_SUB_ENDPOINT,
        topics: Iterable[str] | str = ("",),
        rcv_hwm: int = 1000,
        curve_server_public_key_file: Path | None = None,
        curve_client_secret_key_file: Path | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.topics: tuple[str, ...] = (topics,) if isinstance(topics, str) else tuple(topics)
        self.received = 0
        self.dropped = 0
        self.dropped_by_topic: dict[str, int] = {}
        self.malformed = 0
        self._last_seq: dict[tuple[str, str], int] = {}
        self._context = zmq.Context()
        self._socket = self._context.socket(zmq.SUB)
        try:
            self._socket.rcvhwm = rcv_hwm
            self._socket.linger = 0
            protocol.secure_client(self._socket, curve_server_public_key_file,
                                   curve_client_secret_key_file)
            for topic in self.topics:
                self._socket.setsockopt(zmq.SUBSCRIBE, topic.encode("utf-8"))
            protocol.connect(self._socket, endpoint)
        except BaseException:
            self.close()
            raise

    def recv(self, timeout_s: float | None = None) -> Message | None:
        """The next message, or None if none arrived within `timeout_s` (None: wait forever)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            remaining_ms = None if deadline is None else max(0, int((deadline - time.monotonic()) * 1000))
            if not self._socket.poll(remaining_ms, zmq.POLLIN):
                return None
            frames = self._socket.recv_multipart(copy=True)
            try:
                message = protocol.decode(frames)
            except ValueError as exc:
                self.malformed += 1
                if self.malformed == 1 or self.malformed % 1000 == 0:
                    log.warning("skipped %d malformed message(s) from %s: %s", self.malformed, self.endpoint, exc)
                continue
            self._account(message)
            self.received += 1
            return message

    def __iter__(self) -> Iterator[Message]:
        """Every message, blocking, forever: leave the loop with `break`."""
        while True:
            message = self.recv()
            if message is not None:
                yield message

    def _account(self, message: Message) -> None:
        seq, stream = message.seq, message.stream
        if not isinstance(seq, int) or isinstance(seq, bool):
            return
        key = (str(stream), message.topic)
        last = self._last_seq.get(key)
        self._last_seq[key] = seq
        if last is None or seq <= last:  # first from this stream and topic, or a restart
            return
        gap = seq - last - 1
        if gap > 0:
            self.dropped += gap
            self.dropped_by_topic[message.topic] = self.dropped_by_topic.get(message.topic, 0) + gap

    def close(self) -> None:
        """Close the socket and its context. Idempotent."""
        if not self._socket.closed:
            self._socket.close(linger=0)
        if not self._context.closed:
            self._context.term()

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# ---- JSON lines (`streamav subscribe`) ---------------------------------------------------------


def _jsonable(value: Any) -> Any:
    """msgpack values as JSON values: bytes as base64 text, NaN and infinities as null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def message_to_json(message: Message, buffers_base64: bool = False) -> dict[str, Any]:
    """One message as the object `streamav subscribe` prints.

    {"topic": ..., <every field of the map, envelope included>, "buffers": [{"bytes": n}, ...]};
    with `buffers_base64`, each buffer entry also has "base64": the buffer's bytes.
    """
    line: dict[str, Any] = {"topic": message.topic}
    line.update(_jsonable(message.payload))
    buffers = []
    for buffer in message.buffers:
        entry: dict[str, Any] = {"bytes": len(buffer)}
        if buffers_base64:
            entry["base64"] = base64.b64encode(buffer).decode("ascii")
        buffers.append(entry)
    line["buffers"] = buffers
    return line


def subscribe_to_jsonl(
    endpoint: str,
    topics: Iterable[str] | str,
    count: int | None,
    out: TextIO,
    timeout_s: float | None = None,
    buffers_base64: bool = False,
    curve_server_public_key_file: Path | None = None,
    curve_client_secret_key_file: Path | None = None,
    streams: Iterable[str] = (),
) -> int:
    """Print messages as JSON lines on `out` (one object per line, flushed); return how many.

    Stops after `count` messages (None: no limit), or when no message has arrived for
    `timeout_s` seconds (None: wait forever). The line format is `message_to_json`'s.
    `streams`: print only the messages of these stream ids (the envelope's `stream`; a
    many-stream `streamav live` publishes several on one socket); empty: every stream. `count`
    and `timeout_s` count the printed messages only.
    """
    wanted = frozenset(streams)
    printed = 0
    with Subscriber(endpoint, topics, curve_server_public_key_file=curve_server_public_key_file,
                    curve_client_secret_key_file=curve_client_secret_key_file) as sub:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while count is None or printed < count:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            message = sub.recv(timeout_s=left)
            if message is None:
                break
            if wanted and message.stream not in wanted:
                continue
            if timeout_s is not None:
                deadline = time.monotonic() + timeout_s
            out.write(json.dumps(message_to_json(message, buffers_base64), allow_nan=False) + "\n")
            out.flush()
            printed += 1
    return printed
