"""The ingress of `streamav serve`: frames in from capture clients, results out on the PUB edge.

    ingress = Ingress(handle, IngressSettings(listen=..., publish=...))
    ingress.start()          # binds both sockets; a thread runs the loop
    ...
    ingress.stop()

It binds a ROUTER socket for the capture clients (streamav.serve.frames) and the usual PUB
socket (streamav.wire.publisher), and keeps, per stream:

- a queue of the stream's frames and commands, in arrival order. Real time: at most
  `queue_frames` frames (the oldest is dropped, counted as lost); an offline client
  (`--no-realtime`) has every frame kept.
- one request in flight to the model deployment (`handle.options(session_id=stream)`): the
  next frame goes once the last is answered, so a stream's frames are stepped in order, on the
  replica the sticky router keeps it on (streamav.serve.router); the streams' concurrent
  requests are what a replica's `@serve.batch` steps together.
- its newest state snapshot (a reply carries one every `snapshot_every` frames).

Replies are published as a single-process run publishes them (`emotion`, `emotion.change`,
`video.denoised`, `latent`, with the frame's capture time and the stream's id); the client's
own `face`, `status` and `stats` messages are forwarded onto the same socket, so a subscriber
sees one stream as it would from `streamav live`.

Faults. A request whose replica died (Ray reports the actor dead or unavailable) loses its
frame; the router drops the replica from the stream, and the stream's next request carries its
snapshot (none yet: a fresh start) to the replica it is assigned next, which restores it. Then
a `status` message of state `moved` says from where to where, from which frame's snapshot (or
a reset), and how many frames were lost. Every lost frame (in flight on a dead replica, dropped
from a full queue, or while no replica had room for a moved stream) reserves one `seq` of each
of the stream's `emotion`, `video.denoised` and `latent` topics without a message
(`Publisher.skip`): the gaps a subscriber sees count what was lost. A stream for which no
replica has a free slot when it first arrives is refused: a `status` of state `refused`, and the
client is told (it stops that stream); a moved stream that finds no room tries again every
`retry_s`, its frames lost meanwhile. A stream whose client has sent nothing for
`idle_leave_s` (a client that died without its `leave`) leaves: its slot is freed.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import zmq
import zmq.asyncio

from streamav.clock import now_ns, wall_anchor
from streamav.errors import InputError, StreamavError
from streamav.serve.frames import (KIND_CTL, KIND_FRAME, KIND_MSG, FrameInputs, decode_command,
                                   decode_forward, decode_frame, encode_refusal)
from streamav.serve.replica import StepReply, StepRequest, StreamSnapshot
from streamav.wire import protocol
from streamav.wire.auth import resolve_allow_list, start_authenticator
from streamav.wire.messages import (TOPIC_EMOTION, TOPIC_LATENT, TOPIC_VIDEO_DENOISED, Anchor,
                                    DecodeError, Status, decode_body, decode_map)
from streamav.wire.publisher import DEFAULT_PUB_ENDPOINT, Publisher

log = logging.getLogger(__name__)

DEFAULT_LISTEN = "tcp://127.0.0.1:5560"
LOST_TOPICS = (TOPIC_EMOTION, TOPIC_VIDEO_DENOISED, TOPIC_LATENT)  # a stepped frame's messages
_POLL_MS = 100


@dataclass(frozen=True)
class IngressSettings:
    listen: str = DEFAULT_LISTEN  # ROUTER: the capture clients connect here
    publish: str = DEFAULT_PUB_ENDPOINT  # the PUB edge: subscribers connect here
    # real time: frames a stream's queue holds before the oldest is lost (3: at most ~100 ms of
    # waiting added at 30 fps; the client already sends the newest frame it has)
    queue_frames: int = 3
    retry_s: float = 0.25  # a moved stream that found no room tries again after this
    # a stream whose client sent nothing (no frame, no forwarded message) for this long leaves:
    # its slot is freed (a client that died without its `leave`)
    idle_leave_s: float = 30.0
    curve_secret_key_file: Path | None = None  # for a non-loopback listen / publish
    curve_client_keys: Path | str | None = None
    publisher_queue: int = 2048


@dataclass
class _Item:
    kind: str  # "frame", "reset", "leave"
    frame: FrameInputs | None = None


@dataclass
class _Route:
    """One stream at the ingress."""

    stream: str
    identity: bytes
    keep_all: bool = False
    queue: deque = field(default_factory=deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task | None = None
    handle: object = None
    replica: str | None = None  # the replica serving it now
    joined: bool = False  # it holds a slot on `replica`
    routed: bool = False  # a request of it has been sent (a replica may hold it)
    moving: str | None = None  # why it must move (its replica failed); None: it need not
    moved_from: str | None = None
    snapshot: StreamSnapshot | None = None
    stepped: int = 0  # frames answered with results
    lost: int = 0  # frames lost (seq gaps on the edge)
    lost_since_move: int = 0
    moves: int = 0
    refused: bool = False
    closed: bool = False
    last_seen: float = field(default_factory=time.monotonic)


class Ingress:
    """See the module docstring. `handle`: the model deployment's handle (serve.run's);
    `on_reply(stream, reply)`: called with every reply, in the ingress's loop thread."""

    def __init__(self, handle, settings: IngressSettings = IngressSettings(),
                 publisher: Publisher | None = None,
                 on_reply: Callable[[str, StepReply], None] | None = None) -> None:
        self.handle = handle
        self.settings = settings
        self.publisher = publisher or Publisher(
            endpoint=settings.publish, stream_id="streamav-serve",
            queue_size=settings.publisher_queue,
            curve_secret_key_file=settings.curve_secret_key_file,
            curve_client_keys=settings.curve_client_keys)
        self.on_reply = on_reply
        self.routes: dict[str, _Route] = {}
        # the totals of the streams' ended routes ({stream: summary}; a stream id that comes
        # back after its leave gets a new route, its totals added to these)
        self.ended: dict[str, dict] = {}
        self.frames_in = 0
        self.messages_forwarded = 0
        self.bad_messages = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._sock: zmq.asyncio.Socket | None = None

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Bind the PUB edge and the ROUTER (EndpointError here when either cannot be), then
        run the loop in a thread."""
        self.publisher.start()
        self._thread = threading.Thread(target=self._run_thread, name="streamav-ingress",
                                        daemon=True)
        self._thread.start()
        ready = self._ready.wait(10)
        if self._error is not None or not ready:
            self.stop()
            raise self._error or StreamavError(
                f"the ingress did not bind {self.settings.listen} in 10 s")

    @property
    def alive(self) -> bool:
        """Its loop runs (False before start, after stop, or once the loop has failed)."""
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout_s: float = 5.0) -> None:
        try:
            loop, stop = self._loop, self._stop
            if loop is not None and stop is not None and not loop.is_closed():
                try:
                    loop.call_soon_threadsafe(stop.set)
                except RuntimeError:  # the loop closed meanwhile: its thread has ended
                    pass
            if self._thread is not None:
                self._thread.join(timeout_s)
        finally:
            self.publisher.stop()

    def _run_thread(self) -> None:
        try:
            asyncio.run(self.run())
        except BaseException as exc:  # noqa: BLE001 - reported to start() or logged
            if not self._ready.is_set():
                self._error = exc
            else:
                log.exception("the ingress loop failed")
        finally:
            self._ready.set()

    async def run(self) -> None:
        """Receive until stop(); the PUB edge must be started."""
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        settings = self.settings
        # with CURVE keys, clients not on the allow-list are refused in the handshake (ZAP)
        allow_list = resolve_allow_list(settings.curve_secret_key_file,
                                        settings.curve_client_keys)
        sync_context = zmq.Context()
        authenticator = (None if allow_list is None
                         else start_authenticator(sync_context, allow_list))
        context = zmq.asyncio.Context.shadow(sync_context.underlying)
        sock = context.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, 10_000)
        try:
            protocol.secure_server(sock, settings.listen, settings.curve_secret_key_file)
            protocol.bind(sock, settings.listen)
            self._sock = sock
            self._ready.set()
            next_idle_check = time.monotonic() + 1.0
            while not self._stop.is_set():
                if time.monotonic() >= next_idle_check:
                    self._leave_idle()
                    next_idle_check = time.monotonic() + 1.0
                if not await sock.poll(_POLL_MS):
                    continue
                parts = await sock.recv_multipart()
                try:
                    self._on_message(parts)
                except (InputError, DecodeError, ValueError) as exc:
                    self.bad_messages += 1
                    if self.bad_messages <= 3:
                        log.warning("ingress: a message dropped: %s", exc)
            tasks = [r.task for r in self.routes.values() if r.task is not None]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            sock.close(0)
            if authenticator is not None:
                authenticator.stop()
            sync_context.term()

    # -- what clients send ------------------------------------------------------------------

    def _on_message(self, parts: list[bytes]) -> None:
        if len(parts) < 3:
            raise InputError(f"a message of {len(parts)} parts")
        identity, kind, rest = parts[0], parts[1], parts[2:]
        if kind == KIND_FRAME:
            header, frame = decode_frame(rest)
            self.frames_in += 1
            route = self._route(header.stream, identity, header.keep_all)
            if route.refused:
                return
            self._enqueue(route, _Item("frame", frame))
        elif kind == KIND_MSG:
            header, body, buffers = decode_forward(rest)
            message = decode_body(header.topic, decode_map(body), buffers)
            if message is None:
                raise InputError(f"unknown topic {header.topic!r}")
            self.publisher.publish(message, header.t_capture_ns, buffers, stream=header.stream)
            self.messages_forwarded += 1
            route = self.routes.get(header.stream)
            if route is not None:
                route.last_seen = time.monotonic()
        elif kind == KIND_CTL:
            command = decode_command(rest)
            route = self.routes.get(command.stream)
            if route is not None and not route.closed and (
                    not route.refused or command.command == "leave"):
                self._enqueue(route, _Item(command.command))
        else:
            raise InputError(f"unknown kind {kind[:16]!r}")

    def _route(self, stream: str, identity: bytes, keep_all: bool) -> _Route:
        route = self.routes.get(stream)
        if route is None or route.closed:
            route = _Route(stream, identity, keep_all)
            route.handle = self.handle.options(method_name="step", session_id=stream)
            route.task = asyncio.get_running_loop().create_task(self._drive(route))
            self.routes[stream] = route
        route.identity = identity
        route.last_seen = time.monotonic()
        return route

    def _leave_idle(self) -> None:
        now = time.monotonic()
        for route in list(self.routes.values()):
            if (not route.closed and not route.queue
                    and now - route.last_seen > self.settings.idle_leave_s):
                log.info("stream %s: nothing from its client for %.0f s: it leaves",
                         route.stream, now - route.last_seen)
                self._enqueue(route, _Item("leave"))

    def _enqueue(self, route: _Route, item: _Item) -> None:
        route.queue.append(item)
        if not route.keep_all and item.kind == "frame":
            frames = sum(1 for i in route.queue if i.kind == "frame")
            while frames > self.settings.queue_frames:  # real time: the oldest frame goes
                oldest = next(i for i in route.queue if i.kind == "frame")
                route.queue.remove(oldest)
                frames -= 1
                self._lose(route, 1)
        route.wake.set()

    # -- one stream's requests --------------------------------------------------------------

    async def _drive(self, route: _Route) -> None:
        while True:
            while not route.queue:
                route.wake.clear()
                await route.wake.wait()
            item = route.queue.popleft()
            if item.kind == "leave":
                try:
                    await self._leave(route)
                finally:
                    self._retire(route)
                return
            if item.kind == "reset":  # a new person: the last one's state is no snapshot of it
                route.snapshot = None
            try:
                await self._send(route, item)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - one frame's failure must not stop its stream
                log.exception("stream %s: a %s could not be handled", route.stream, item.kind)
                if item.kind == "frame":
                    self._lose(route, 1)

    async def _leave(self, route: _Route) -> None:
        route.closed = True
        route.queue.clear()
        await self._release(route)

    async def _release(self, route: _Route) -> None:
        """Send the stream's `leave` if any request of it was routed: its replica frees the
        slot (it answers `done` for a stream it does not hold), the router unassigns it."""
        if route.routed:
            try:
                await route.handle.remote(StepRequest(route.stream, kind="leave"))
            except Exception as exc:  # noqa: BLE001 - its replica is gone: nothing to free
                log.info("stream %s: leave not delivered (%s)", route.stream, exc)

    def _retire(self, route: _Route) -> None:
        """An ended route: its totals folded into `ended`, the route dropped."""
        if self.routes.get(route.stream) is route:
            del self.routes[route.stream]
        self.ended[route.stream] = _merged(self.ended.get(route.stream), _totals(route))

    async def _send(self, route: _Route, item: _Item) -> None:
        from ray.exceptions import ActorUnavailableError, RayActorError

        while True:
            request = StepRequest(
                route.stream, kind=item.kind, frame=item.frame,
                new=not route.joined and (route.moving is None or route.snapshot is None),
                resume=route.snapshot if route.moving is not None else None)
            route.routed = True
            try:
                reply: StepReply = await route.handle.remote(request)
            except (RayActorError, ActorUnavailableError) as exc:
                self._replica_failed(route, item, f"replica {route.replica} failed "
                                                  f"({type(exc).__name__})")
                return
            except Exception as exc:  # noqa: BLE001 - the request itself failed on its replica
                log.warning("stream %s: request for frame %s failed: %s", route.stream,
                            None if item.frame is None else item.frame.seq, exc)
                if item.kind == "frame":
                    self._lose(route, 1)
                return
            if self.on_reply is not None:
                self.on_reply(route.stream, reply)
            if reply.outcome == "unknown":  # routed elsewhere: its replica left the deployment
                if route.moving is None:
                    route.moving = f"replica {route.replica} left the deployment"
                    route.moved_from = route.replica
                route.joined = False
                continue
            if reply.outcome == "refused":
                if route.moving is None and route.stepped == 0 and not route.joined:
                    self._refuse(route, reply.reason)
                    await self._release(route)  # the router's assignment of it goes
                    return
                if any(i.kind == "leave" for i in route.queue):
                    # the stream has ended meanwhile: what is queued before its leave is lost
                    lost = 1 if item.kind == "frame" else 0
                    while route.queue[0].kind != "leave":
                        lost += route.queue.popleft().kind == "frame"
                    self._lose(route, lost)
                    return
                # a moved stream: no room yet; the same frame again in a while (meanwhile a
                # real-time queue drops its oldest frames, counted as lost)
                await asyncio.sleep(self.settings.retry_s)
                continue
            if reply.outcome == "error":  # this request could not be handled on its replica
                if reply.joined:
                    self._joined(route, reply)
                log.warning("stream %s: its %s failed on %s: %s", route.stream, item.kind,
                            reply.replica, reply.reason)
                if item.kind == "frame":
                    self._lose(route, 1)
                return
            if reply.joined or (not route.joined and route.moving is None):
                # took its slot with this request, or with an earlier one whose reply was lost
                # (that request failed after the replica took the stream)
                self._joined(route, reply)
            elif route.moving is not None:  # its replica was only unreachable for a while
                log.warning("stream %s: %s held it still; it stays", route.stream, reply.replica)
                route.moving, route.joined, route.replica = None, True, reply.replica
            if reply.outcome == "ok":
                self._publish(route, reply, item.frame)
            return

    def _replica_failed(self, route: _Route, item: _Item, why: str) -> None:
        log.warning("stream %s: %s; it moves", route.stream, why)
        if item.kind == "frame":
            self._lose(route, 1)
        if route.joined or route.moving is None:
            route.moved_from = route.replica
            route.moving = why
        route.joined = False

    def _joined(self, route: _Route, reply: StepReply) -> None:
        if route.moving is not None:
            snapshot = route.snapshot
            if snapshot is not None:
                how = (f"resumed from the snapshot of frame {snapshot.frame_seq} "
                       f"({route.stepped - snapshot.frames} stepped frames after it are not "
                       "in the state)")
            else:
                how = "started again from a fresh state (no snapshot yet)"
            reason = (f"stream {route.stream} moved from {route.moved_from} to {reply.replica}: "
                      f"{route.moving}; {how}; {route.lost_since_move} frames lost")
            log.warning("%s", reason)
            self._status(route.stream, "moved", reason)
            route.moves += 1
            route.lost_since_move = 0
            if snapshot is not None:
                route.stepped = snapshot.frames
        else:
            self._status(route.stream, "served",
                         f"stream {route.stream} on {reply.replica} (node {reply.node})")
        route.moving = None
        route.joined = True
        route.replica = reply.replica

    def _refuse(self, route: _Route, why: str) -> None:
        reason = f"stream {route.stream} refused: {why}; the running streams go on"
        log.warning("%s", reason)
        route.refused = True
        route.queue.clear()
        self._status(route.stream, "refused", reason)
        if self._sock is not None:
            try:
                self._sock.send_multipart([route.identity, *encode_refusal(route.stream, why)],
                                          flags=zmq.NOBLOCK)
            except zmq.ZMQError:
                pass

    def _publish(self, route: _Route, reply: StepReply, frame: FrameInputs | None) -> None:
        t_capture_ns = frame.t_capture_ns if frame is not None else now_ns()
        publish, stream = self.publisher.publish, route.stream
        route.stepped += 1
        if reply.snapshot is not None:
            route.snapshot = reply.snapshot
        publish(reply.emotion, t_capture_ns, stream=stream)
        if reply.change is not None:
            publish(reply.change, t_capture_ns, stream=stream)
        publish(reply.denoised, t_capture_ns, [reply.denoised_rgb], stream=stream)
        publish(reply.latent, t_capture_ns, stream=stream)

    def _lose(self, route: _Route, frames: int) -> None:
        route.lost += frames
        route.lost_since_move += frames
        for topic in LOST_TOPICS:
            self.publisher.skip(topic, route.stream, frames)

    def _status(self, stream: str, state: str, reason: str) -> None:
        self.publisher.publish(Status(state=state, reason=reason, anchor=Anchor(**wall_anchor())),
                               now_ns(), stream=stream)

    # -- what the command and the tests read -------------------------------------------------

    def summary(self) -> dict:
        streams = dict(self.ended)
        for stream, route in list(self.routes.items()):
            streams[stream] = _merged(streams.get(stream), _totals(route))
        return {"frames_in": self.frames_in, "messages_forwarded": self.messages_forwarded,
                "bad_messages": self.bad_messages, "streams": streams}


def _totals(route: _Route) -> dict:
    return {"replica": route.replica, "stepped": route.stepped, "lost": route.lost,
            "moves": route.moves, "refused": route.refused}


def _merged(earlier: dict | None, later: dict) -> dict:
    """One stream id's totals over its routes, one after the other."""
    if earlier is None:
        return later
    return {"replica": later["replica"] or earlier["replica"],
            "stepped": earlier["stepped"] + later["stepped"],
            "lost": earlier["lost"] + later["lost"], "moves": earlier["moves"] + later["moves"],
            "refused": earlier["refused"] or later["refused"]}
