"""Several people at one source: each tracked face is a stream of its own (`--max-faces N`).

A `FaceStreamsPipeline` is a `LivePipeline` for one source (its sources, AV ring, spectrum and
worker thread, its `status` and `stats` messages on the source's stream id) whose face stage
finds up to `[face] max_faces` faces a frame (streamav.frontend.face, `step_all`) and whose
`streamav.frontend.face_tracks.FaceTracker` says which face is which from frame to frame. Each
track is a stream, `<source stream id>/face<track id>` (face0, face1, ... in order of
appearance; an id is never given again in a run), with its own publisher view and its own model
stage on its own state slot of the run's batched step: its `face`, `emotion`, `emotion.change`,
`video.denoised` and `latent` messages carry that id, and its emotion baseline is its own
person's. The faces of a frame are stepped together (one engine call with the other streams'
rows: each face's step runs in a thread of its own, so that the `SlotRunner` tick gathers them).

A face stream's life:

- it starts when a face appears that matches no track: a `status` `started` on its id (or
  `refused`, when every slot of the run is taken: that face is then not served while its track
  lives, and the other streams go on);
- every frame of the source it publishes its `face` message: found with the box and landmarks,
  or found: false while its face is missing (its model state is held, as a single stream's is);
- it ends when its face has been missing longer than `[run] face_lost_reset_s` (the
  single-stream "new person" bound): a `status` `stopping` on its id, its slot is freed; a
  face that comes back later is a new stream. At the end of the run, and on a reset of the
  source (a camera that came back, the control socket's `reset`), every face stream ends.

The faces share the source's audio (one spectrum a frame, computed once): with several people
the voice is the room's, not each face's own.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import msgspec
import numpy as np

from streamav.clock import now_ns, wall_anchor
from streamav.config import LiveConfig
from streamav.frontend.face import NOT_FOUND, FaceFrontEnd, FaceResult, mesh_in_crop
from streamav.frontend.face_tracks import FaceTracker
from streamav.model_stage import ModelMessages
from streamav.pipeline import FrameResult, LivePipeline, ModelStep, PublisherLike, face_message
from streamav.ring import VideoFrame
from streamav.sources.base import Source
from streamav.stream_slots import AdmissionRefused
from streamav.wire.messages import Anchor, Stats, Status

log = logging.getLogger(__name__)


def face_stream_id(source_stream_id: str, track_id: int) -> str:
    """The stream id of a source's tracked face: `<source>/face<track id>`."""
    return f"{source_stream_id}/face{track_id}"


@dataclass
class FaceStream:
    """One tracked face: its stream id, its messages' publisher, its model stage (None: no
    model runs, or its admission was refused)."""

    stream_id: str
    publisher: PublisherLike
    model: ModelStep | None
    refused: bool = False
    frames_found: int = 0  # frames of the source with this face
    frames_stepped: int = 0  # of those, frames the model stepped (finite)


class FaceStreamsPipeline(LivePipeline):
    """One source, one stream per tracked face. See the module docstring.

    `face_publisher(face_id)`: the publisher view for a face stream's messages.
    `face_model(face_id)`: a model stage on a slot of its own, not started (None: no model);
        raises `AdmissionRefused` when every slot is taken.
    `on_face_frame(face_id, result)`: called by the worker for every face stream every frame
        (its FrameResult: the face, or NOT_FOUND while it is missing, and its model's messages).
    `on_refused(face_id, reason)`: a face was refused a slot.
    """

    def __init__(self, config: LiveConfig, sources: list[Source], face: FaceFrontEnd,
                 publisher: PublisherLike, stream_id: str,
                 face_publisher: Callable[[str], PublisherLike],
                 face_model: Callable[[str], ModelStep | None],
                 on_face_frame: Callable[[str, FrameResult], None] | None = None,
                 on_refused: Callable[[str, str], None] | None = None) -> None:
        super().__init__(config, sources, face, publisher)
        self.stream_id = stream_id
        self.face_publisher = face_publisher
        self.face_model = face_model
        self.on_face_frame = on_face_frame
        self.on_refused = on_refused
        self.tracker = FaceTracker(lost_timeout_s=config.run.face_lost_reset_s)
        self.face_streams: dict[int, FaceStream] = {}  # live tracks (refused ones too)
        self.ended_streams: list[FaceStream] = []
        self._pool: ThreadPoolExecutor | None = None
        self._engine_label: str | None = None

    # -- the run ---------------------------------------------------------------------------

    def run(self):
        try:
            return super().run()
        finally:  # whatever happened: every slot is freed
            for stream in self.face_streams.values():
                if stream.model is not None:
                    stream.model.stop()
            if self._pool is not None:
                self._pool.shutdown(wait=True)

    def _finish(self) -> dict:
        self._end_all(self._stop_reason)
        return super()._finish()

    def _apply_reset(self, reason: str, external: bool) -> None:
        """A new scene: every face stream ends (new faces take new ids), then the source's
        stages start again and its `reset` status goes out."""
        self._end_all(f"reset: {reason}")
        self.tracker.reset()
        super()._apply_reset(reason, external)

    def _stats_payload(self, final: bool) -> Stats:
        streams = [*self.ended_streams, *self.face_streams.values()]
        nonfinite = sum(s.model.nonfinite_frames for s in streams if s.model is not None)
        payload = super()._stats_payload(final)
        return msgspec.structs.replace(payload, nonfinite_frames=nonfinite,
                                       model_engine=self._engine_label)

    # -- face streams ----------------------------------------------------------------------

    def _begin(self, track_id: int, frame: VideoFrame, face: FaceResult) -> None:
        face_id = face_stream_id(self.stream_id, track_id)
        publisher = self.face_publisher(face_id)
        x, y, w, h = face.box_xywh
        where = f"frame {frame.seq}, box x {x:.0f} y {y:.0f} w {w:.0f} h {h:.0f}"
        try:
            model = self.face_model(face_id)
        except AdmissionRefused as exc:
            reason = f"face {face_id} ({where}) refused: {exc}; the running streams go on"
            log.warning("%s", reason)
            self.face_streams[track_id] = FaceStream(face_id, publisher, None, refused=True)
            _publish_status(publisher, "refused", reason)
            if self.on_refused is not None:
                self.on_refused(face_id, reason)
            return
        stream = FaceStream(face_id, publisher, model)
        self.face_streams[track_id] = stream  # before start(): a failing start frees the slot
        if model is not None:
            model.start()
            self._engine_label = model.engine_label
        log.info("face stream %s: %s", face_id, where)
        _publish_status(publisher, "started", f"face {track_id} of stream {self.stream_id} "
                                              f"({where})")

    def _end(self, track_id: int, reason: str) -> None:
        stream = self.face_streams.pop(track_id)
        if stream.model is not None:
            stream.model.stop()  # its slot is free from now on
        self.ended_streams.append(stream)
        if not stream.refused:
            log.info("face stream %s ended: %s", stream.stream_id, reason)
            _publish_status(stream.publisher, "stopping", reason)

    def _end_all(self, reason: str) -> None:
        for track_id in sorted(self.face_streams):
            self._end(track_id, reason)

    # -- the worker ------------------------------------------------------------------------

    def _process(self, frame: VideoFrame, t_pickup: int | None = None) -> None:
        record = self.stats.latency.record_ns
        if t_pickup is None:
            t_pickup = now_ns()
        spectrum, level, skew_ns, audio_end = self._frame_audio(frame, t_pickup)
        t0 = now_ns()
        faces = self.face.step_all(frame.image_bgr)
        record("face", now_ns() - t0)
        update = self.tracker.update(faces, frame.t_media_ns)
        limit_s = self.config.run.face_lost_reset_s
        for track_id in update.ended:
            self._end(track_id, f"face lost for more than {limit_s:g} s (face_lost_reset_s)")
        for track_id in update.started:
            self._begin(track_id, frame, faces[update.matched[track_id]])
        seen: dict[int, FaceResult] = {}
        for track_id, stream in sorted(self.face_streams.items()):
            index = update.matched.get(track_id)
            face = NOT_FOUND if index is None else faces[index]
            seen[track_id] = face
            if stream.refused:
                continue
            stream.publisher.publish(face_message(face, frame), frame.t_capture_ns)
            if face.found:
                stream.frames_found += 1
            elif stream.model is not None:
                stream.model.idle()  # no face: its state is held, the tick need not wait
        t0 = now_ns()
        messages = self._step_faces(
            [(track_id, face) for track_id, face in seen.items()
             if face.found and self.face_streams[track_id].model is not None],
            spectrum, frame.seq)
        if messages:
            record("model", now_ns() - t0)
        results = {}
        for track_id, face in seen.items():
            stream = self.face_streams[track_id]
            if stream.refused:
                continue
            message = messages.get(track_id)
            if message is not None:
                stream.frames_stepped += 1
                self._publish_face_model(stream.publisher, message, frame.t_capture_ns)
            results[stream.stream_id] = FrameResult(frame, face, level, spectrum, message,
                                                    audio_end)
        self.stats.frame_done(bool(faces), skew_ns)
        self.latest = next((r for r in results.values() if r.face.found),
                           FrameResult(frame, NOT_FOUND, level, spectrum, None, audio_end))
        if self.on_face_frame is not None:
            for face_id, result in results.items():
                self.on_face_frame(face_id, result)

    def _step_faces(self, jobs: list[tuple[int, FaceResult]], spectrum: np.ndarray | None,
                    frame_seq: int) -> dict[int, ModelMessages | None]:
        """Each face's model step, all at once: one in this thread, the others in the pool's
        (a slot runner's tick gathers the rows of the threads that wait in it)."""
        if not jobs:
            return {}

        def step(job: tuple[int, FaceResult]) -> ModelMessages | None:
            track_id, face = job
            model = self.face_streams[track_id].model
            return model.step(face.crop_rgb, spectrum, frame_seq, mesh_in_crop(face))

        if len(jobs) > 1 and self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=max(1, self.config.face.max_faces - 1),
                                            thread_name_prefix=f"streamav-faces-{self.stream_id}")
        futures = [(job[0], self._pool.submit(step, job)) for job in jobs[1:]]
        out = {jobs[0][0]: step(jobs[0])}
        for track_id, future in futures:
            out[track_id] = future.result()
        return out

    def _publish_face_model(self, publisher: PublisherLike, messages: ModelMessages,
                            t_capture_ns: int) -> None:
        publisher.publish(messages.emotion, t_capture_ns)
        if messages.change is not None:
            publisher.publish(messages.change, t_capture_ns)
        publisher.publish(messages.denoised, t_capture_ns, [messages.denoised_rgb])
        publisher.publish(messages.latent, t_capture_ns)

    def face_summary(self) -> dict[str, dict]:
        """{face stream id: frames with its face, frames stepped, refused} of the run so far."""
        streams = [*self.ended_streams, *self.face_streams.values()]
        return {s.stream_id: {"frames_found": s.frames_found, "frames_stepped": s.frames_stepped,
                              "refused": s.refused} for s in streams}


def _publish_status(publisher: PublisherLike, state: str, reason: str) -> None:
    publisher.publish(Status(state=state, reason=reason, anchor=Anchor(**wall_anchor())),
                      now_ns())
