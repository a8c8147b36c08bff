"""The publisher: takes results from the worker without ever blocking it, and sends them on a PUB socket.

`publish()` (any thread; in production the worker) encodes a typed message (one of
streamav/wire/messages.py's; `publish_map()`: a plain map on a topic of a program's own),
copies the raw buffers, reserves the topic's next `seq` and puts the message on a bounded
queue with `put_nowait`; a full queue drops the message and counts it. One publisher thread owns the socket:
it takes messages off the queue, writes the envelope (`schema`, `stream`, `seq`, `t_capture`,
`t_publish`) and sends with `zmq.NOBLOCK`.

The socket is an XPUB (to subscribers exactly a PUB) so that the thread also sees what peers
send it, subscriptions, and keeps them bounded (streamav/wire/limits.py): between two sends it
reads the subscription notifications, and a peer that sends more than `MAX_SUBSCRIPTIONS`
distinct ones, an oversized one or anything else makes it reset the socket (and, with CURVE,
refuse that client from then on).

Why `seq` is reserved in `publish()` and not when sending: a message dropped on a full queue then
leaves a gap in its topic's sequence, so subscribers see every loss after the result was
produced (queue full, send refused, high-water mark), not only the losses on the network side.

Non-loopback endpoints need CURVE keys; make them once with

    streamav keys --dir keys --client NAME

which writes keys/server.key (public: give it to subscribers), keys/server.key_secret (pass it
as `curve_secret_key_file`) and a key pair per client whose public half goes into keys/clients/,
the allow-list of clients that may connect (`curve_client_keys`). See docs/protocol.md.
"""

from __future__ import annotations

import logging
import os
import queue
import secrets
import socket as _socket
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import zmq

from streamav.clock import NS_PER_S, now_ns, ns_to_s
from streamav.errors import EndpointError
from streamav.latency import LatencyHistogram
from streamav.wire import protocol
from streamav.wire.auth import user_id
from streamav.wire.limits import (DATA_MAX_INBOUND_BYTES, DATA_MAX_INBOUND_PER_CHECK,
                                  DATA_RCVHWM, MAX_SUBSCRIPTIONS, SubscriptionLedger)
from streamav.wire.listener import Listener, ListenerCounters
from streamav.wire.messages import Envelope, TopicMessage
from streamav.wire.protocol import SCHEMA_VERSION, Buffer, PackedPayload

log = logging.getLogger(__name__)

DEFAULT_PUB_ENDPOINT = "tcp://127.0.0.1:5555"
_POLL_S = 0.05  # how often the idle publisher thread looks at the stop flag
_LINGER_MS = 500  # at most this long to flush the socket's own queue on close
_START_TIMEOUT_S = 10.0


def default_stream_id() -> str:
    """A stream id unique to this run: host, process id and a random suffix (e.g. "lab-pc-4242-9f3a1c")."""
    return f"{_socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


@dataclass(frozen=True)
class _Outgoing:
    topic: str
    seq: int
    payload: PackedPayload | bytes  # bytes: a whole message map, envelope included (replay)
    buffers: tuple[bytes, ...]
    t_capture_ns: int
    t_enqueue_ns: int
    stream: str | None = None  # None: the publisher's stream_id


class Publisher(ListenerCounters):
    """The PUB side of the wire. Use as a context manager, or `start()` ... `stop()`.

    Counters (read them from any thread): `published` (sent), `dropped_queue_full` (publish()
    found the queue full), `dropped_send` (the socket refused the message, or there was none
    bound for a moment after a reset), `dropped_at_stop` (still queued when stop() ran out of
    time, or published after stop), `socket_resets` (the socket was closed and bound again
    because a peer broke the subscription limits), and `latency`, the enqueue-to-sent time
    ("publish" stage). Note that a PUB socket drops silently for a subscriber whose high-water
    mark is reached: those drops are seen only by the subscriber, as `seq` gaps.

    `curve_client_keys`: with `curve_secret_key_file`, the folder of the client public keys
    allowed to connect (default: `clients/` beside the secret key file), or "any" (no
    allow-list). `max_subscriptions`: distinct subscriptions the socket holds at most.

    `on_sent`, if set, is called in the publisher thread after each successful send as
    `on_sent(topic, t_capture_ns, t_enqueue_ns, t_sent_ns)`; set it before start() to see every
    message. It must be quick and must not call back into the publisher; an exception from it is
    logged once and otherwise ignored. `on_sent_by_stream[stream]`, when set, is called instead
    for the messages published with that `stream` (a many-stream run: each stream's own
    latencies).

    `on_message`, if set, is called in the publisher thread with every message it takes off
    the queue, as `on_message(frames, t_publish_ns)` (the multipart frames as they are sent,
    envelope included), whether or not the socket then accepts it: `streamav live --record`
    logs the stream with it. The same rules apply as for `on_sent`.

    `publish_raw()` sends a message whose map already holds its envelope (`streamav replay`).
    `subscriptions_seen` counts the subscriptions peers have made (a first subscriber has
    connected once it is > 0).
    """

    def __init__(
        self,
        endpoint: str = DEFAULT_PUB_ENDPOINT,
        stream_id: str | None = None,
        queue_size: int = 512,
        send_hwm: int = 1000,
        curve_secret_key_file: Path | None = None,
        curve_client_keys: Path | str | None = None,
        max_subscriptions: int = MAX_SUBSCRIPTIONS,
    ) -> None:
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        self.endpoint = endpoint
        self.stream_id = stream_id if stream_id is not None else default_stream_id()
        self.queue_size = queue_size
        self.send_hwm = send_hwm
        self.curve_secret_key_file = curve_secret_key_file
        self.curve_client_keys = curve_client_keys
        self.published = 0
        self.dropped_queue_full = 0
        self.dropped_send = 0
        self.dropped_at_stop = 0
        self.latency = LatencyHistogram()
        self._queue: queue.Queue[_Outgoing] = queue.Queue(maxsize=queue_size)
        self._next_seq: dict[tuple[str, str], int] = {}
        self._enqueue_lock = threading.Lock()  # seq reservation + put, so queue order == seq order
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._start_error: BaseException | None = None
        self._stopping = threading.Event()
        self._stop_deadline_ns = 0
        self._closed = False
        self._send_error_logged = False
        self._hook_error_logged = False
        self.on_sent: Callable[[str, int, int, int], None] | None = None
        self.on_sent_by_stream: dict[str, Callable[[str, int, int, int], None]] = {}
        self.on_message: Callable[[list[bytes], int], None] | None = None
        self.subscriptions_seen = 0
        self._subscriptions = SubscriptionLedger(max_subscriptions=max_subscriptions)
        self._listener: Listener | None = None

    def set_on_sent(self, callback: Callable[[str, int, int, int], None] | None,
                    stream: str | None = None) -> None:
        """`on_sent` (stream None), or `on_sent_by_stream[stream]`; None removes it."""
        if stream is None:
            self.on_sent = callback
        elif callback is None:
            self.on_sent_by_stream.pop(stream, None)
        else:
            self.on_sent_by_stream[stream] = callback

    # ---- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Bind the PUB socket (in the publisher thread) and start sending.

        Raises EndpointError here, in the caller's thread, if the endpoint cannot be bound.
        """
        if self._thread is not None:
            raise RuntimeError("Publisher.start() called twice")
        self._thread = threading.Thread(target=self._run, name="streamav-publisher", daemon=True)
        self._thread.start()
        if not self._ready.wait(_START_TIMEOUT_S):
            raise EndpointError(f"binding {self.endpoint} did not finish within {_START_TIMEOUT_S} s")
        if self._start_error is not None:
            self._thread.join()
            self._closed = True
            raise self._start_error

    def stop(self, timeout_s: float = 2.0) -> None:
        """Send what is still queued (for at most `timeout_s`), then close the socket and join.

        Messages still queued at the deadline are counted in `dropped_at_stop`. Idempotent.
        """
        with self._enqueue_lock:
            self._closed = True
        if self._thread is None:  # never started: nothing will send what was queued
            self._drop_remaining()
            return
        self._stop_deadline_ns = now_ns() + int(timeout_s * NS_PER_S)
        self._stopping.set()
        self._thread.join(timeout_s + _LINGER_MS / 1000 + 1.0)
        if self._thread.is_alive():
            log.warning("publisher thread did not end within %.1f s", timeout_s)

    def __enter__(self) -> Publisher:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ---- the caller's side ----------------------------------------------------------------------

    def publish(self, message: TopicMessage, t_capture_ns: int,
                buffers: Iterable[Buffer] = (), stream: str | None = None) -> bool:
        """Queue one typed message (streamav.wire.messages: Face, Emotion, ...) on its topic;
        never blocks. Returns False if it was dropped (queue full, stopped).

        `t_capture_ns` is the monotonic capture time (`streamav.clock.now_ns()`) of the data the
        result derives from. `buffers` (the raw buffers the message describes, e.g.
        `video.denoised`'s pixels) are copied here, so the caller may reuse its arrays at once;
        the message is encoded here too (rounded and validated), so an invalid one raises
        TypeError or ValueError in the caller's thread.

        `stream`: the envelope's stream id for this message (None: the publisher's
        `stream_id`); each (stream, topic) has its own `seq`. A many-stream run publishes
        every stream's messages on one socket this way (streamav.multi_live).
        """
        if not isinstance(message, TopicMessage) or not message.TOPIC:
            raise TypeError(f"publish() takes a streamav.wire.messages type, not "
                            f"{type(message).__qualname__} (a topic of your own: publish_map)")
        frames = tuple(protocol.buffer_to_bytes(b) for b in buffers)
        message.check_buffers(frames)
        return self._enqueue(message.TOPIC, protocol.pack_message(message), frames, t_capture_ns,
                             stream)

    def publish_map(self, topic: str, payload: Mapping[str, Any], t_capture_ns: int,
                    buffers: Iterable[Buffer] = ()) -> bool:
        """Queue a plain map on a topic that is not one of the protocol's (an extension of a
        program's own; the protocol's topics are sent as their types with `publish`). Same
        rules as `publish`: never blocks, serialized here (TypeError for what msgpack cannot
        write, ValueError for a reserved field name)."""
        if not isinstance(topic, str) or not topic:
            raise ValueError(f"a topic is a non-empty str, not {topic!r}")
        if topic in protocol.TOPIC_TYPES:
            raise ValueError(f"{topic!r} is a protocol topic: publish a "
                             f"streamav.wire.messages.{protocol.TOPIC_TYPES[topic].__name__}")
        packed = protocol.pack_payload(payload)
        frames = tuple(protocol.buffer_to_bytes(b) for b in buffers)
        return self._enqueue(topic, packed, frames, t_capture_ns)

    def _enqueue(self, topic: str, packed: PackedPayload, frames: tuple[bytes, ...],
                 t_capture_ns: int, stream: str | None = None) -> bool:
        key = (stream or self.stream_id, topic)  # seq counts per stream and topic, as sent
        with self._enqueue_lock:
            seq = self._next_seq.get(key, 0)
            self._next_seq[key] = seq + 1
            if self._closed:
                self.dropped_at_stop += 1
                return False
            item = _Outgoing(topic, seq, packed, frames, int(t_capture_ns), now_ns(), stream)
            try:
                self._queue.put_nowait(item)
            except queue.Full:
                self.dropped_queue_full += 1
                return False
        return True

    def skip(self, topic: str, stream: str | None = None, count: int = 1) -> None:
        """Reserve `count` seqs of (stream, topic) without sending anything: results lost before
        they reached this publisher (a `streamav serve` replica that died with a frame in hand)
        leave the same gap in `seq` as a message dropped here (docs/scaling.md)."""
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        key = (stream or self.stream_id, topic)
        with self._enqueue_lock:
            self._next_seq[key] = self._next_seq.get(key, 0) + count

    def publish_raw(self, topic: str, body: bytes, buffers: Iterable[bytes] = (),
                    t_capture_ns: int = 0, timeout_s: float | None = 0.0) -> bool:
        """Queue a message whose msgpack map `body` is complete, envelope included, to be sent
        as it is (a logged message replayed). `timeout_s`: how long to wait for room in the
        queue (0: never wait, None: as long as it takes). Returns False if it was dropped."""
        if not isinstance(topic, str) or not topic:
            raise ValueError(f"a topic is a non-empty str, not {topic!r}")
        item = _Outgoing(topic, -1, bytes(body), tuple(bytes(b) for b in buffers),
                         int(t_capture_ns), now_ns())
        with self._enqueue_lock:  # the same counters publish() and stop() touch
            if self._closed:
                self.dropped_at_stop += 1
                return False
        try:  # not under the lock: a replay may wait here for room
            if timeout_s == 0:
                self._queue.put_nowait(item)
            else:
                self._queue.put(item, timeout=timeout_s)
        except queue.Full:
            with self._enqueue_lock:
                self.dropped_queue_full += 1
            return False
        return True

    @property
    def dropped(self) -> int:
        """Every message this publisher knows it lost (not the silent high-water-mark drops)."""
        return self.dropped_queue_full + self.dropped_send + self.dropped_at_stop

    def counters(self) -> dict[str, int]:
        return {
            "published": self.published,
            "dropped_queue_full": self.dropped_queue_full,
            "dropped_send": self.dropped_send,
            "dropped_at_stop": self.dropped_at_stop,
            "queued": self._queue.qsize(),
            "socket_resets": self.socket_resets,
        }

    # ---- the publisher thread -------------------------------------------------------------------

    def _run(self) -> None:
        listener = Listener(
            zmq.XPUB, self.endpoint,
            {zmq.SNDHWM: self.send_hwm, zmq.RCVHWM: DATA_RCVHWM,
             zmq.MAXMSGSIZE: DATA_MAX_INBOUND_BYTES},
            curve_secret_key_file=self.curve_secret_key_file,
            curve_client_keys=self.curve_client_keys, role="publisher")
        self._listener = listener
        try:
            try:
                listener.open()
            except BaseException as exc:  # reported to start() in the caller's thread
                self._start_error = exc
                return
            finally:
                self._ready.set()
            self._send_loop(listener)
        finally:
            remaining_ms = max(0, (self._stop_deadline_ns - now_ns()) // 1_000_000)
            listener.close(min(_LINGER_MS, remaining_ms) if self._stopping.is_set() else 0)

    def _send_loop(self, listener: Listener) -> None:
        while True:
            self._read_inbound(listener)
            try:
                item = self._queue.get(timeout=_POLL_S)
            except queue.Empty:
                if self._stopping.is_set():
                    return
                continue
            self._send(listener.ensure(), item)
            if self._stopping.is_set() and now_ns() > self._stop_deadline_ns:
                self._drop_remaining()
                return

    def _read_inbound(self, listener: Listener) -> None:
        """Read what peers sent (subscription notifications); reset the socket on abuse.

        ZeroMQ applies a peer's subscriptions to its trie in this thread, when this socket is
        used, and reports each new distinct one here: checking between two sends bounds the
        trie before it can grow far.
        """
        sock = listener.ensure()
        if sock is None:
            return
        for _ in range(DATA_MAX_INBOUND_PER_CHECK):
            try:
                frame = sock.recv(flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            except zmq.ZMQError:
                return
            problem = self._subscriptions.note(frame.bytes, frame.more)
            if problem is None and frame.bytes[:1] == b"\x01":
                self.subscriptions_seen += 1
            if problem is not None:
                self._subscriptions.clear()
                listener.reset(problem, offender=user_id(frame))
                return

    def _drop_remaining(self) -> None:
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                return
            with self._enqueue_lock:  # publish() after stop counts here too
                self.dropped_at_stop += 1

    def _send(self, sock: zmq.Socket | None, item: _Outgoing) -> None:
        t_publish_ns = now_ns()
        if isinstance(item.payload, bytes):  # replayed: the map holds its envelope already
            body = item.payload
        else:
            envelope = Envelope(schema=SCHEMA_VERSION, stream=item.stream or self.stream_id,
                                seq=item.seq,
                                t_capture=ns_to_s(item.t_capture_ns),
                                t_publish=ns_to_s(t_publish_ns))
            body = protocol.pack_map(envelope, item.payload)
        frames: list[bytes] = [item.topic.encode("utf-8"), body]
        frames.extend(item.buffers)
        if self.on_message is not None:
            try:
                self.on_message(frames, t_publish_ns)
            except Exception:
                if not self._hook_error_logged:
                    self._hook_error_logged = True
                    log.exception("Publisher.on_message failed (logged once)")
        if sock is None:  # not bound again yet after a reset
            self.dropped_send += 1
            return
        try:
            # copy=False: the frames are immutable bytes; pyzmq still copies small ones itself.
            sock.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            self.dropped_send += 1
            return
        except zmq.ZMQError as exc:
            self.dropped_send += 1
            if not self._send_error_logged:  # transient fault: count it, log once
                self._send_error_logged = True
                log.warning("publishing on %s failed (counted in dropped_send): %s", self.endpoint, exc)
            return
        t_sent_ns = now_ns()
        self.published += 1
        self.latency.record_ns(t_sent_ns - item.t_enqueue_ns)
        on_sent = self.on_sent if item.stream is None else self.on_sent_by_stream.get(
            item.stream, self.on_sent)
        if on_sent is not None:
            try:
                on_sent(item.topic, item.t_capture_ns, item.t_enqueue_ns, t_sent_ns)
            except Exception:
                if not self._hook_error_logged:
                    self._hook_error_logged = True
                    log.exception("Publisher.on_sent failed (logged once)")
