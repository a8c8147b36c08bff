"""`streamav live --lsl`: the emotion as Lab Streaming Layer streams (the `lsl` extra: pylsl,
whose wheel ships liblsl).

Two outlets, opened once capture has started (the model's classes are known by then):

- `Emotion` (type "Emotion", name "streamav emotion"): one float32 channel per class, each
  the class's probability, one sample per frame the model read (the `emotion` message's
  `probs`, in its `labels` order; the channels are labelled in the stream's description);
  irregular rate (frames without a face send nothing);
- `Markers` (type "Markers", name "streamav emotion changes"): one string channel, one sample
  per `emotion.change`: the new label.

Both carry source_id = the run's stream id, and every sample the capture time of its frame
(the messages' `t_capture`) mapped to LSL's clock (`local_clock()`): the offset between
streamav's monotonic clock and LSL's is measured when the outlets open and again every
`_CLOCK_CHECK_S` (on Linux both are CLOCK_MONOTONIC and the offset is ~0). LabRecorder and any
LSL inlet then line the emotion up with EEG or other streams recorded on the same network.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Callable

from streamav import __version__
from streamav.clock import NS_PER_S
from streamav.errors import InputError

log = logging.getLogger(__name__)

LSL_HINT = "pip install 'streamav[lsl]' (or pip install pylsl)"
EMOTION_TYPE = "Emotion"
EMOTION_NAME = "streamav emotion"
MARKERS_TYPE = "Markers"
MARKERS_NAME = "streamav emotion changes"
_CLOCK_CHECK_S = 10.0
_USER_CONFIGS = (Path("lsl_api.cfg"), Path.home() / "lsl_api" / "lsl_api.cfg",
                 Path("/etc/lsl_api/lsl_api.cfg"))


def import_pylsl():
    """pylsl, or InputError with the install hint (also when liblsl cannot be loaded)."""
    try:
        import pylsl
    except ImportError:
        raise InputError(f"--lsl needs pylsl: {LSL_HINT}") from None
    except (OSError, RuntimeError) as exc:  # pylsl is there but its liblsl cannot load
        raise InputError(f"--lsl: pylsl cannot load liblsl ({' '.join(str(exc).split())}); "
                         f"reinstall it: {LSL_HINT}") from None
    if not os.environ.get("LSLAPICFG") and not any(p.is_file() for p in _USER_CONFIGS):
        try:  # liblsl's own INFO lines on stderr otherwise; a user's lsl_api.cfg wins
            pylsl.set_config_content("[log]\nlevel = -2\n")
        except Exception:  # noqa: BLE001 - an older pylsl: its log lines stay
            pass
    return pylsl


class ClockMap:
    """streamav's monotonic clock (ns) to LSL's `local_clock()` (s)."""

    def __init__(self, local_clock: Callable[[], float],
                 monotonic_ns: Callable[[], int] = time.monotonic_ns) -> None:
        self._local_clock = local_clock
        self._monotonic_ns = monotonic_ns
        self.offset_s = 0.0
        self._next_check_ns = 0
        self.measure()

    def measure(self) -> float:
        """LSL minus monotonic, from the tightest of a few bracketed readings."""
        best = None
        for _ in range(5):
            before = self._monotonic_ns()
            lsl = self._local_clock()
            after = self._monotonic_ns()
            if best is None or after - before < best[0]:
                best = (after - before, lsl - (before + after) / 2 / NS_PER_S)
        self.offset_s = best[1]
        self._next_check_ns = self._monotonic_ns() + int(_CLOCK_CHECK_S * NS_PER_S)
        return self.offset_s

    def lsl_time(self, t_ns: int) -> float:
        if t_ns >= self._next_check_ns:
            self.measure()
        return t_ns / NS_PER_S + self.offset_s


class LslOutlet:
    """The pipeline's `on_frame` consumer for `--lsl`. `open()` once capture runs (labels
    known), then every `FrameResult`; `close()` at the end."""

    def __init__(self, stream_id: str, labels: Callable[[], tuple[str, ...]],
                 model_engine: Callable[[], str | None] = lambda: None) -> None:
        self.stream_id = stream_id
        self._labels = labels
        self._model_engine = model_engine
        self.pylsl = import_pylsl()
        self.emotion = None
        self.markers = None
        self.clock: ClockMap | None = None
        self.labels: tuple[str, ...] = ()
        self.samples = 0
        self.changes = 0

    def open(self) -> None:
        pylsl = self.pylsl
        self.labels = tuple(self._labels())
        if not self.labels:
            log.warning("--lsl: no model runs, so there is no emotion to stream")
            return
        info = pylsl.StreamInfo(EMOTION_NAME, EMOTION_TYPE, len(self.labels),
                                pylsl.IRREGULAR_RATE, pylsl.cf_float32, self.stream_id)
        channels = info.desc().append_child("channels")
        for label in self.labels:
            channel = channels.append_child("channel")
            channel.append_child_value("label", label)
            channel.append_child_value("unit", "probability")
            channel.append_child_value("type", EMOTION_TYPE)
        self._describe(info, "emotion probabilities, one sample per frame the model read")
        markers = pylsl.StreamInfo(MARKERS_NAME, MARKERS_TYPE, 1, pylsl.IRREGULAR_RATE,
                                   pylsl.cf_string, self.stream_id)
        self._describe(markers, "emotion.change: the new label")
        self.emotion = pylsl.StreamOutlet(info)
        self.markers = pylsl.StreamOutlet(markers)
        self.clock = ClockMap(pylsl.local_clock)

    def _describe(self, info, what: str) -> None:
        element = info.desc().append_child("streamav")
        element.append_child_value("version", __version__)
        element.append_child_value("stream", self.stream_id)
        element.append_child_value("content", what)
        element.append_child_value("timestamps", "capture time of the frame, on LSL's clock")
        engine = self._model_engine()
        if engine:
            element.append_child_value("engine", engine)

    def __call__(self, result) -> None:
        model = result.model
        if model is None or self.emotion is None or self.clock is None:
            return
        emotion = model.emotion
        stamp = self.clock.lsl_time(result.frame.t_capture_ns)
        probs = dict(zip(emotion.labels, emotion.probs))
        self.emotion.push_sample([float(probs.get(label, 0.0)) for label in self.labels], stamp)
        self.samples += 1
        if model.change is not None:
            self.markers.push_sample([model.change.to], stamp)
            self.changes += 1

    def close(self) -> None:
        """Drop the outlets (inlets see the streams end)."""
        self.emotion = self.markers = None

    def note(self) -> str:
        return (f"LSL: {self.samples} emotion samples and {self.changes} markers sent "
                f"(source_id {self.stream_id})")


def describe(info: Any) -> dict[str, Any]:
    """What an inlet learns of one of these streams (tests, tools)."""
    channels = []
    element = info.desc().child("channels").child("channel")
    while not element.empty():
        channels.append(element.child_value("label"))
        element = element.next_sibling()
    return {"name": info.name(), "type": info.type(), "source_id": info.source_id(),
            "channel_count": info.channel_count(), "channels": channels}
