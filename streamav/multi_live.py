"""Many streams in one process: `streamav live` with several inputs (repeated `--video` /
`--camera`, or `--streams FILE`).

Each input is a stream with its own id, sources, AV ring, face front end, spectrum, emotion
state and worker thread: a `LivePipeline` of its own, as a single-stream run has. What they
share is the PUB socket (every message's envelope carries its stream's id, with `seq` counted
per stream and topic) and the model step: one `SlotRunner` (streamav.stream_slots) on an engine
built for `[run] max_streams` rows, in which each stream holds a slot for its recurrent state.
The faces of a tick are stepped in one engine call; a stream without a face that tick keeps its
state. A stream that joins takes a free slot (fresh state); one whose input ends leaves and
frees it.

Admission control: a stream that asks to join while all `max_streams` slots are taken is
refused, with a `status` message of state `refused` on its own stream id (and a log line), and
the streams already running go on at their rate. The capacity is the engine's batch, so a
refused stream never slows the others.

    run = MultiRun(config)           # the shared publisher and engine
    run.start()
    run.add(StreamInput("cam0", camera="0"))   # a LivePipeline, or None when refused
    ...
    summaries = run.wait()           # {stream id: RunSummary} once every stream has ended
    run.close()

Each stream publishes its own `status` (started, stopping...) and `stats` messages. The
single-input run is `streamav.live.run_live`, unchanged: one stream, a slot runner of one slot.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import threading
from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path
from typing import Callable, Iterable

from streamav.clock import now_ns, wall_anchor
from streamav.config import LiveConfig, validate
from streamav.errors import InputError
from streamav.face_streams import FaceStreamsPipeline
from streamav.frontend.face import FaceFrontEnd
from streamav.live import _model
from streamav.model_runner import open_slots
from streamav.model_stage import ModelStage
from streamav.offline_features import OfflineInputs
from streamav.pipeline import FrameResult, LivePipeline, RunSummary
from streamav.sources.factory import build_sources
from streamav.sources.media_file import is_url
from streamav.stream_slots import AdmissionRefused, SlotRunner
from streamav.wire.messages import Anchor, Status, TopicMessage
from streamav.wire.publisher import Publisher

log = logging.getLogger(__name__)

OFFLINE_GATHER_S = 0.5
_ID = re.compile(r"^[A-Za-z0-9_.:@+-]{1,64}$")
# What a many-stream run does not do (yet): each is a single-stream option.
SINGLE_STREAM_ONLY = {"run.preview": "--preview", "run.csv": "--csv",
                      "run.write_video": "--write-video", "run.record": "--record",
                      "run.lsl": "--lsl", "run.save_features": "--save-features"}


@dataclass(frozen=True)
class StreamInput:
    """One stream of a many-stream run: its id and its video (file or URL) or camera."""

    stream_id: str
    video: str | None = None
    camera: str | None = None
    max_frames: int | None = None  # this stream stops after so many frames (None: the run's)

    def __post_init__(self) -> None:
        if not _ID.match(self.stream_id):
            raise InputError(f"stream id {self.stream_id!r}: 1-64 letters, digits or _.:@+-")
        if (self.video is None) == (self.camera is None):
            raise InputError(f"stream {self.stream_id}: one video or one camera")

    @property
    def source(self) -> str:
        return self.video if self.video is not None else f"camera {self.camera}"


def parse_stream_list(path: Path) -> list[StreamInput]:
    """A `--streams` file: one stream a line, `[ID=]SOURCE`, where SOURCE is a video file or URL
    or `camera:INDEX_OR_PATH`; blank lines and `#` comments skipped; ids default to s0, s1..."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise InputError(f"--streams {path}: {exc.strerror or exc}") from None
    entries = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            entries.append(line)
    if not entries:
        raise InputError(f"--streams {path}: no stream in the file")
    streams = []
    for i, entry in enumerate(entries):
        name, sep, source = entry.partition("=")
        if not sep or "/" in name or not _ID.match(name.strip()):
            name, source = f"s{i}", entry
        name, source = name.strip(), source.strip()
        if source.startswith("camera:"):
            streams.append(StreamInput(name, camera=source[len("camera:"):]))
        else:
            streams.append(StreamInput(name, video=source))
    return _unique(streams)


def stream_inputs(videos: Iterable[str] = (), cameras: Iterable[str] = (),
                  list_file: Path | None = None) -> list[StreamInput]:
    """The streams of repeated --video / --camera (ids s0, s1, ... in that order) and a list
    file."""
    streams = [StreamInput(f"s{i}", video=v) for i, v in enumerate(videos)]
    streams += [StreamInput(f"s{len(streams) + i}", camera=c) for i, c in enumerate(cameras)]
    if list_file is not None:
        listed = parse_stream_list(list_file)
        if streams:  # ids of the list's unnamed entries continue after the flags'
            listed = [dataclasses.replace(s, stream_id=f"s{len(streams) + i}")
                      if re.fullmatch(r"s\d+", s.stream_id) else s for i, s in enumerate(listed)]
        streams += listed
    return _unique(streams)


def _unique(streams: list[StreamInput]) -> list[StreamInput]:
    seen: set[str] = set()
    for s in streams:
        if s.stream_id in seen:
            raise InputError(f"stream id {s.stream_id!r} is given twice")
        seen.add(s.stream_id)
    return streams


class StreamPublisher:
    """One stream's view of the run's shared publisher: its messages carry its id. Starting
    and stopping the socket is the run's (start and stop do nothing)."""

    def __init__(self, publisher: Publisher, stream_id: str) -> None:
        self.publisher = publisher
        self.stream_id = stream_id

    def start(self) -> None:
        """The run's publisher is started by the run."""

    def stop(self, timeout_s: float = 2.0) -> None:
        """The run's publisher is stopped by the run."""

    def publish(self, message: TopicMessage, t_capture_ns: int, buffers=()) -> bool:
        return self.publisher.publish(message, t_capture_ns, buffers, stream=self.stream_id)

    def set_on_sent(self, callback) -> None:
        """What the shared publisher calls when one of this stream's messages has been sent
        (the stream's own `publish` and `capture_to_publish` latencies)."""
        self.publisher.set_on_sent(callback, stream=self.stream_id)

    @property
    def dropped_queue_full(self) -> int:
        return self.publisher.dropped_queue_full

    @property
    def dropped_send(self) -> int:
        return self.publisher.dropped_send


def check_multi_config(config: LiveConfig, from_flags: Iterable[str] = ()) -> None:
    """The single-stream options a many-stream run refuses (InputError naming them). The
    config's [source] video and camera are each stream's own (`StreamInput`)."""
    asked = [flag for key, flag in SINGLE_STREAM_ONLY.items()
             if attrgetter(key)(config) not in (None, False)]
    if config.face.max_faces > 1 and config.model.profile is not None:
        raise InputError("--profile is one person's calibration: with --max-faces each face "
                         "is read against its own baseline")
    if config.source.mic is not None or config.source.audio is not None:
        asked.append("--mic/--audio (each stream takes its video's own audio track)")
    if asked:
        raise InputError("several streams: " + ", ".join(asked) + " work with one stream only")


class MultiRun:
    """Several streams, one publisher, one batched model step. See the module docstring."""

    def __init__(self, config: LiveConfig, publisher: Publisher | None = None,
                 on_frame: Callable[[str, FrameResult], None] | None = None,
                 slots: SlotRunner | None = None) -> None:
        self.config = config
        pub = config.publish
        self.publisher = publisher or Publisher(
            endpoint=pub.endpoint, stream_id=pub.stream_id, queue_size=pub.queue_size,
            send_hwm=pub.send_hwm,
            curve_secret_key_file=(Path(pub.curve_secret_key_file)
                                   if pub.curve_secret_key_file else None),
            curve_client_keys=pub.curve_client_keys)
        self.on_frame = on_frame
        self.slots = slots
        self.template = None  # the model stage the streams' stages copy (None: no model)
        self.pipelines: dict[str, LivePipeline] = {}
        self.refused: list[str] = []
        self.errors: dict[str, BaseException] = {}
        self._threads: dict[str, threading.Thread] = {}
        self._lock = threading.Lock()
        self._started = False
        self._stop_reason: str | None = None

    @property
    def gather_s(self) -> float:
        """How long a tick waits for the streams' faces: real time, `[run] gather_ms`; offline
        (every frame of files), up to OFFLINE_GATHER_S, so that the streams step in lock step
        (their outputs do not depend on it: each row is its own stream's step)."""
        if self.config.run.realtime:
            return self.config.run.gather_ms / 1000
        return max(self.config.run.gather_ms / 1000, OFFLINE_GATHER_S)

    @property
    def capacity(self) -> int:
        return self.config.run.max_streams

    def start(self) -> None:
        """Bind the publisher and open the model's engine for `max_streams` rows (built on
        first use, like the single-stream engine)."""
        self.publisher.start()
        self._started = True
        self.template = _model(self.config)
        if self.template is not None and self.slots is None:
            t = self.template
            self.slots = open_slots(t.folder, t.engine, self.capacity, t.threads, t.engine_dir,
                                    OfflineInputs())
        if self.slots is not None:  # also the slots a caller handed in
            self.slots.gather_s = self.gather_s
            log.info("%d stream slots on %s", self.slots.capacity, self.slots.label)

    def stream_config(self, stream: StreamInput) -> LiveConfig:
        """The run's config with this stream's source, checked (InputError): its settings
        together, and that a video file exists (before any engine is built)."""
        config = dataclasses.replace(self.config, source=dataclasses.replace(
            self.config.source, video=stream.video, camera=stream.camera))
        if stream.max_frames is not None:
            config = dataclasses.replace(config, run=dataclasses.replace(
                config.run, max_frames=stream.max_frames))
        validate(config, set())
        video = stream.video
        if video is not None and not is_url(video) and not Path(video).exists():
            raise InputError(f"stream {stream.stream_id}: no such file: {video}")
        return config

    def add(self, stream: StreamInput) -> LivePipeline | None:
        """Start a stream now (its own thread); None when it is refused (all slots taken)."""
        if not self._started:
            raise RuntimeError("start() first")
        with self._lock:
            if stream.stream_id in self.pipelines or stream.stream_id in self.refused:
                raise InputError(f"stream id {stream.stream_id!r} is already in this run")
            config = self.stream_config(stream)  # a bad source fails before taking a slot
            running = sum(t.is_alive() for t in self._threads.values())
            handle = None
            if config.face.max_faces > 1:  # its faces take the slots, each as it appears
                pipeline = self._face_streams(stream, config)
                return self._launch(stream, pipeline)
            try:
                if self.slots is not None:
                    handle = self.slots.join()
                elif running >= self.capacity:
                    raise AdmissionRefused(f"all {self.capacity} stream slots are taken")
            except AdmissionRefused as exc:
                reason = (f"stream {stream.stream_id} ({stream.source}) refused: {exc}; "
                          f"the {self.capacity} running streams go on")
                log.warning("%s", reason)
                self.refused.append(stream.stream_id)
                self.publisher.publish(
                    Status(state="refused", reason=reason, anchor=_anchor()), now_ns(),
                    stream=stream.stream_id)
                return None
            try:  # the slot is freed whatever fails from here on
                model = None
                if self.template is not None:
                    t = self.template
                    model = ModelStage(t.folder, noise=t.noise, fps=t.fps, engine=t.engine,
                                       threads=t.threads, engine_dir=t.engine_dir,
                                       profile=t.profile_name, slot=handle)
                pipeline = LivePipeline(
                    config, build_sources(config), FaceFrontEnd(config.face),
                    StreamPublisher(self.publisher, stream.stream_id), model=model,
                    on_frame=(None if self.on_frame is None else
                              lambda result, sid=stream.stream_id: self.on_frame(sid, result)))
            except BaseException:
                if handle is not None:
                    handle.leave()
                raise
            return self._launch(stream, pipeline)

    def _launch(self, stream: StreamInput, pipeline: LivePipeline) -> LivePipeline:
        """Under the lock: the stream's thread, started."""
        if self._stop_reason is not None:
            pipeline.request_stop(self._stop_reason)
        thread = threading.Thread(target=self._run_one, args=(stream.stream_id, pipeline),
                                  name=f"streamav-stream-{stream.stream_id}", daemon=True)
        self.pipelines[stream.stream_id] = pipeline
        self._threads[stream.stream_id] = thread
        log.info("stream %s: %s", stream.stream_id, stream.source)
        thread.start()
        return pipeline

    def _face_streams(self, stream: StreamInput, config: LiveConfig) -> FaceStreamsPipeline:
        """`--max-faces N`: one source, a stream per tracked face (streamav.face_streams), each
        face taking a slot of its own as it appears (refused when all are taken)."""
        def face_model(face_id: str) -> ModelStage | None:
            t = self.template
            if t is None or self.slots is None:  # no model: the face stream is its face alone
                return None
            handle = self.slots.join()  # AdmissionRefused: the face is refused
            try:
                return ModelStage(t.folder, noise=t.noise, fps=t.fps, engine=t.engine,
                                  threads=t.threads, engine_dir=t.engine_dir, slot=handle)
            except BaseException:
                handle.leave()
                raise

        def refused(face_id: str, _reason: str) -> None:
            with self._lock:
                self.refused.append(face_id)

        return FaceStreamsPipeline(
            config, build_sources(config), FaceFrontEnd(config.face),
            StreamPublisher(self.publisher, stream.stream_id), stream.stream_id,
            face_publisher=lambda face_id: StreamPublisher(self.publisher, face_id),
            face_model=face_model, on_face_frame=self.on_frame, on_refused=refused)

    def _run_one(self, stream_id: str, pipeline: LivePipeline) -> None:
        try:
            pipeline.run()
        except BaseException as exc:  # noqa: BLE001 - one stream's failure is its own
            self.errors[stream_id] = exc
            log.warning("stream %s ended with an error: %s", stream_id, exc)
        finally:
            if pipeline.model is not None:
                pipeline.model.stop()  # its slot is free from now on (stop is idempotent)

    def stop(self, reason: str) -> None:
        """Every stream ends (each finishes its frame first)."""
        self._stop_reason = reason
        with self._lock:
            pipelines = list(self.pipelines.values())
        for pipeline in pipelines:
            pipeline.request_stop(reason)

    # what stop_on_signals calls (streamav.stop_signals.StopSignals.pipeline)
    def on_stop_signal(self, reason: str) -> bool:
        with self._lock:
            pipelines = list(self.pipelines.values())
        for pipeline in pipelines:
            pipeline.on_stop_signal(reason)
        self._stop_reason = reason
        return bool(pipelines)

    @property
    def setup_aborted(self) -> bool:
        return any(p.setup_aborted for p in list(self.pipelines.values()))

    @property
    def running(self) -> int:
        """Streams whose thread is still running."""
        with self._lock:
            return sum(t.is_alive() for t in self._threads.values())

    def wait(self, timeout_s: float | None = None) -> dict[str, RunSummary | None]:
        """Wait for every stream started so far to end; {stream id: its summary}."""
        while True:
            with self._lock:
                threads = list(self._threads.values())
            alive = [t for t in threads if t.is_alive()]
            if not alive:
                break
            for t in alive:
                t.join(0.1 if timeout_s is None else timeout_s)
            if timeout_s is not None:
                break
        return {sid: p.summary for sid, p in self.pipelines.items()}

    def close(self) -> None:
        self.stop(self._stop_reason or "stopped")
        self.wait()
        if self._started:
            self.publisher.stop()


def _anchor() -> Anchor:
    return Anchor(**wall_anchor())


def run_all(run: MultiRun, streams: list[StreamInput], signals=None) -> dict:
    """Check every stream's source, then start `run`, add the streams and wait for them all;
    the run is closed whatever happens. Returns {stream id: its summary or None}."""
    for stream in streams:
        run.stream_config(stream)  # every stream's source checked before anything is built
    if signals is not None:
        signals.pipeline = run
    try:
        run.start()
        for stream in streams:
            run.add(stream)
        return run.wait()
    finally:
        run.close()


def summary_of(summaries: dict) -> dict:
    """{"streams": {id: final stats}, "stop_reasons": {id: why}} from `run_all`'s summaries."""
    return {"streams": {sid: (s.final_stats if s is not None else None)
                        for sid, s in summaries.items()},
            "stop_reasons": {sid: (s.stop_reason if s is not None else None)
                             for sid, s in summaries.items()}}


def run_multi(config: LiveConfig, streams: list[StreamInput], signals=None) -> dict:
    """`streamav live` with several streams: every one admitted runs until its input ends (or
    the run is stopped); the result is {"streams": {id: final stats}, "stop_reasons": {id:
    why}, "refused": [ids],
    "errors": {id: message}, "engine": label}."""
    check_multi_config(config)
    run = MultiRun(config)
    summaries = run_all(run, streams, signals)
    return {**summary_of(summaries),
            "refused": list(run.refused),
            "errors": {sid: str(e) for sid, e in run.errors.items()},
            "faces": {fid: face for p in run.pipelines.values()
                      if isinstance(p, FaceStreamsPipeline)
                      for fid, face in p.face_summary().items()},
            "engine": None if run.slots is None else run.slots.label,
            "slots": run.capacity}
