"""`streamav replay DIR`: publish a recording's message log again, with its original timing.

Every logged message is sent as it was sent during the recorded run, byte for byte: the same
topic, envelope (stream id, per-topic `seq`, `t_capture`, `t_publish`: the recorded run's
clock, which the replayed `status` messages' anchors map to the wall clock of then) and
buffers. Message i leaves `(t_i - t_0) / speed` after the first one (`t_i`: its logged send
time); `realtime=False` sends them as fast as the socket takes them, waiting for room in the
publisher's queue instead of dropping. The publisher is the live one (streamav/wire/
publisher.py): the same transport rules (CURVE beyond loopback) and limits apply.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from streamav.clock import NS_PER_S, now_ns
from streamav.errors import InputError
from streamav.sources.recording import MESSAGES, read_manifest
from streamav.wire.msglog import LogReader
from streamav.wire.publisher import Publisher

log = logging.getLogger(__name__)

_WAIT_POLL_S = 0.02


@dataclass(frozen=True)
class ReplaySummary:
    sent: int
    dropped: int
    elapsed_s: float
    span_s: float  # the logged messages' own time span
    stream_id: str | None
    stop_reason: str


def replay(folder: Path, endpoint: str, *, speed: float = 1.0, realtime: bool = True,
           wait_subscriber_s: float = 0.0, curve_secret_key_file: Path | None = None,
           curve_client_keys: str | None = None,
           stop: threading.Event | None = None) -> ReplaySummary:
    """Publish the log of the recording in `folder` on `endpoint`. `wait_subscriber_s`: wait
    that long at most for a first subscriber before sending (a PUB socket sends nothing to a
    peer that has not subscribed yet). `stop`: set it to end the replay early."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    path = folder / MESSAGES
    if not path.is_file():
        raise InputError(f"{folder}: the recording has no message log ({MESSAGES})")
    try:
        reader = LogReader(path)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    stop = stop or threading.Event()
    publisher = Publisher(endpoint=endpoint, stream_id=reader.header.get("stream"),
                          curve_secret_key_file=curve_secret_key_file,
                          curve_client_keys=curve_client_keys)
    sent = 0
    first_t = last_t = None
    stop_reason = "end of the log"
    t_start = time.monotonic()
    with reader:
        publisher.start()
        try:
            if wait_subscriber_s > 0:
                deadline = time.monotonic() + wait_subscriber_s
                while publisher.subscriptions_seen == 0 and time.monotonic() < deadline \
                        and not stop.is_set():
                    time.sleep(_WAIT_POLL_S)
                if publisher.subscriptions_seen == 0:
                    log.warning("no subscriber after %.1f s: replaying anyway", wait_subscriber_s)
            t_start = time.monotonic()
            origin_ns = now_ns()
            for record in reader:
                if stop.is_set():
                    stop_reason = "interrupted"
                    break
                if first_t is None:
                    first_t = record.t_ns
                last_t = record.t_ns
                if realtime:
                    due_ns = origin_ns + int((record.t_ns - first_t) / speed)
                    while not stop.is_set():
                        delay_s = (due_ns - now_ns()) / NS_PER_S
                        if delay_s <= 0:
                            break
                        stop.wait(min(delay_s, 0.1))
                    if stop.is_set():
                        stop_reason = "interrupted"
                        break
                publisher.publish_raw(record.topic, record.body, record.buffers,
                                      timeout_s=0 if realtime else None)
                sent += 1
            if reader.trailing_bytes:
                log.warning("%s ends in an incomplete record (%d bytes; the recording was cut "
                            "short)", path, reader.trailing_bytes)
        finally:
            publisher.stop()
    span = 0.0 if first_t is None else (last_t - first_t) / NS_PER_S
    return ReplaySummary(sent=sent, dropped=publisher.dropped,
                         elapsed_s=time.monotonic() - t_start, span_s=span,
                         stream_id=manifest.get("stream_id") or reader.header.get("stream"),
                         stop_reason=stop_reason)
