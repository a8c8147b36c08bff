"""What a model replica of `streamav serve` does, without Ray: per-stream state slots and one
batched engine step per batch of requests.

    core = ReplicaCore(folder, EngineChoice("onnx"), capacity=8, snapshot_every=30)
    replies = core.handle([StepRequest(...), ...])   # one Serve batch -> one engine tick

Each stream that a replica serves holds a slot of a `TickSlots` (streamav.stream_slots'
SlotRunner: the recurrent state of `capacity` streams as numpy rows, the engine built for that
static batch) and a `ModelStage` of its own (streamav.model_stage: the emotion estimator's
baseline and smoothing, the change detector, the messages), exactly as a stream of
`streamav live` has. A batch's frames are stepped in one engine call; then each stream's
stage turns its row into the usual messages, so a stream's results equal the same clip run
alone in one process (tests/test_serve.py).

Streams, snapshots, refusals:

- A stream's first request (`new`) takes a free slot, in its fresh state; with every slot
  taken it is refused (`outcome="refused"`) and the streams already here go on unslowed.
- Every `snapshot_every` frames a reply carries the stream's `StreamSnapshot` (its slot's
  state rows, the emotion baseline and smoothing, the change detector). The ingress keeps the
  newest; when the replica dies, the stream's next request carries it (`resume`) to another
  replica, which restores it (or starts the stream fresh when there is none).
- A request for a stream this replica does not hold, neither new nor resuming, is answered
  `unknown` (the ingress then sends its snapshot).
- `reset` (a new person at the client) and `leave` (the stream ended; its slot is freed) are
  requests of their own, in the stream's order.
- A request that cannot be handled (a frame request without a frame, inputs of the wrong
  shape) is answered `error` with the reason; the other streams of its batch are unaffected.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from streamav.engines.choice import EngineChoice
from streamav.model.inputs import SPECTRUM_BINS, face_to_model
from streamav.model_runner import open_slots
from streamav.model_stage import DEFAULT_FPS, ModelStage
from streamav.offline_features import OfflineInputs
from streamav.serve.frames import CROP_SHAPE, MESH_POINTS, FrameInputs
from streamav.stream_slots import AdmissionRefused, SlotHandle, SlotRunner
from streamav.wire.messages import Emotion, EmotionChange, Latent, VideoDenoised

log = logging.getLogger(__name__)

Outcome = Literal["ok", "refused", "unknown", "nonfinite", "done", "error"]


class TickSlots:
    """A SlotRunner (streamav.stream_slots) stepped by its caller, one tick per call
    (`step_tick`), rather than by gathering its streams' threads: a Serve batch is already a
    tick. Adds the snapshot and restore of one slot's state rows. The runner's engines are
    those of `open_slots`: the batch-`capacity` engine, and on the CPU default the shipped
    batch-1 step beside it, so that a tick of one row does not pay for a padded batch."""

    def __init__(self, runner: SlotRunner) -> None:
        self.runner = runner

    @property
    def capacity(self) -> int:
        return self.runner.capacity

    @property
    def label(self) -> str:
        return self.runner.label

    @property
    def streams(self) -> int:
        return self.runner.streams

    def join(self) -> SlotHandle:
        return self.runner.join()

    def step_tick(self, rows: dict[int, tuple[np.ndarray, np.ndarray]]
                  ) -> dict[int, dict[str, np.ndarray] | None]:
        """{slot: ((1, 513) spectrum, (1, 3, 64, 64) face)} -> {slot: outputs, None when
        non-finite (counted, the slot reset)}, on the smallest engine that holds the rows."""
        return self.runner.step_rows(rows)

    def state_rows(self, slot: int) -> tuple[np.ndarray, ...]:
        """A copy of one slot's state, each array (1, ...)."""
        return self.runner.slot_state(slot)

    def restore_rows(self, slot: int, rows: tuple[np.ndarray, ...]) -> None:
        self.runner.set_slot_state(slot, rows)


@dataclass(frozen=True)
class StreamSnapshot:
    """A stream's whole model state after frame `frame_seq` (its `frames`-th stepped frame)."""

    frame_seq: int
    frames: int
    slot_state: tuple[np.ndarray, ...]
    emotion: dict | None  # EmotionStream's attributes but its estimator
    detector: dict | None  # EmotionChangeDetector's attributes


@dataclass(frozen=True)
class StepRequest:
    """One request to a replica: a frame, or a stream's `reset` / `leave`."""

    stream: str
    kind: Literal["frame", "reset", "leave"] = "frame"
    frame: FrameInputs | None = None
    new: bool = False  # the stream may take a slot here, in its fresh state
    resume: StreamSnapshot | None = None  # the stream moved here: restore this


@dataclass(frozen=True)
class StepReply:
    stream: str
    outcome: Outcome
    replica: str = ""
    node: str = ""  # the Ray node of the replica
    frame_seq: int | None = None
    emotion: Emotion | None = None
    change: EmotionChange | None = None
    denoised: VideoDenoised | None = None
    denoised_rgb: np.ndarray | None = None
    latent: Latent | None = None
    snapshot: StreamSnapshot | None = None
    reason: str = ""
    joined: bool = False  # this request took the stream's slot here (new or resumed)


class _RowRunner:
    """A stream's slot as the model stage's runner (streamav.model_runner.StepRunner): `step`
    hands back the row its replica stepped in the tick (`ready`)."""

    def __init__(self, handle: SlotHandle) -> None:
        self.handle = handle
        self.label = handle.label
        self.labels = handle.labels
        self.ready: dict[str, np.ndarray] | None = None

    @property
    def nonfinite_count(self) -> int:
        return self.handle.nonfinite_count

    def step(self, spectrum: np.ndarray, face: np.ndarray) -> dict[str, np.ndarray] | None:
        ready, self.ready = self.ready, None
        return ready

    def reset(self) -> None:
        self.handle.reset()

    def idle(self) -> None:
        """Nothing to do: a replica's ticks wait for no stream."""

    def leave(self) -> None:
        self.handle.leave()


class _Stream:
    def __init__(self, stage: ModelStage, runner: _RowRunner) -> None:
        self.stage = stage
        self.runner = runner
        self.frames = 0

    @property
    def slot(self) -> int:
        return self.runner.handle.slot


def _model_inputs(frame: FrameInputs) -> tuple[np.ndarray, np.ndarray]:
    """The engine's (1, 513) spectrum and (1, 3, 64, 64) face, as ModelStage.step makes them."""
    face = np.ascontiguousarray(face_to_model(frame.crop_rgb))[None]
    power = np.zeros(SPECTRUM_BINS, np.float32) if frame.spectrum is None else frame.spectrum
    return np.ascontiguousarray(power, np.float32)[None], face


class ReplicaCore:
    """See the module docstring. `choice`: the engine (its batch is set to `capacity`)."""

    def __init__(self, folder: Path, choice: EngineChoice | None = None, capacity: int = 8,
                 snapshot_every: int = 30, threads: int = 1, engine_dir: Path | None = None,
                 name: str = "", node: str = "") -> None:
        if snapshot_every < 1:
            raise ValueError(f"snapshot_every must be at least 1, got {snapshot_every}")
        self.folder = Path(folder)
        self.choice = choice or EngineChoice()
        self.name = name
        self.node = node
        self.snapshot_every = snapshot_every
        self.threads = threads
        self.engine_dir = engine_dir
        # an engine not in the cache yet is built here, its parity checked on real frames
        self.slots = TickSlots(open_slots(self.folder, self.choice, capacity, threads,
                                          engine_dir, OfflineInputs(), gather_s=0.0))
        self.streams: dict[str, _Stream] = {}
        self.batches = 0  # handle() calls with at least one frame
        self.frames = 0  # frames stepped

    @property
    def capacity(self) -> int:
        return self.slots.capacity

    @property
    def label(self) -> str:
        return self.slots.label

    # -- streams ----------------------------------------------------------------------------

    def _join(self, request: StepRequest) -> _Stream:
        handle = self.slots.join()  # AdmissionRefused when every slot is taken
        try:
            runner = _RowRunner(handle)
            fps = request.frame.fps if request.frame is not None else DEFAULT_FPS
            stage = ModelStage(self.folder, fps=fps, engine=self.choice, threads=self.threads,
                               engine_dir=self.engine_dir, slot=runner)  # type: ignore[arg-type]
            stage.start()
            stream = _Stream(stage, runner)
            if request.resume is not None:
                _restore(stream, self.slots, request.resume)
        except BaseException:
            handle.leave()
            raise
        self.streams[request.stream] = stream
        log.info("replica %s: stream %s joined (slot %d%s)", self.name, request.stream,
                 handle.slot, "" if request.resume is None else
                 f", resumed from frame {request.resume.frame_seq}")
        return stream

    def _leave(self, stream_id: str) -> None:
        stream = self.streams.pop(stream_id, None)
        if stream is not None:
            stream.stage.stop()

    def snapshot(self, stream_id: str, frame_seq: int) -> StreamSnapshot:
        stream = self.streams[stream_id]
        stage_state = stream.stage.snapshot_state()
        return StreamSnapshot(
            frame_seq=frame_seq, frames=stream.frames,
            slot_state=self.slots.state_rows(stream.slot),
            emotion=stage_state["emotion"], detector=stage_state["detector"])

    # -- requests ---------------------------------------------------------------------------

    def handle(self, requests: list[StepRequest]) -> list[StepReply]:
        """One batch of requests: commands and joins first, in order; then every frame in one
        engine tick (a stream twice in the batch: its second frame in a next tick)."""
        replies: list[StepReply | None] = [None] * len(requests)
        frames: list[int] = []
        for i, request in enumerate(requests):
            stream = self.streams.get(request.stream)
            if request.kind == "leave":
                self._leave(request.stream)
                replies[i] = self._reply(request, "done")
                continue
            joined = False
            try:
                if request.kind == "frame":
                    _check_frame(request.frame)
                if stream is None:
                    if not request.new and request.resume is None:
                        replies[i] = self._reply(request, "unknown",
                                                 reason=f"replica {self.name} does not hold it")
                        continue
                    try:
                        stream = self._join(request)
                        joined = True
                    except AdmissionRefused as exc:
                        replies[i] = self._reply(request, "refused", reason=str(exc))
                        continue
                if request.kind == "reset":
                    stream.stage.reset()
                    replies[i] = self._reply(request, "done", joined=joined)
                else:
                    frames.append(i)
                    if joined:
                        replies[i] = self._reply(request, "ok", joined=True)  # placeholder
            except Exception as exc:  # noqa: BLE001 - this request only, not its batch
                replies[i] = self._error(request, exc, joined)
        pending = frames
        while pending:
            tick, later, slots_in_tick = [], [], set()
            for i in pending:
                slot = self.streams[requests[i].stream].slot
                (later if slot in slots_in_tick else tick).append(i)
                slots_in_tick.add(slot)
            for i, reply in zip(tick, self._tick([requests[i] for i in tick],
                                                 [replies[i] for i in tick])):
                replies[i] = reply
            pending = later
        return replies  # type: ignore[return-value]

    def _tick(self, requests: list[StepRequest], placeholders: list[StepReply | None]
              ) -> list[StepReply]:
        streams = [self.streams[r.stream] for r in requests]
        replies: list[StepReply | None] = [None] * len(requests)
        rows = {}
        for k, (stream, request) in enumerate(zip(streams, requests)):
            try:
                rows[stream.slot] = _model_inputs(request.frame)
            except Exception as exc:  # noqa: BLE001 - this stream's frame only
                replies[k] = self._error(request, exc, _joined(placeholders[k]))
        outputs = self.slots.step_tick(rows) if rows else {}
        self.batches += 1
        self.frames += len(rows)
        for k, (stream, request) in enumerate(zip(streams, requests)):
            if replies[k] is None:
                try:
                    replies[k] = self._finish(stream, request, outputs[stream.slot],
                                              _joined(placeholders[k]))
                except Exception as exc:  # noqa: BLE001 - this stream's frame only
                    replies[k] = self._error(request, exc, _joined(placeholders[k]))
        return replies  # type: ignore[return-value]

    def _finish(self, stream: _Stream, request: StepRequest,
                outputs: dict[str, np.ndarray] | None, joined: bool) -> StepReply:
        """A stream's row of the tick through its own model stage: its reply."""
        frame = request.frame
        stream.runner.ready = outputs
        messages = stream.stage.step(frame.crop_rgb, frame.spectrum, frame.seq,
                                     frame.mesh_crop_xy)
        if messages is None:
            return self._reply(request, "nonfinite", joined=joined)
        stream.frames += 1
        snapshot = (self.snapshot(request.stream, frame.seq)
                    if stream.frames % self.snapshot_every == 0 else None)
        return StepReply(
            stream=request.stream, outcome="ok", replica=self.name, node=self.node,
            frame_seq=frame.seq,
            emotion=messages.emotion, change=messages.change, denoised=messages.denoised,
            denoised_rgb=messages.denoised_rgb, latent=messages.latent, snapshot=snapshot,
            joined=joined)

    def _error(self, request: StepRequest, exc: Exception, joined: bool) -> StepReply:
        log.warning("replica %s: a %s of stream %s failed: %s", self.name, request.kind,
                    request.stream, exc)
        return self._reply(request, "error", reason=f"{type(exc).__name__}: {exc}",
                           joined=joined)

    def _reply(self, request: StepRequest, outcome: Outcome, reason: str = "",
               joined: bool = False) -> StepReply:
        return StepReply(stream=request.stream, outcome=outcome, replica=self.name, node=self.node,
                         frame_seq=None if request.frame is None else request.frame.seq,
                         reason=reason, joined=joined)

    def close(self) -> None:
        for stream_id in list(self.streams):
            self._leave(stream_id)


def _joined(placeholder: StepReply | None) -> bool:
    return placeholder is not None and placeholder.joined


def _check_frame(frame: FrameInputs | None) -> None:
    """ValueError unless `frame` holds the model inputs in their shapes."""
    if frame is None:
        raise ValueError("a frame request without a frame")
    if np.shape(frame.crop_rgb) != CROP_SHAPE:
        raise ValueError(f"a face crop is {CROP_SHAPE}, not {np.shape(frame.crop_rgb)}")
    if frame.spectrum is not None and np.shape(frame.spectrum) != (SPECTRUM_BINS,):
        raise ValueError(f"a spectrum is ({SPECTRUM_BINS},), not {np.shape(frame.spectrum)}")
    if np.shape(frame.mesh_crop_xy) != (MESH_POINTS, 2):
        raise ValueError(f"a face mesh is ({MESH_POINTS}, 2), not "
                         f"{np.shape(frame.mesh_crop_xy)}")


def _restore(stream: _Stream, slots: TickSlots, snapshot: StreamSnapshot) -> None:
    slots.restore_rows(stream.slot, snapshot.slot_state)
    stream.frames = snapshot.frames
    stream.stage.restore_state({"emotion": snapshot.emotion, "detector": snapshot.detector})
