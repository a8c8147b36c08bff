"""What a live run leaves behind for people without a display or a subscriber of their own.

Each of these takes every `FrameResult` of the run, in order, from the pipeline's worker thread
(`FrameFanout` hands each result to all of them):

- `EmotionTally`: the emotion readings counted for the final summary line (the top classes and
  their share of the frames read) and, for `--demo`, a timeline per second.
- `CsvOutput` (`--csv OUT.csv`): one row per processed frame, for pandas (columns below).
- `VideoOutput` (`--write-video OUT.mp4`): the preview window's image of every processed frame
  (frame, face box, crop, denoised crop, emotion bars), H.264 through PyAV, encoded in a thread
  of its own so that the worker does not wait on the encoder unless the encoder falls behind
  by more than `VIDEO_QUEUE_FRAMES`.
- `DenoisedStrip` (`--demo`): a few frames' input crop above the model's denoised face, as one
  PNG.

Times: a file's frames carry their media time (pts, seconds from the start of the file); a
camera's frames are timed from the first frame's capture time. The CSV's `timestamp_s`, the
video's frame times and the timeline's seconds all use this time.
"""

from __future__ import annotations

import csv
import logging
import queue
import tempfile
import threading
from collections import Counter
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from streamav.clock import NS_PER_S

log = logging.getLogger(__name__)

VIDEO_QUEUE_FRAMES = 32  # frames the encoder thread may lag behind the worker
_ENCODERS = ("libx264", "h264", "mpeg4")  # the first one this PyAV's FFmpeg has is used
_LEARNING_S = 3.0  # a new face's baseline is young for this long (streamav/preview.py)

# The CSV's columns before the emotion probabilities (one column per class, the model's labels)
# and after them. Box: pixels of the source frame, top-left corner and size (py-feat's FaceRectX,
# FaceRectY, FaceRectWidth, FaceRectHeight; OpenFace's `success` is `face_found`).
CSV_FRONT = ("frame", "timestamp_s", "face_found", "face_x", "face_y", "face_width",
             "face_height", "alignment_rms_px")
CSV_BACK = ("emotion_top", "emotion_confidence", "uncertain")


class MediaClock:
    """Seconds of a frame: its pts (files), else since the first frame's capture (cameras)."""

    def __init__(self) -> None:
        self._first_capture_ns: int | None = None

    def seconds(self, result) -> float:
        frame = result.frame
        if self._first_capture_ns is None:
            self._first_capture_ns = frame.t_capture_ns
        if frame.pts_s is not None:
            return float(frame.pts_s)
        return (frame.t_capture_ns - self._first_capture_ns) / NS_PER_S


class FrameFanout:
    """The pipeline's `on_frame`: every result to each consumer, in the order given."""

    def __init__(self, consumers: Iterable[Callable]) -> None:
        self.consumers = [c for c in consumers if c is not None]

    def __call__(self, result) -> None:
        for consumer in self.consumers:
            consumer(result)


# -- the emotion summary -----------------------------------------------------------------------

class EmotionTally:
    """Counts each frame's emotion reading: the top class, and whether it was `uncertain`."""

    def __init__(self) -> None:
        self.clock = MediaClock()
        self.frames_read = 0  # frames with a face that the model read
        self.top = Counter()  # top class -> frames
        self.uncertain = 0
        self.max_baseline_s = 0.0  # how long the estimator had seen the face, at most
        self.per_second: dict[int, Counter] = {}
        self.uncertain_per_second: Counter = Counter()
        self.faceless_seconds: set[int] = set()

    def __call__(self, result) -> None:
        second = int(self.clock.seconds(result))
        if result.model is None:
            if not result.face.found:
                self.faceless_seconds.add(second)
            return
        emotion = result.model.emotion  # streamav.wire.messages.Emotion
        self.frames_read += 1
        self.top[emotion.top] += 1
        self.per_second.setdefault(second, Counter())[emotion.top] += 1
        if emotion.uncertain:
            self.uncertain += 1
            self.uncertain_per_second[second] += 1
        baseline = emotion.baseline_s
        self.max_baseline_s = max(self.max_baseline_s,
                                  float("inf") if baseline is None else float(baseline))

    def summary(self, classes: int = 3) -> str:
        """`emotion: happy 54 %, disgusted 41 %, angry 5 % of 56 face frames, all uncertain`:
        the classes most often on top, each with its share of the frames read."""
        if self.frames_read == 0:
            return "emotion: no face read"
        n = self.frames_read
        shares = ", ".join(f"{label} {round(100 * count / n)} %"
                           for label, count in self.top.most_common(classes))
        text = f"emotion: {shares} of {n} face frame{'s' if n != 1 else ''}"
        if self.uncertain == n:
            text += ", all uncertain"
        elif self.uncertain:
            text += f", uncertain on {round(100 * self.uncertain / n)} %"
        return text

    def timeline(self) -> str:
        """`0-1 s disgusted?, 1-2 s happy?` (? : uncertain on most of that second's frames),
        consecutive seconds with the same reading merged; `no face` for seconds without one."""
        seconds = sorted(set(self.per_second) | self.faceless_seconds)
        if not seconds:
            return "no frames"
        spans: list[list] = []  # [first second, last second, text]
        for second in seconds:
            counts = self.per_second.get(second)
            if counts is None:
                text = "no face"
            else:
                unsure = self.uncertain_per_second[second] * 2 > sum(counts.values())
                text = counts.most_common(1)[0][0] + ("?" if unsure else "")
            if spans and spans[-1][2] == text and spans[-1][1] == second - 1:
                spans[-1][1] = second
            else:
                spans.append([second, second, text])
        line = ", ".join(f"{first}-{last + 1} s {text}" for first, last, text in spans)
        if self.uncertain:
            line += " (? uncertain"
            if self.max_baseline_s < _LEARNING_S:
                line += ": a new face is read against its own baseline, learnt over ~3 s"
            line += ")"
        return line


# -- CSV -------------------------------------------------------------------------------------

def _number(value, digits: int) -> str:
    return "" if value is None else f"{float(value):.{digits}f}"


class CsvOutput:
    """`--csv`: one row per processed frame. The header is written with the first row, once the
    model's classes are known (`labels()`: the running model's labels, () without a model);
    a run without frames leaves a header only."""

    def __init__(self, path: Path, labels: Callable[[], tuple[str, ...]]) -> None:
        self.path = Path(path)
        self._labels = labels
        self._file = None
        self._writer = None
        self.columns: tuple[str, ...] = ()
        self.rows = 0
        self.clock = MediaClock()

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.labels = tuple(self._labels())
        self.columns = CSV_FRONT + self.labels + (CSV_BACK if self.labels else ())
        self._file = self.path.open("w", newline="", encoding="utf-8")
        self._writer = csv.writer(self._file)
        self._writer.writerow(self.columns)

    def __call__(self, result) -> None:
        if self._file is None:
            self._open()
        face = result.face
        box = face.box_xywh if face.found and face.box_xywh is not None else (None,) * 4
        row = [result.frame.seq, f"{self.clock.seconds(result):.4f}", int(bool(face.found)),
               *(_number(v, 1) for v in box),
               _number(face.alignment_rms_px if face.found else None, 3)]
        if self.labels:
            model = result.model
            if model is None:
                row += [""] * (len(self.labels) + len(CSV_BACK))
            else:
                emotion = model.emotion
                probs = dict(zip(emotion.labels, emotion.probs))
                row += [_number(probs.get(label), 5) for label in self.labels]
                row += [emotion.top, _number(emotion.confidence, 5), int(emotion.uncertain)]
        self._writer.writerow(row)
        self.rows += 1
        if self.rows % 30 == 0:
            self._file.flush()  # readable while the run goes on, about once a second

    def close(self, complete: bool = True) -> None:
        """Close the file; a run that ended without a frame leaves a header only (`complete`)
        or, after a failed set-up, no file."""
        if self._file is None:
            if not complete:
                return
            self._open()
        self._file.close()


# -- video -----------------------------------------------------------------------------------

def _encoder() -> str:
    import av

    available = av.codecs_available
    for name in _ENCODERS:
        if name in available:
            try:
                av.codec.Codec(name, "w")
                return name
            except Exception:  # listed but not an encoder in this build
                continue
    raise RuntimeError("this PyAV's FFmpeg has no H.264 or MPEG-4 encoder")


class VideoOutput:
    """`--write-video`: the preview composition of every processed frame, one video frame each
    (its time: the frame's media time in ms, so dropped frames leave gaps), H.264 yuv420p.

    `status()` gives (fps, latency ms) for the panel's numbers at the time a frame is handed
    in. Rendering and encoding run in a thread of their own; `close()` drains it, writes the
    file's trailer and raises the thread's error, if any (OSError: a full disk)."""

    def __init__(self, path: Path, status: Callable[[], tuple[float | None, float | None]],
                 fps_hint: float = 30.0) -> None:
        self.path = Path(path)
        self._status = status
        self._fps_hint = fps_hint
        self._queue: queue.Queue = queue.Queue(maxsize=VIDEO_QUEUE_FRAMES)
        self._thread = threading.Thread(target=self._run, name="streamav-video-out", daemon=True)
        self._error: BaseException | None = None
        self._container = None
        self._stream = None
        self._size: tuple[int, int] | None = None  # (width, height) of the first frame
        self._last_pts_ms = -1
        self.clock = MediaClock()
        self.frames = 0  # encoded so far
        self._thread.start()

    def __call__(self, result) -> None:
        fps, latency_ms = self._status()
        item = (result, self.clock.seconds(result), fps, latency_ms)
        while self._thread.is_alive():  # blocks while the encoder is a full queue behind
            try:
                self._queue.put(item, timeout=0.2)
                return
            except queue.Full:
                continue
        # the encoder thread failed: close() reports why; the run goes on without the video

    def _run(self) -> None:
        try:
            while True:
                item = self._queue.get()
                if item is None:
                    break
                self._encode(*item)
            self._flush()
        except BaseException as exc:  # surfaced by close()
            self._error = exc
        finally:
            if self._container is not None:
                try:
                    self._container.close()
                except Exception as exc:  # noqa: BLE001 - the first error is the one kept
                    self._error = self._error or exc

    def _open(self, width: int, height: int) -> None:
        import av

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._container = av.open(str(self.path), mode="w")
        stream = self._container.add_stream(_encoder(), rate=round(self._fps_hint) or 30)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.time_base = Fraction(1, 1000)
        stream.codec_context.time_base = Fraction(1, 1000)
        if stream.codec_context.name == "libx264":
            stream.options = {"preset": "veryfast", "crf": "23"}
        self._stream = stream

    def _encode(self, result, seconds: float, fps, latency_ms) -> None:
        import av
        import cv2

        from streamav.preview import compose

        image = compose(result.view(), fps, latency_ms, hint=None)
        if self._size is None:
            height, width = image.shape[:2]
            self._size = (width + width % 2, height + height % 2)  # yuv420p: even sizes
            self._open(*self._size)
        width, height = self._size
        if image.shape[1] != width or image.shape[0] != height:
            if image.shape[1] > width or image.shape[0] > height:  # the source changed size
                image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
            else:
                image = cv2.copyMakeBorder(image, 0, height - image.shape[0], 0,
                                           width - image.shape[1], cv2.BORDER_CONSTANT)
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="bgr24")
        pts_ms = max(int(round(seconds * 1000)), self._last_pts_ms + 1)
        self._last_pts_ms = pts_ms
        frame.pts, frame.time_base = pts_ms, Fraction(1, 1000)
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        self.frames += 1

    def _flush(self) -> None:
        if self._stream is None:
            return
        for packet in self._stream.encode(None):
            self._container.mux(packet)

    def close(self, complete: bool = True) -> None:
        """Wait for the encoder to finish every frame handed in; its error, if any.
        `complete`: the run ended normally (a run without frames says so)."""
        while self._thread.is_alive():
            try:
                self._queue.put(None, timeout=0.2)
                break
            except queue.Full:
                continue
        self._thread.join()
        if self._error is not None:
            raise self._error
        if self._container is None and complete:  # not a single frame: no file
            log.warning("--write-video %s: no frame was processed, no video written", self.path)


# -- the demo's denoised strip -------------------------------------------------------------------

class DenoisedStrip:
    """Keeps (input crop, denoised face) pairs of the frames the model read, at most `keep`
    (every other one is dropped whenever it is full), and writes `columns` of them spread over
    the run as one PNG: the input crops above, the denoised faces below, each 2x (128 px)."""

    def __init__(self, columns: int = 8, keep: int = 256) -> None:
        self.columns = columns
        self.keep = keep
        self.pairs: list[tuple[np.ndarray, np.ndarray]] = []
        self._stride = 1
        self._seen = 0

    def __call__(self, result) -> None:
        model = result.model
        if model is None:
            return
        if self._seen % self._stride == 0:
            self.pairs.append((np.array(model.noisy_rgb), np.array(model.denoised_rgb)))
            if len(self.pairs) >= self.keep:
                self.pairs = self.pairs[::2]
                self._stride *= 2
        self._seen += 1

    def image_bgr(self) -> np.ndarray | None:
        import cv2

        if not self.pairs:
            return None
        count = min(self.columns, len(self.pairs))
        picks = np.linspace(0, len(self.pairs) - 1, count).round().astype(int)
        cell, gap = 128, 4
        strip = np.full((2 * cell + gap, count * (cell + gap) - gap, 3), 255, np.uint8)
        for column, index in enumerate(picks):
            x = column * (cell + gap)
            for row, face in enumerate(self.pairs[index]):
                y = row * (cell + gap)
                strip[y:y + cell, x:x + cell] = cv2.resize(
                    cv2.cvtColor(face, cv2.COLOR_RGB2BGR), (cell, cell),
                    interpolation=cv2.INTER_NEAREST)
        return strip

    def write(self, path: Path) -> Path | None:
        """The PNG at `path` (folders made); None when the model read no frame."""
        import cv2

        image = self.image_bgr()
        if image is None:
            return None
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        ok, data = cv2.imencode(".png", image)
        if not ok:
            raise OSError(f"could not encode {path} as PNG")
        path.write_bytes(data.tobytes())
        return path


def demo_strip_path() -> Path:
    """Where `--demo` writes its strip: <temp>/streamav-demo/denoised_strip.png (the same file
    each run, so demos do not pile up), or a fresh temporary folder if that one cannot be used
    (another user's)."""
    folder = Path(tempfile.gettempdir()) / "streamav-demo"
    try:
        folder.mkdir(exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError:
        folder = Path(tempfile.mkdtemp(prefix="streamav-demo-"))
    return folder / "denoised_strip.png"
