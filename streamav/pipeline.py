"""The live pipeline: sources → AV ring → worker (face, spectrum) → publisher, plus preview.

Threads, not asyncio (DESIGN section 2): each source has its own thread or device callback, the
worker thread does the per-frame compute, the publisher thread owns the PUB socket, and the main
thread runs the optional preview window (OpenCV wants the main thread) or just waits.

Set-up order: the publisher and control sockets are bound, the devices opened (sources with a
`prepare()`), then the face tracker and the model loaded, so that a busy endpoint or a missing
camera fails before the slow steps.

A run ends at the end of the video stream, after `max_frames` frames or `duration_s` seconds,
on Ctrl-C (or SIGTERM, SIGHUP: see `stop_on_signals`), on `q` in the preview, or on a fatal
source error. It always ends the same way: the worker finishes the frame in hand and exits, then
the main thread sends a `status` stopping message and the final `stats` message, and only then
stops the stages and joins everything: no stage is stopped under a frame being processed.

The stages (face front end, audio front end, model) are `streamav.stage.Stage`s: start, step,
reset, stop. `reset(reason)` is a new person: every stage's state starts again (the model's
recurrent states and w, the identity path's running means, the emotion baseline, smoothing and
change detector, the face tracker) and a `status` message with state `reset` says when and why.
It is called when a source comes back (`source_back`, from the first frame captured after the
return), when the face has been gone longer than `[run] face_lost_reset_s` of the source's own
time, and by the control socket's `reset`. The worker applies it between two frames, never
under a step.

A source that dies during the run (a decoder that raises on a damaged file, a network read that
timed out) says so at once with a `source_failed` status message, and the run stops then rather
than going on without that stream; `run()` raises its error after the final stats (`summary`
holds them).

Real time stays live: a frame the worker takes later than `run.max_staleness_s` after its
capture (less the time a frame has recently taken to process) is dropped rather than processed,
and counted (`stale_dropped` in `stats`, part of `dropped_frames`), as are the frames a file
source dropped for the same reason while catching up (streamav/sources/media_file.py).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np
from msgspec import UNSET

from streamav.clock import NS_PER_S, now_ns, wall_anchor
from streamav.config import LiveConfig
from streamav.frontend.face import FaceResult, mesh_in_crop
from streamav.model_stage import ModelMessages
from streamav.frontend.spectrum import CausalPowerSpectrum
from streamav.ring import AVRing, VideoFrame
from streamav.run_stats import RunStats
from streamav.run_view import FrameView, RunNumbers
from streamav.sources.base import MODEL_SAMPLE_RATE_HZ, Source
from streamav.stage import Stage
from streamav.stop_signals import interrupts_deferred
from streamav.wire import protocol
from streamav.wire.messages import (Anchor, Face, ProfileLoad, ProfileLoadReply, Reset,
                                    ResetReply, Stats, Status, TopicMessage)

log = logging.getLogger(__name__)

_READ_TIMEOUT_S = 0.1  # how often the worker wakes to check for stop and send stats
_WAIT_POLL_S = 0.05  # how often the main thread looks for a stop signal while the worker runs
_SLOW_STOP_S = 5.0  # warn when the worker takes longer than this to finish its frame
_SOURCE_CHECK_NS = int(_READ_TIMEOUT_S * NS_PER_S)  # how often the worker polls source errors



# The stages the worker steps (streamav.stage.Stage: start, step, reset, stop).
FaceStage = Stage[[np.ndarray], FaceResult]  # BGR frame -> the face (streamav.frontend.face)


class ModelStep(Stage[[np.ndarray, np.ndarray | None, int, np.ndarray], ModelMessages | None],
                Protocol):
    """The model stage (streamav.model_stage.ModelStage): step(crop_rgb, spectrum, frame_seq,
    mesh_crop_xy), and what the pipeline reads of it besides."""

    engine_label: str
    labels: tuple[str, ...]

    @property
    def nonfinite_frames(self) -> int: ...

    def use_profile(self, name: str | None) -> None: ...

    def idle(self) -> None: ...


@dataclass
class _PendingReset:
    """A `reset(reason)` asked from another thread, for the worker to apply."""

    reason: str
    after_ns: int  # apply before the first frame captured at or after this (0: the next frame)
    frames_read: int  # the worker's frame count when it was asked
    external: bool  # asked from outside the input (control, source_back): counted in model_resets


class PublisherLike(Protocol):
    def start(self) -> None: ...
    def publish(self, message: TopicMessage, t_capture_ns: int, buffers=()) -> bool: ...
    def stop(self, timeout_s: float = 2.0) -> None: ...
    def set_on_sent(self, callback: Callable[[str, int, int, int], None] | None) -> None:
        """Call `callback(topic, t_capture_ns, t_enqueue_ns, t_sent_ns)` once each message of
        this run (of this stream, for one stream's view of a shared publisher) has been sent."""


class NullPublisher:
    """Publishes nothing: for runs whose results are collected in-process (feature caches)."""

    def start(self) -> None:
        """Nothing to bind."""

    def publish(self, message: TopicMessage, t_capture_ns: int, buffers=()) -> bool:
        return True

    def set_on_sent(self, callback) -> None:
        """Nothing is sent."""

    def stop(self, timeout_s: float = 2.0) -> None:
        """Nothing to close."""


@dataclass(frozen=True)
class FrameResult:
    """What the worker made of one frame; the preview shows the newest one."""

    frame: VideoFrame
    face: FaceResult
    audio_level_dbfs: float | None
    spectrum: np.ndarray | None  # (513,) float32 power, None without audio
    model: ModelMessages | None = None  # the MDVAE's results, when a model ran on this frame
    # Where the frame's audio window ended: the index (exclusive) of its last sample, counted
    # from the run's first audio sample (may be <= 0 before the audio starts); None without
    # audio. `--record` keeps it so that a rerun gives the frame the same window.
    audio_end: int | None = None

    def view(self) -> FrameView:
        """What the preview and --write-video show of this frame."""
        model = self.model
        return FrameView(
            seq=self.frame.seq, image_bgr=self.frame.image_bgr, face_found=bool(self.face.found),
            box_xywh=self.face.box_xywh,
            crop_rgb=model.noisy_rgb if model is not None else self.face.crop_rgb,
            denoised_rgb=None if model is None else model.denoised_rgb,
            audio_level_dbfs=self.audio_level_dbfs,
            emotion=None if model is None else model.emotion)


@dataclass(frozen=True)
class _FrontResult:
    """What the worker made of a frame before the model step."""

    frame: VideoFrame
    face: FaceResult
    level: float | None
    spectrum: np.ndarray | None
    skew_ns: int | None
    audio_end: int | None
    t_pickup: int


_MODEL_RESET = object()  # pipelined: the model's state starts again here (a reset)
_END = object()  # pipelined: no more frames


@dataclass(frozen=True)
class RunSummary:
    final_stats: dict
    stop_reason: str


_PROCESSING_EWMA = 0.2  # weight of the newest frame in the worker's processing-time estimate


class LivePipeline:
    """One run of `streamav live`. Build it, call `run()` once."""

    def __init__(self, config: LiveConfig, sources: list[Source], face: FaceStage,
                 publisher: PublisherLike, preview=None, control=None,
                 model: ModelStep | None = None,
                 on_stats: Callable[[Stats], None] | None = None,
                 on_frame: Callable[[FrameResult], None] | None = None,
                 on_started: Callable[[], None] | None = None) -> None:
        self.config = config
        self.sources = sources
        self.face = face
        self.spectrum = CausalPowerSpectrum(config.spectrum)  # a Stage too; made here
        self.publisher = publisher
        self.preview = preview
        self.control = control
        self.model = model  # ModelStage or None (front end only)
        self.on_stats = on_stats  # called with every `stats` message (e.g. a console line)
        self.on_frame = on_frame  # called by the worker with every FrameResult, in order
        self.on_started = on_started  # called on the main thread once capture has started
        # called with (first sample index, samples) for every audio block the ring stores, in
        # the source's thread (see AVRing); set it before run()
        self.on_audio: Callable[[int, np.ndarray], None] | None = None
        # resets applied that a rerun of a recording does not repeat (control `reset`, a source
        # that came back); and those after the face was lost, which it does
        self.model_resets = 0
        self.face_lost_resets = 0
        self.profile_switches = 0  # `profile.load` requests applied
        self.stats = RunStats()
        self.summary: RunSummary | None = None  # set once the run is over, even when it failed
        self.stale_dropped = 0  # real time: frames the worker dropped as older than the bound
        self._processing_ns = 0.0  # recent time from taking a frame to its results (EWMA)
        self.has_audio = any(s.has_audio for s in sources)
        self.latest: FrameResult | None = None
        self._stop = threading.Event()
        self._stop_reason = "end of input"
        self._worker_error: BaseException | None = None
        self._worker_done = threading.Event()
        self._running = False  # the sources have started: a stop signal ends the run cleanly
        self._signalled: str | None = None  # a stop signal's reason, set by the handler only
        self._setup_signalled: str | None = None  # a stop signal before the sources started
        self._setup_aborted = False  # run() is unwinding its set-up after such a signal
        self._resets: list[_PendingReset] = []  # reset() from other threads, for the worker
        self._resets_lock = threading.Lock()
        self._worker_thread: threading.Thread | None = None
        # a pipelined run ([run] pipelined): the model thread and what the worker hands it
        self._to_model: queue.Queue | None = None
        self._model_thread: threading.Thread | None = None
        self._model_error: BaseException | None = None
        self._frames_handed = 0
        self._frames_read = 0  # frames the worker has taken from the ring
        self._face_seen_ns: int | None = None  # media time of the newest frame with a face
        self._profile_requests: queue.SimpleQueue = queue.SimpleQueue()  # `profile.load`
        self._ring = AVRing(
            video_capacity_frames=config.ring.video_capacity_frames,
            audio_capacity_samples=int(config.ring.audio_capacity_s * MODEL_SAMPLE_RATE_HZ),
            sample_rate_hz=MODEL_SAMPLE_RATE_HZ,
            blocking=not config.run.realtime,
            on_status=self._on_source_status,
            on_audio=self._on_audio,
        )
        publisher.set_on_sent(self._on_sent)  # the run's (or its stream's) send latencies

    def _on_audio(self, index: int, samples: np.ndarray) -> None:
        if self.on_audio is not None:
            self.on_audio(index, samples)

    # -- control ---------------------------------------------------------------------------

    def _register_commands(self, control) -> None:
        """`reset`: a new person (`reset("control")`: every stage's state); `profile.load`
        {name} (null: none): switch the calibration profile. Both take effect at the next frame."""
        def reset(_request: Reset) -> ResetReply:
            self.reset("control")
            return ResetReply()

        def profile_load(request: ProfileLoad) -> ProfileLoadReply:
            if self.model is None:
                raise ValueError("no model is running")
            name = request.name
            if name is not None:
                from streamav.emotion.profiles import profile_exists

                if not profile_exists(name):
                    raise ValueError(f"no profile named {name!r} (streamav profiles list)")
            self._profile_requests.put(name)
            return ProfileLoadReply(profile=name)

        control.register(Reset, reset)
        control.register(ProfileLoad, profile_load)

    def reset(self, reason: str) -> None:
        """A new person: every stage's state starts again, and a `status` message (state
        `reset`, this reason) says when and why.

        Safe from any thread: during a run the worker applies it between two frames (before the
        next frame it takes, or within 0.1 s when none comes); from the worker itself (an
        `on_frame` callback) at once. Asked before the run starts, it is applied as the worker
        starts; asked after its last frame, it is not applied.
        """
        self._request_reset(reason, after_ns=0, external=True)

    def _request_reset(self, reason: str, after_ns: int, external: bool) -> None:
        if threading.current_thread() is self._worker_thread:
            self._apply_reset(reason, external)
            return
        with self._resets_lock:
            self._resets.append(_PendingReset(reason, after_ns, self._frames_read, external))

    def _apply_resets(self, frame: VideoFrame | None) -> None:
        """Worker thread, between two frames: apply the resets due before `frame` (all of them
        when None: the ring was empty, so every frame from before a return is done).

        A source's reset applies from its first frame captured after it came back: frames from
        before (still in the ring) finish under the old state. A frame captured after the return
        has a capture time at or after the `source_back` status; and since the ring holds at
        most `video_capacity_frames` frames, any frame read more than that many frames after the
        status is one from after it, whatever its timestamp says.
        """
        if not self._resets:
            return
        capacity = self.config.ring.video_capacity_frames
        due: list[_PendingReset] = []
        waiting: list[_PendingReset] = []
        with self._resets_lock:
            for pending in self._resets:
                if (frame is None or frame.t_capture_ns >= pending.after_ns
                        or self._frames_read - pending.frames_read > capacity + 1):
                    due.append(pending)
                else:
                    waiting.append(pending)
            self._resets = waiting
        for pending in due:
            self._apply_reset(pending.reason, pending.external)

    def _apply_reset(self, reason: str, external: bool) -> None:
        """Worker thread: every stage's state starts again; a `status` says so."""
        stages: list[Stage] = [self.face, self.spectrum]
        if self.model is not None and self._to_model is not None:
            self._hand_over(_MODEL_RESET)  # after the frames already handed over
        elif self.model is not None:
            stages.append(self.model)
        for stage in stages:
            stage.reset()
        self._face_seen_ns = None
        if external:
            self.model_resets += 1
        else:
            self.face_lost_resets += 1
        log.info("reset: %s", reason)
        self._publish_status("reset", reason)

    def request_stop(self, reason: str) -> None:
        if not self._stop.is_set():
            self._stop_reason = reason
            self._stop.set()
            self._ring.abort()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set() or self._signalled is not None

    # -- what a display reads (streamav.run_view.RunView) ----------------------------------

    def newest_frame(self) -> FrameView | None:
        latest = self.latest
        return None if latest is None else latest.view()

    def run_numbers(self) -> RunNumbers:
        total = self.stats.latency.total
        return RunNumbers(
            elapsed_s=(now_ns() - self.stats.t_start_ns) / NS_PER_S, fps=self.stats.recent_fps(),
            face_latency_ms=total["capture_to_publish"].percentile_ms(50),
            emotion_latency_ms=total["capture_to_emotion"].percentile_ms(50),
            model_running=self.model is not None)

    def on_stop_signal(self, reason: str) -> bool:
        """Called by a signal handler (main thread, between two bytecodes): only record it.

        Setting an Event or aborting the ring here could deadlock on a lock the interrupted
        main-thread code holds; the main thread's wait loop turns this into `request_stop`.
        Returns True once the sources have started (the run will end cleanly) or while the
        set-up is already being aborted. Before that (set-up) it returns False: `run()` then
        aborts with KeyboardInterrupt at its next step, as Ctrl-C does, and the caller may
        raise it sooner (`stop_on_signals` does where that is safe).
        """
        if self._running or self._setup_aborted:
            if self._signalled is None:
                self._signalled = reason
            return True
        if self._setup_signalled is None:
            self._setup_signalled = reason
        return False

    @property
    def setup_aborted(self) -> bool:
        """run() is unwinding its set-up after a stop signal."""
        return self._setup_aborted

    def _abort_setup_if_signalled(self) -> None:
        """Between two set-up steps: a stop signal received during them aborts the run now."""
        if self._setup_signalled is not None:
            self._setup_aborted = True
            raise KeyboardInterrupt

    # -- the run ---------------------------------------------------------------------------

    def run(self) -> RunSummary:
        started: list = []
        worker: threading.Thread | None = None
        try:
            # Each stage is listed before its start(), so that one interrupted or failing
            # half-way is stopped too (every stop() is idempotent and works after a partial
            # start): a stop signal during the set-up can land anywhere in it.
            self._abort_setup_if_signalled()
            started.append(self.publisher)
            self.publisher.start()
            if self.control is not None:
                self._register_commands(self.control)
                started.append(self.control)
                self.control.start()
            # Devices next (a camera is opened, a microphone looked up): one that is not
            # there fails now, before the face tracker loads and the model's engine is built.
            for source in self.sources:
                prepare = getattr(source, "prepare", None)
                if prepare is not None:
                    started.append(source)
                    prepare()
            self._abort_setup_if_signalled()
            started.append(self.face)
            self.face.start()
            self._abort_setup_if_signalled()
            if self.model is not None:
                started.append(self.model)
                self.model.start()
            self._abort_setup_if_signalled()
            self._publish_status("started", f"sources: {', '.join(s.name for s in self.sources)}")
            anchor_ns = now_ns()  # one clock origin for every source that replays media
            self.stats.mark_start()
            self._running = True
            for source in self.sources:
                if getattr(source, "anchor_ns", 0) is None:
                    source.anchor_ns = anchor_ns
                if source not in started:
                    started.append(source)
                source.start(self._ring)
            worker = threading.Thread(target=self._work, name="streamav-worker", daemon=True)
            self._worker_thread = worker
            worker.start()
            if self.on_started is not None:
                self.on_started()
            with interrupts_deferred():  # a Ctrl-C now ends the run: what follows is shutdown
                self._wait(worker)
                final = self._finish()
        finally:
            # further Ctrl-Cs must not lose the final stats or leave stages half stopped
            with interrupts_deferred(raise_first=False):
                if worker is not None:
                    self._finish_worker(worker, "stopped")  # never stop stages under a frame
                self._ring.abort()
                for component in reversed(started):
                    if component is self.publisher:
                        continue
                    component.stop()
                if self.publisher in started:
                    self.publisher.stop()
        self.summary = RunSummary(final_stats=final, stop_reason=self._stop_reason)
        self._raise_errors()
        return self.summary

    def _wait(self, worker: threading.Thread) -> None:
        """Main thread: run the preview if any, else wait for the worker to end the run.

        Waits on an Event set by the worker as it exits, not on `Thread.join`: on Python 3.11 a
        KeyboardInterrupt inside `join(timeout)` can leave a running thread looking stopped.
        A stop signal (see `stop_on_signals`) or Ctrl-C asks the worker to stop; it finishes
        the frame in hand first.
        """
        try:
            if self.preview is not None:
                self.preview.run(self, worker)
            while not self._worker_done.wait(_WAIT_POLL_S):
                if self._signalled is not None:
                    self.request_stop(self._signalled)
        except KeyboardInterrupt:  # no handler installed (library use): Ctrl-C is a clean stop
            self.request_stop("interrupted")
        self._finish_worker(worker, self._signalled or "interrupted")

    def _finish_worker(self, worker: threading.Thread, reason: str) -> None:
        """Ask the worker to stop (if it has not) and wait until it has left its loop.

        Further Ctrl-Cs while it finishes its frame are absorbed: stopping the stages under a
        running frame is what this avoids.
        """
        warn_at = time.monotonic() + _SLOW_STOP_S
        while not self._worker_done.is_set():
            try:
                self.request_stop(self._signalled or reason)
                if not self._worker_done.wait(_WAIT_POLL_S) and time.monotonic() > warn_at:
                    log.warning("waiting for the worker to finish its frame")
                    warn_at = float("inf")
            except KeyboardInterrupt:
                continue
        worker.join(timeout=1.0)  # it has left its loop; this only reaps the thread

    def _finish(self) -> dict:
        self._publish_status("stopping", self._stop_reason)
        return self._send_stats(final=True)

    def _raise_errors(self) -> None:
        if self._worker_error is not None:
            raise self._worker_error
        for source in self.sources:
            if source.error() is not None:
                raise source.error()

    # -- the worker ------------------------------------------------------------------------

    def _work(self) -> None:
        try:
            if self._pipelined_wanted():
                self._to_model = queue.Queue()
                self._model_thread = threading.Thread(
                    target=self._model_loop, name="streamav-model", daemon=True)
                self._model_thread.start()
            self._work_loop()
        except BaseException as exc:  # surfaced by run() in the main thread
            self._worker_error = exc
            self.request_stop(f"worker failed: {exc}")
        finally:
            if self._model_thread is not None:  # it finishes the frame handed to it first
                self._to_model.put(_END)  # no wait: behind at most the one item handed over
                self._model_thread.join()
                if self._model_error is not None and self._worker_error is None:
                    self._worker_error = self._model_error
            self._worker_done.set()

    def _pipelined_wanted(self) -> bool:
        """`[run] pipelined`, with a model, and the per-frame work split as this class has it
        (a subclass with its own `_process` runs it whole, in one thread)."""
        return (self.config.run.pipelined and self.model is not None
                and type(self)._process is LivePipeline._process)

    def _hand_over(self, item) -> bool:
        """Worker thread: give the model thread its next item once it has finished the one
        before: the face of frame t+1 overlaps the step of frame t, and no frame waits in the
        queue behind another (in real time it would only grow older there). A stop while the
        model thread is busy (a slow or stuck step) ends the wait: the item is not handed over
        (False)."""
        to_model = self._to_model
        with to_model.all_tasks_done:
            while to_model.unfinished_tasks:
                if self._stop.is_set():
                    return False
                to_model.all_tasks_done.wait(_READ_TIMEOUT_S)
        to_model.put(item)
        return True

    def _model_loop(self) -> None:
        """The model thread of a pipelined run: each frame's step, messages, stats and
        `on_frame`, in the order the worker handed them over; a model reset where the worker
        applied one. After a failure it only drains (the worker never blocks on it)."""
        while True:
            item = self._to_model.get()
            try:
                if item is _END:
                    return
                if self._model_error is not None:
                    continue
                if item is _MODEL_RESET:
                    self.model.reset()
                    continue
                self._finish_frame(item)
                done_ns = now_ns() - item.t_pickup
                self._processing_ns += _PROCESSING_EWMA * (done_ns - self._processing_ns)
            except BaseException as exc:  # noqa: BLE001 - the run's error, raised by run()
                self._model_error = exc
                self.request_stop(f"worker failed: {exc}")
            finally:
                self._to_model.task_done()

    def _work_loop(self) -> None:
        run = self.config.run
        read = self._ring.video.read_newest if run.realtime else self._ring.video.read_next
        deadline_ns = None if run.duration_s is None else now_ns() + int(run.duration_s * NS_PER_S)
        stale_ns = (int(run.max_staleness_s * NS_PER_S)
                    if run.realtime and run.max_staleness_s is not None else None)
        check_ns = 0  # when the sources' errors are looked at next
        while not self._stop.is_set():
            t_now = now_ns()
            if self.stats.window_due(run.stats_interval_s, t_now):
                self._send_stats(final=False)
            if deadline_ns is not None and t_now >= deadline_ns:
                self.request_stop("duration reached")
                break
            if t_now >= check_ns:  # every _READ_TIMEOUT_S, not every frame
                check_ns = t_now + _SOURCE_CHECK_NS
                failed = next((s for s in self.sources if s.error() is not None), None)
                if failed is not None:  # e.g. a microphone that stopped: no run without it
                    self.request_stop(f"source failed: {failed.name}: {failed.error()}")
                    break
            frame = read(timeout_s=_READ_TIMEOUT_S)
            if frame is None:
                if self._ring.video.closed:
                    if any(s.error() is not None for s in self.sources):
                        self.request_stop("source failed")
                    break
                self._apply_resets(None)
                continue
            self._frames_read += 1
            self._apply_resets(frame)
            if stale_ns is not None and self._too_stale(frame, stale_ns):
                self.stale_dropped += 1
                continue
            t_pickup = now_ns()
            if self._to_model is not None:  # pipelined: the step runs in the model thread
                if not self._hand_over(self._front(frame, t_pickup)):
                    break  # stopped while the model thread was busy
                self._frames_handed += 1
                if run.max_frames is not None and self._frames_handed >= run.max_frames:
                    self.request_stop("max frames reached")
                continue
            self._process(frame, t_pickup)
            done_ns = now_ns() - t_pickup
            self._processing_ns += _PROCESSING_EWMA * (done_ns - self._processing_ns)
            if run.max_frames is not None and self.stats.frames >= run.max_frames:
                self.request_stop("max frames reached")

    def _too_stale(self, frame: VideoFrame, bound_ns: int) -> bool:
        """Whether the frame's results would leave later than `bound_ns` after its capture: its
        age now plus what a frame has recently taken to process (at most half the bound, so
        that a slow stage still lets the freshest frames through)."""
        expected_ns = min(self._processing_ns, bound_ns / 2)
        return now_ns() - frame.t_capture_ns + expected_ns > bound_ns

    def _process(self, frame: VideoFrame, t_pickup: int) -> None:
        """One frame, whole: the front end, then the model and what follows."""
        self._finish_frame(self._front(frame, t_pickup))

    def _frame_audio(self, frame: VideoFrame, t_pickup: int
                     ) -> tuple[np.ndarray | None, float | None, int | None, int | None]:
        """Record the frame's decode and queue times; its audio window's (spectrum, level dBFS,
        skew ns, end sample index), all None without audio."""
        record = self.stats.latency.record_ns
        record("decode", frame.decode_ns)
        record("queue", t_pickup - frame.t_capture_ns)
        if not self.has_audio:
            return None, None, None, None
        window = self._ring.audio.window_ending_at(frame.t_media_ns,
                                                   self.config.spectrum.window_samples)
        t0 = now_ns()
        spectrum = self.spectrum.step(window.samples)
        record("spectrum", now_ns() - t0)
        return (spectrum, self.spectrum.level_dbfs(window.samples), window.skew_ns,
                window.end_index)

    def _front(self, frame: VideoFrame, t_pickup: int) -> _FrontResult:
        """Worker thread: the frame's audio window, spectrum and face, its `face` message, and
        a reset when the face has been gone too long."""
        record = self.stats.latency.record_ns
        spectrum, level, skew_ns, audio_end = self._frame_audio(frame, t_pickup)
        t0 = now_ns()
        face = self.face.step(frame.image_bgr)
        record("face", now_ns() - t0)
        self.publisher.publish(face_message(face, frame), frame.t_capture_ns)
        self._check_face_lost(face, frame)
        return _FrontResult(frame, face, level, spectrum, skew_ns, audio_end, t_pickup)

    def _finish_frame(self, front: _FrontResult) -> None:
        """The model step of a frame with a face (its state held without one), its messages,
        the frame counted, `latest` and `on_frame`: the worker thread, or the model thread of a
        pipelined run."""
        record = self.stats.latency.record_ns
        frame, face, spectrum = front.frame, front.face, front.spectrum
        messages = None
        if self.model is not None and face.found:
            t0 = now_ns()
            while not self._profile_requests.empty():
                self.model.use_profile(self._profile_requests.get())
                self.profile_switches += 1
            messages = self.model.step(face.crop_rgb, spectrum, frame.seq, mesh_in_crop(face))
            record("model", now_ns() - t0)
            if messages is not None:
                self._publish_model(messages, frame.t_capture_ns)
        elif self.model is not None:
            self.model.idle()  # no face: its state is held
        self.stats.frame_done(face.found, front.skew_ns)
        self.latest = FrameResult(frame, face, front.level, spectrum, messages, front.audio_end)
        if self.on_frame is not None:
            self.on_frame(self.latest)

    def _check_face_lost(self, face: FaceResult, frame: VideoFrame) -> None:
        """The face gone longer than `[run] face_lost_reset_s`: a new person, reset once until a
        face is back. Measured in whole milliseconds of the source's own clock (`t_media_ns`),
        so that offline runs over a file, and a rerun of a recording (whose frame times are
        rounded to audio samples), reset at the same frames."""
        if face.found:
            self._face_seen_ns = frame.t_media_ns
            return
        if self._face_seen_ns is None:
            return
        gone_ms = round((frame.t_media_ns - self._face_seen_ns) / 1e6)
        limit_s = self.config.run.face_lost_reset_s
        if gone_ms > limit_s * 1000:
            self._apply_reset(f"face lost for {gone_ms / 1000:.3f} s (face_lost_reset_s "
                              f"{limit_s:g})", external=False)

    # -- messages --------------------------------------------------------------------------

    def _on_sent(self, topic: str, t_capture_ns: int, t_enqueue_ns: int, t_sent_ns: int) -> None:
        """Publisher thread: a message left the socket."""
        self.stats.latency.record_ns("publish", t_sent_ns - t_enqueue_ns)
        if topic == protocol.TOPIC_FACE:
            self.stats.latency.record_ns("capture_to_publish", t_sent_ns - t_capture_ns)
        elif topic == protocol.TOPIC_EMOTION:
            self.stats.latency.record_ns("capture_to_emotion", t_sent_ns - t_capture_ns)

    def _publish_model(self, messages: ModelMessages, t_capture_ns: int) -> None:
        publish = self.publisher.publish
        publish(messages.emotion, t_capture_ns)
        if messages.change is not None:
            publish(messages.change, t_capture_ns)
        publish(messages.denoised, t_capture_ns, [messages.denoised_rgb])
        publish(messages.latent, t_capture_ns)

    def _on_source_status(self, state: str, reason: str) -> None:
        """A source's thread: lost / back (a camera reconnecting), or failed: then the run stops
        now (the error itself is the run's one error line, raised by `run()` at the end)."""
        if state == "source_failed":
            log.info("source failed: %s", reason)
            self._publish_status(state, reason)
            self.request_stop(f"source failed: {reason}")
            return
        log.warning("%s: %s", state.replace("_", " "), reason)
        self._publish_status(state, reason)
        if state == "source_back":  # maybe someone else in front of the camera now
            self._request_reset(f"source_back: {reason}", after_ns=now_ns(), external=True)

    def _publish_status(self, state: str, reason: str) -> None:
        message = Status(state=state, reason=reason, anchor=Anchor(**wall_anchor()))
        self.publisher.publish(message, now_ns())

    def _send_stats(self, final: bool) -> dict:
        """Publish a `stats` message (and hand it to `on_stats`); its fields as a dict."""
        stats = self._stats_payload(final)
        self.publisher.publish(stats, now_ns())
        if self.on_stats is not None:
            self.on_stats(stats)
        return stats.to_dict()

    def _stats_payload(self, final: bool) -> Stats:
        counters = getattr(self.publisher, "dropped_queue_full", 0) + getattr(
            self.publisher, "dropped_send", 0)
        stale = self.stale_dropped + self._ring.video_stale_frames
        return self.stats.payload(
            final=final,
            nonfinite_frames=0 if self.model is None else self.model.nonfinite_frames,
            model_engine=None if self.model is None else self.model.engine_label,
            dropped_frames=self._ring.video.dropped_frames + stale,
            stale_dropped=stale,
            audio_overflows=self._ring.audio_overflows,
            audio_samples_lost=self._ring.audio.overwritten_samples,
            has_audio=self.has_audio,
            publish_dropped=counters,
        )


def face_message(face: FaceResult, frame: VideoFrame) -> Face:
    """The frame's `face` message (full precision: the wire rounds)."""
    found = bool(face.found)
    boxed = found and face.box_xywh is not None
    return Face(
        found=found, frame_seq=frame.seq, pts=frame.pts_s,
        image_size=(int(frame.image_bgr.shape[1]), int(frame.image_bgr.shape[0])),
        box=tuple(float(v) for v in face.box_xywh) if boxed else None,
        # tolist(): the same Python floats as float() of each value, in one call
        landmarks=tuple(map(tuple, np.asarray(face.landmarks_xy).tolist())) if boxed else UNSET)
