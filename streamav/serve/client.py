"""`streamav live --remote ENDPOINT`: the capture client of `streamav serve`.

The client runs what `streamav live` runs up to the model - sources, AV ring, face front end,
spectrum, one `LivePipeline` per input (streamav.multi_live.MultiRun, with no model) - and
sends each frame with a face to the ingress (streamav.serve.frames): the aligned crop, the
spectrum and the face mesh, with the stream id, the frame's seq and capture time. Its own
messages (`face`, `status`, `stats`) are forwarded to the ingress too, which publishes them on
the PUB edge with the model's results, so subscribers see each stream whole in one place.

A `status` of state `reset` (a new person: the face lost for long, a source back) is followed
by a `reset` command for the stream's model state, `stopping` by `leave` (its slot is freed).
A stream the replicas have no room for is refused by the ingress: the client stops it.

Over the network the link is CURVE (`--remote-server-key`: the server's public key;
`--remote-client-key`: this client's secret key, its public key on the server's allow-list);
the ingress refuses a non-loopback endpoint without keys.

Stream ids: `--stream-id ID` names a single stream ID, several ID.s0, ID.s1, ...; without it a
prefix unique to the run (host-pid-random) is used, so that two clients never share an id.
Real time, a frame the socket cannot take at once is dropped (counted); `--no-realtime` waits,
and asks the ingress to keep every frame.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from pathlib import Path

import zmq

from streamav.clock import now_ns
from streamav.config import LiveConfig
from streamav.errors import EndpointError
from streamav.frontend.face import mesh_in_crop
from streamav.model_stage import DEFAULT_FPS
from streamav.multi_live import MultiRun, StreamInput, check_multi_config, run_all, summary_of
from streamav.pipeline import FrameResult
from streamav.serve.frames import (KIND_REFUSED, FrameInputs, decode_refusal, encode_command,
                                   encode_forward, encode_frame)
from streamav.wire import protocol
from streamav.wire.messages import Status, TopicMessage, encode_body
from streamav.wire.publisher import default_stream_id

log = logging.getLogger(__name__)

_SEND_HWM = 1000
_CLOSE_LINGER_MS = 2000  # what is queued at the end still reaches the ingress
# the longest one send holds the link (its lock): a command waits this long for room, an
# offline frame tries again after it (real-time frames never wait)
_SEND_TIMEOUT_MS = 1000


class RemoteLink:
    """The client's DEALER socket to the ingress; any thread may send (one lock)."""

    def __init__(self, endpoint: str, wait: bool, server_key: Path | None = None,
                 client_key: Path | None = None) -> None:
        problem = protocol.endpoint_problem(endpoint)
        if problem:
            raise EndpointError(f"--remote {endpoint}: {problem}")
        self.endpoint = endpoint
        self.wait = wait
        self.server_key = server_key
        self.client_key = client_key
        self.sent = 0
        self.dropped = 0
        self._lock = threading.Lock()
        self._context: zmq.Context | None = None
        self._sock: zmq.Socket | None = None

    def start(self) -> None:
        self._context = zmq.Context()
        sock = self._context.socket(zmq.DEALER)
        sock.setsockopt(zmq.SNDHWM, _SEND_HWM)
        sock.setsockopt(zmq.LINGER, _CLOSE_LINGER_MS)
        sock.setsockopt(zmq.SNDTIMEO, _SEND_TIMEOUT_MS)
        protocol.secure_client(sock, self.server_key, self.client_key)
        protocol.connect(sock, self.endpoint)
        self._sock = sock

    def send(self, parts: list[bytes]) -> bool:
        """A frame or a forwarded message: real time, dropped (counted) when the socket has
        no room now; `wait` (offline), tried again every `_SEND_TIMEOUT_MS` until it goes or
        the link is closed, the lock released between tries."""
        while True:
            with self._lock:
                if self._sock is None:
                    self.dropped += 1
                    return False
                try:
                    self._sock.send_multipart(parts, flags=0 if self.wait else zmq.NOBLOCK,
                                              copy=False)
                except zmq.Again:
                    if not self.wait:
                        self.dropped += 1
                        return False
                    continue  # outside the lock: close() and the commands get their turn
                self.sent += 1
                return True

    def send_command(self, parts: list[bytes]) -> bool:
        """A `reset` / `leave`: waits up to `_SEND_TIMEOUT_MS` for room (a command dropped
        would leave a slot taken or the last person's state in place), else dropped and
        logged."""
        with self._lock:
            if self._sock is not None:
                try:
                    self._sock.send_multipart(parts, copy=False)  # SNDTIMEO bounds the wait
                    self.sent += 1
                    return True
                except zmq.Again:
                    pass
            self.dropped += 1
        log.warning("a command to %s could not be sent in %d ms: dropped", self.endpoint,
                    _SEND_TIMEOUT_MS)
        return False

    def refusals(self) -> list:
        """The ingress's refusals received so far (streamav.serve.frames.Refusal)."""
        found = []
        with self._lock:
            while self._sock is not None and self._sock.poll(0):
                parts = self._sock.recv_multipart()
                if parts and parts[0] == KIND_REFUSED and len(parts) == 2:
                    found.append(decode_refusal(parts[1]))
        return found

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None
            if self._context is not None:
                self._context.term()
                self._context = None


class ForwardingPublisher:
    """A MultiRun's publisher that forwards every message to the ingress (see the module
    docstring)."""

    def __init__(self, link: RemoteLink, stream_id: str) -> None:
        self.link = link
        self.stream_id = stream_id
        self.dropped_queue_full = 0
        # each stream's send-latency hook (LivePipeline's): called once a message has been
        # handed to the socket, as Publisher calls its own
        self._on_sent: dict[str | None, object] = {}

    @property
    def dropped_send(self) -> int:
        return self.link.dropped

    def set_on_sent(self, callback, stream: str | None = None) -> None:
        if callback is None:
            self._on_sent.pop(stream, None)
        else:
            self._on_sent[stream] = callback

    def start(self) -> None:
        self.link.start()

    def stop(self, timeout_s: float = 2.0) -> None:
        self.link.close()

    def publish(self, message: TopicMessage, t_capture_ns: int, buffers=(),
                stream: str | None = None) -> bool:
        stream = stream or self.stream_id
        frames = tuple(protocol.buffer_to_bytes(b) for b in buffers)
        message.check_buffers(frames)
        t_enqueue_ns = now_ns()
        sent = self.link.send(encode_forward(stream, message.TOPIC, t_capture_ns,
                                             encode_body(message), frames))
        on_sent = self._on_sent.get(stream, self._on_sent.get(None))
        if sent and on_sent is not None:
            on_sent(message.TOPIC, t_capture_ns, t_enqueue_ns, now_ns())
        if isinstance(message, Status) and message.state in ("reset", "stopping"):
            self.link.send_command(encode_command(stream, "reset" if message.state == "reset"
                                                  else "leave"))
        return sent


def remote_inputs(streams: list[StreamInput], stream_id: str | None) -> list[StreamInput]:
    """The streams with their ids on the ingress (see the module docstring)."""
    if stream_id is not None and len(streams) == 1:
        return [dataclasses.replace(streams[0], stream_id=stream_id)]
    prefix = stream_id or default_stream_id()
    return [dataclasses.replace(s, stream_id=f"{prefix}.{s.stream_id}") for s in streams]


def run_remote(config: LiveConfig, streams: list[StreamInput], endpoint: str,
               signals=None, server_key: Path | None = None,
               client_key: Path | None = None) -> dict:
    """`streamav live --remote`: every stream's front end here, its model on `streamav serve`.
    The result is run_multi's: {"streams": {id: final stats}, "stop_reasons", "refused",
    "errors", "engine", "slots"}."""
    check_multi_config(config)
    config = dataclasses.replace(
        config, model=dataclasses.replace(config.model, enabled=False),
        run=dataclasses.replace(config.run, max_streams=max(config.run.max_streams,
                                                            len(streams))))
    streams = remote_inputs(streams, config.publish.stream_id)
    keep_all = not config.run.realtime
    link = RemoteLink(endpoint, wait=keep_all, server_key=server_key, client_key=client_key)
    refused: list[str] = []
    run: MultiRun | None = None
    # what the stream's model stage would assume in one process (streamav.live's: the default)
    stage_fps = DEFAULT_FPS

    def on_frame(stream_id: str, result: FrameResult) -> None:
        face = result.face
        if face.found and face.crop_rgb is not None:
            link.send(encode_frame(FrameInputs(
                stream_id, result.frame.seq, result.frame.t_capture_ns, face.crop_rgb,
                result.spectrum, mesh_in_crop(face), stage_fps), keep_all))
        for refusal in link.refusals():
            log.warning("stream %s refused by streamav serve: %s", refusal.stream,
                        refusal.reason)
            refused.append(refusal.stream)
            pipeline = run.pipelines.get(refusal.stream) if run is not None else None
            if pipeline is not None:
                pipeline.request_stop(f"refused by streamav serve: {refusal.reason}")

    run = MultiRun(config, publisher=ForwardingPublisher(link, config.publish.stream_id or
                                                         "streamav-remote"),
                   on_frame=on_frame)
    summaries = run_all(run, streams, signals)
    log.info("sent %d messages to %s, %d dropped", link.sent, endpoint, link.dropped)
    return {**summary_of(summaries),
            "refused": sorted(set(run.refused) | set(refused)),
            "errors": {sid: str(e) for sid, e in run.errors.items()},
            "engine": f"streamav serve at {endpoint}", "slots": len(streams),
            "sent": link.sent, "dropped": link.dropped}
