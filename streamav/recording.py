"""`streamav live --record DIR`: the run's input and output, kept so that it can be rerun and
replayed (the folder's layout: streamav/sources/recording.py; docs/live.md).

Three taps feed a `Recording`:

- every processed frame (`FrameResult`, the worker's thread): its image goes to video.mp4
  (lossless H.264, encoded in a thread of its own) and a row to frames.csv;
- every audio block the run's ring stored (the source's thread: a microphone callback must not
  wait, so it is only queued): audio.wav;
- every message the publisher takes off its queue (the publisher's thread, also only queued):
  messages.msgpack (streamav/wire/msglog.py).

Nothing a frame needs is ever dropped: the worker waits when the encoder is more than
`VIDEO_QUEUE_FRAMES` frames behind. Audio and messages wait in memory (up to
`IO_QUEUE_BYTES`; beyond that they are dropped, counted, and the manifest says the rerun is no
longer exact).

Every file is written through `RawOut` (unbuffered `os.write`): a write either reaches the file
or raises, so when one fails (a full disk) each file is cut back to its last complete unit (an
MP4 fragment, a sample, a log record, a CSV row) and stays readable. The recording then stops,
the run goes on, and the failure is reported at the end (exit 2). SIGINT ends the run and closes
the recording like the end of the input. manifest.json is written when capture starts
(`"complete": false`) and again, atomically, when the recording is closed.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import logging
import os
import platform
import shlex
import queue
import struct
import threading
from datetime import datetime, timezone
from fractions import Fraction
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

import numpy as np

from streamav import __version__
from streamav.clock import NS_PER_S, wall_anchor
from streamav.errors import InputError
from streamav.outputs import check_writable_folder
from streamav.sources.base import MODEL_SAMPLE_RATE_HZ
from streamav.sources.recording import (AUDIO, FRAME_COLUMNS, FRAMES, MANIFEST, MESSAGES,
                                        RECORDING_FORMAT, RECORDING_VERSION, VIDEO,
                                        WAV_HEADER_BYTES, wav_header)
from streamav.wire import msglog

log = logging.getLogger(__name__)

VIDEO_QUEUE_FRAMES = 8  # frames waiting for the encoder before the worker waits
IO_QUEUE_BYTES = 64 * 1024 * 1024  # audio and messages waiting to be written, at most
VIDEO_TIME_BASE = Fraction(1, 90_000)
_WAV_HEADER_EVERY_SAMPLES = MODEL_SAMPLE_RATE_HZ  # the WAV header is brought up to date about once a second
_PACKAGES = ("numpy", "av", "onnxruntime", "mediapipe", "opencv-contrib-python", "pyzmq",
             "msgpack", "torch", "pylsl")


def check_record_folder(folder: Path, flag: str = "--record") -> None:
    """InputError unless `folder` can hold a new recording: it does not exist yet (it is made)
    or is an empty folder, and files can be written there."""
    folder = Path(folder)
    if folder.exists():
        if not folder.is_dir():
            raise InputError(f"{flag} {folder}: not a folder (give a new or empty folder)")
        if any(folder.iterdir()):
            raise InputError(f"{flag} {folder}: the folder is not empty (a recording is never "
                             "written over: give a new or empty folder)")
    check_writable_folder(folder, flag)


class RawOut:
    """A file written with `os.write`, unbuffered: a write either reaches the file whole or
    raises (a short write is completed, or its error raised), and after one failure every
    write raises at once. `size` is the number of bytes in the file. It has the methods PyAV
    needs of an output file (write, seek, tell). Every file of a recording goes through it."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self.pos = 0
        self.size = 0
        self.error: OSError | None = None

    def _write_some(self, data: memoryview) -> int:
        """One os.write: the narrowest seam (tests make it fail as a full disk does)."""
        return os.write(self.fd, data)

    def write(self, data) -> int:
        if self.error is not None:
            raise OSError(self.error.errno, self.error.strerror, str(self.path))
        view = memoryview(data).cast("B")
        done = 0
        try:
            while done < len(view):
                written = self._write_some(view[done:])
                if written <= 0:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                done += written
        except OSError as exc:
            self.pos += done
            self.size = max(self.size, self.pos)
            self.error = OSError(exc.errno, exc.strerror or str(exc), str(self.path))
            raise self.error from None
        self.pos += done
        self.size = max(self.size, self.pos)
        return done

    def write_at(self, offset: int, data: bytes) -> None:
        """Overwrite bytes already in the file (a header): needs no new space."""
        os.pwrite(self.fd, data, offset)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        self.pos = os.lseek(self.fd, offset, whence)
        return self.pos

    def tell(self) -> int:
        return self.pos

    def seekable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def truncate(self, size: int) -> None:
        os.ftruncate(self.fd, size)
        self.size = min(self.size, size)
        self.pos = min(self.pos, size)

    def flush(self) -> None:
        """Nothing is buffered here."""

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


# -- video.mp4 + frames.csv ----------------------------------------------------------------------

def complete_mp4_prefix(path: Path) -> int:
    """The length of the longest prefix of an MP4 that holds only whole top-level boxes and no
    fragment header without its data (a fragmented MP4 cut short is readable up to there)."""
    end = 0
    last_kind = b""
    last_start = 0
    with Path(path).open("rb") as handle:
        size_total = os.fstat(handle.fileno()).st_size
        pos = 0
        while pos + 8 <= size_total:
            handle.seek(pos)
            size, kind = struct.unpack(">I4s", handle.read(8))
            if size == 1:
                if pos + 16 > size_total:
                    break
                size = struct.unpack(">Q", handle.read(8))[0]
            elif size == 0:  # to the end of the file: only a finished writer leaves that
                size = size_total - pos
            if size < 8 or pos + size > size_total:
                break
            last_kind, last_start = kind, pos
            pos += size
            end = pos
    if last_kind == b"moof":  # a fragment's header without its mdat
        end = last_start
    return end


def mp4_frame_count(path: Path) -> int:
    """Video packets in an MP4 (0 when it holds none, or cannot be read)."""
    import av

    try:
        with av.open(str(path), mode="r") as container:
            if not container.streams.video:
                return 0
            return sum(1 for packet in container.demux(container.streams.video[0])
                       if packet.size)
    except (av.FFmpegError, OSError):
        return 0


class _VideoWriter:
    """video.mp4 and frames.csv, in the recording's video thread."""

    def __init__(self, folder: Path, opener: Callable[[Path], RawOut], fps_hint: float) -> None:
        self.folder = folder
        self._opener = opener
        self.fps_hint = fps_hint
        self.frames = 0
        self.width = self.height = None
        self._file: RawOut | None = None
        self._container = None
        self._stream = None
        self._csv: RawOut | None = None
        self._row_ends: list[int] = []  # frames.csv's size after each row
        self._t0_ns: int | None = None
        self._last_pts = -1

    def _open(self, width: int, height: int) -> None:
        import av

        self._csv = self._opener(self.folder / FRAMES)
        self._csv.write((",".join(FRAME_COLUMNS) + "\n").encode())
        self._file = self._opener(self.folder / VIDEO)
        self._container = av.open(self._file, mode="w", format="mp4", options={
            # fragments of about a second: a file cut short (full disk) stays readable
            "movflags": "frag_keyframe+empty_moov+default_base_moof"})
        keyframes = max(1, int(round(self.fps_hint)))
        stream = self._container.add_stream("libx264rgb", rate=keyframes)
        stream.width, stream.height, stream.pix_fmt = width, height, "bgr24"
        stream.time_base = VIDEO_TIME_BASE
        stream.codec_context.time_base = VIDEO_TIME_BASE
        # qp 0 in RGB: lossless, the decoded frames are the captured ones, bit for bit
        stream.options = {"preset": "ultrafast", "qp": "0", "g": str(keyframes),
                          "threads": "2"}
        self._stream = stream
        self.width, self.height = width, height

    def write(self, image: np.ndarray, seq: int, t_capture_ns: int, t_media_ns: int,
              pts_s: float | None, audio_end: int | None) -> None:
        import av

        height, width = image.shape[:2]
        if self._container is None:
            self._open(width, height)
        elif (width, height) != (self.width, self.height):
            raise _Stop(f"the frame size changed from {self.width}x{self.height} to "
                        f"{width}x{height}")
        if self._t0_ns is None:
            self._t0_ns = t_media_ns
        media_ns = t_media_ns - self._t0_ns
        pts = max(int(round(media_ns * VIDEO_TIME_BASE.denominator / NS_PER_S)),
                  self._last_pts + 1)
        self._last_pts = pts
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="bgr24")
        frame.pts, frame.time_base = pts, VIDEO_TIME_BASE
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        row = (f"{self.frames},{seq},{t_capture_ns / NS_PER_S:.9f},{media_ns / NS_PER_S:.6f},"
               f"{'' if pts_s is None else repr(float(pts_s))},"
               f"{'' if audio_end is None else audio_end}\n")
        self._csv.write(row.encode())
        self._row_ends.append(self._csv.size)
        self.frames += 1

    def finish(self) -> None:
        """The encoder's last frames and the file's end (the run ended normally)."""
        if self._container is None:
            return
        for packet in self._stream.encode(None):
            self._container.mux(packet)
        self._container.close()
        self._container = None
        self._close_files()
        if self._file is not None and self._file.error is not None:  # the trailer failed
            raise self._file.error

    def cut_back(self) -> None:
        """After a failure: close what is open and cut the files back to what is whole."""
        if self._container is not None:
            try:
                self._container.close()
            except Exception:  # noqa: BLE001 - writing the trailer fails on a full disk
                pass
            self._container = None
        self._close_files()
        path = self.folder / VIDEO
        if not path.exists():
            return
        keep = complete_mp4_prefix(path)
        os.truncate(path, keep)
        self.frames = mp4_frame_count(path) if keep else 0
        csv_path = self.folder / FRAMES
        if csv_path.exists():
            header = len(",".join(FRAME_COLUMNS)) + 1
            rows = min(self.frames, len(self._row_ends))
            os.truncate(csv_path, self._row_ends[rows - 1] if rows else header)
            self.frames = rows

    def _close_files(self) -> None:
        for handle in (self._file, self._csv):
            if handle is not None:
                handle.close()


# -- audio.wav + messages.msgpack --------------------------------------------------------------

class _IoWriter:
    """audio.wav and messages.msgpack, in the recording's I/O thread."""

    def __init__(self, folder: Path, opener: Callable[[Path], RawOut], stream_id: str) -> None:
        self.folder = folder
        self._opener = opener
        self.stream_id = stream_id
        self.samples = 0
        self.gap_samples = 0  # zeros written for audio the queue had to drop
        self.messages = 0
        self.by_topic: dict[str, int] = {}
        self._wav: RawOut | None = None
        self._wav_header_at = 0
        self._log: RawOut | None = None
        self._log_end = 0  # the log's size after its last complete record

    def audio(self, index: int, samples: np.ndarray) -> None:
        if self._wav is None:
            self._wav = self._opener(self.folder / AUDIO)
            self._wav.write(wav_header(0))
        if index > self.samples:  # dropped before it was written: keep the indices
            gap = index - self.samples
            self._wav.write(np.zeros(gap, "<f4").tobytes())
            self.samples += gap
            self.gap_samples += gap
        skip = self.samples - index
        if skip >= samples.size:
            return
        self._wav.write(np.ascontiguousarray(samples[skip:], dtype="<f4").tobytes())
        self.samples += samples.size - skip
        if self.samples - self._wav_header_at >= _WAV_HEADER_EVERY_SAMPLES:
            self._wav.write_at(0, wav_header(self.samples))
            self._wav_header_at = self.samples

    def message(self, frames: list[bytes], t_ns: int) -> None:
        if self._log is None:
            self._log = self._opener(self.folder / MESSAGES)
            self._log.write(msglog.header_bytes(self.stream_id, wall_anchor()))
            self._log_end = self._log.size
        self._log.write(msglog.record_bytes(frames, t_ns))
        self._log_end = self._log.size
        self.messages += 1
        topic = bytes(frames[0]).decode("utf-8", "replace")
        self.by_topic[topic] = self.by_topic.get(topic, 0) + 1

    def finish(self) -> None:
        if self._wav is not None:
            self._wav.write_at(0, wav_header(self.samples))
            self._wav.close()
        if self._log is not None:
            self._log.close()

    def cut_back(self) -> None:
        """After a failure: each file cut back to its last whole sample or record."""
        if self._wav is not None:
            whole = max(0, self._wav.size - WAV_HEADER_BYTES) // 4
            self._wav.truncate(WAV_HEADER_BYTES + whole * 4 if self._wav.size >= WAV_HEADER_BYTES
                               else 0)
            self.samples = whole
            if self._wav.size >= WAV_HEADER_BYTES:
                self._wav.write_at(0, wav_header(whole))
            self._wav.close()
        if self._log is not None:
            self._log.truncate(self._log_end)
            self._log.close()


class _Stop(Exception):
    """The recording cannot go on (not an I/O error)."""


# -- the recording -----------------------------------------------------------------------------

def _versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    try:
        import av

        versions["ffmpeg (libavformat)"] = ".".join(
            str(v) for v in av.library_versions.get("libavformat", ()))
    except Exception:  # noqa: BLE001 - informational only
        pass
    return versions


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _model_info(model) -> dict[str, Any] | None:
    if model is None:
        return None
    folder = Path(model.folder)
    files = {}
    for path in sorted(folder.iterdir()) if folder.is_dir() else ():
        if path.is_file() and path.suffix in (".json", ".safetensors", ".onnx"):
            files[path.name] = _sha256(path)
    return {"folder": str(folder), "engine": getattr(model, "engine_label", None),
            "labels": list(getattr(model, "labels", ())), "profile": model.profile_name,
            "noise": None if model.noise is None else str(model.noise), "sha256": files}


def _moment() -> dict[str, Any]:
    anchor = wall_anchor()
    utc = datetime.fromtimestamp(anchor["t_wall"], tz=timezone.utc)
    return {"utc": utc.isoformat(timespec="milliseconds"), **anchor}


class RecordingFailed(OSError):
    """The recording stopped before the run did; what it holds is whole up to that point."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()


class Recording:
    """One `--record DIR`. Give it to the run (`attach`), `started()` once capture runs,
    `close(summary)` at the end (or `abandon()` after a failed run)."""

    def __init__(self, folder: Path, config, opener: Callable[[Path], RawOut] = RawOut) -> None:
        self.folder = Path(folder)
        self.config = config
        self.opener = opener
        self.pipeline = None
        self.failure: BaseException | None = None
        self.frames_offered = 0  # frames handed in by the worker
        self.io_dropped_audio = 0  # samples the queue could not hold
        self.io_dropped_messages = 0
        self.io_after_stop = 0  # audio blocks and messages after the recording stopped
        self._failed = threading.Event()
        self._made_folder = False
        self._started: dict | None = None
        self._model: dict | None = None
        self._video_queue: queue.Queue = queue.Queue(maxsize=VIDEO_QUEUE_FRAMES)
        self._io_queue: queue.SimpleQueue = queue.SimpleQueue()
        self._io_bytes = 0
        self._io_lock = threading.Lock()
        self._video: _VideoWriter | None = None
        self._io: _IoWriter | None = None
        self._threads: list[threading.Thread] = []
        self._warned = False

    # -- set-up ----------------------------------------------------------------------------------

    def attach(self, pipeline) -> None:
        """Tap the run's audio ring and publisher; start the writer threads."""
        self.pipeline = pipeline
        fps = next((s.video_fps for s in pipeline.sources if getattr(s, "video_fps", None)),
                   self.config.camera.fps)
        self._video = _VideoWriter(self.folder, self._open, float(fps or 30.0))
        self._io = _IoWriter(self.folder, self._open,
                             getattr(pipeline.publisher, "stream_id", None) or "")
        pipeline.on_audio = self.audio
        if hasattr(pipeline.publisher, "on_message"):
            pipeline.publisher.on_message = self.message
        for name, target in (("video", self._video_loop), ("io", self._io_loop)):
            thread = threading.Thread(target=target, name=f"streamav-record-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _open(self, path: Path) -> RawOut:
        self._make_folder()
        return self.opener(path)

    def _make_folder(self) -> None:
        if not self.folder.exists():
            self.folder.mkdir(parents=True, exist_ok=True)
            self._made_folder = True

    def started(self) -> None:
        """Capture runs: the first manifest (`complete: false` until the recording closes)."""
        self._started = _moment()
        try:
            self._model = _model_info(self.pipeline.model if self.pipeline else None)
        except OSError as exc:
            log.info("model files not hashed for the manifest: %s", exc)
        try:
            self._write_manifest(complete=False, stop_reason=None, final_stats=None)
        except OSError as exc:
            self._fail(exc)

    # -- the taps --------------------------------------------------------------------------------

    def __call__(self, result) -> None:
        """A processed frame (the worker's thread): waits while the encoder is behind."""
        self.frames_offered += 1
        if self._failed.is_set():
            return
        frame = result.frame
        item = (frame.image_bgr, frame.seq, frame.t_capture_ns, frame.t_media_ns, frame.pts_s,
                result.audio_end)
        thread = self._threads[0]
        while thread.is_alive() and not self._failed.is_set():
            try:
                self._video_queue.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def audio(self, index: int, samples: np.ndarray) -> None:
        """An audio block the ring stored (the source's thread): queued, never waits."""
        self._queue_io(("audio", index, np.array(samples, dtype=np.float32)), samples.size * 4,
                       samples=samples.size)

    def message(self, frames: list[bytes], t_ns: int) -> None:
        """A message the publisher sends (its thread): queued, never waits."""
        self._queue_io(("message", frames, t_ns), sum(len(f) for f in frames))

    def _queue_io(self, item: tuple, size: int, samples: int = 0) -> None:
        if self._failed.is_set():
            self.io_after_stop += 1
            return
        with self._io_lock:
            if self._io_bytes + size > IO_QUEUE_BYTES:
                if samples:
                    self.io_dropped_audio += samples
                else:
                    self.io_dropped_messages += 1
                return
            self._io_bytes += size
        self._io_queue.put((item, size))

    # -- the threads ---------------------------------------------------------------------------

    def _fail(self, exc: BaseException) -> None:
        if self.failure is None:
            self.failure = exc
        self._failed.set()
        if not self._warned:
            self._warned = True
            log.warning("--record %s: %s: the recording stops here, whole up to this point "
                        "(the run goes on)", self.folder, _reason(exc))

    def _video_loop(self) -> None:
        writer = self._video
        assert writer is not None
        self._run_writer(self._video_queue, writer, lambda item: writer.write(*item))

    def _io_loop(self) -> None:
        writer = self._io
        assert writer is not None

        def handle(entry) -> None:
            item, size = entry
            with self._io_lock:
                self._io_bytes -= size
            if item[0] == "audio":
                writer.audio(item[1], item[2])
            else:
                writer.message(item[1], item[2])

        self._run_writer(self._io_queue, writer, handle)

    def _run_writer(self, source, writer, handle: Callable[[Any], None]) -> None:
        """A writer thread: items until the sentinel (None), then `finish()`; once the
        recording has failed (here or in the other thread), `cut_back()` at once and take
        the rest without writing it."""
        ended = False
        try:
            while not self._failed.is_set():
                try:
                    item = source.get(timeout=0.2)
                except queue.Empty:
                    continue
                if item is None:
                    ended = True
                    break
                handle(item)
            if not self._failed.is_set():
                writer.finish()
        except BaseException as exc:  # noqa: BLE001 - a full disk, the encoder: stop recording
            self._fail(exc)
        if self._failed.is_set():
            try:
                writer.cut_back()
            except OSError as exc:
                log.info("cutting the recording in %s back: %s", self.folder, exc)
        while not ended:  # until close() hands its sentinel in
            item = source.get()
            ended = item is None
            if not ended and source is self._io_queue:
                with self._io_lock:
                    self._io_bytes -= item[1]

    # -- the end -------------------------------------------------------------------------------

    def _stop_threads(self) -> None:
        if not self._threads:
            return
        video, io = self._threads
        while video.is_alive():
            try:
                self._video_queue.put(None, timeout=0.2)
                break
            except queue.Full:
                continue
        video.join()
        self._io_queue.put(None)
        io.join()

    def close(self, stop_reason: str, final_stats: dict | None) -> str:
        """Finish every file and write the manifest; the note to print. Raises
        RecordingFailed when the recording stopped early (it is whole up to that point)."""
        self._stop_threads()
        if self._nothing_written():
            self._remove_empty_folder()
            return f"--record {self.folder}: nothing was captured, no recording written"
        try:
            self._write_manifest(complete=True, stop_reason=stop_reason,
                                 final_stats=final_stats)
        except OSError as exc:
            self._fail(exc)
        if self.failure is not None:
            raise RecordingFailed(errno.EIO, f"{_reason(self.failure)}: recording stopped "
                                  f"early, whole up to there ({self._summary()})")
        return (f"recorded {self.folder} ({self._summary()}; replay: streamav replay "
                f"{self.folder}; rerun: streamav live --no-realtime --video {self.folder})")

    def abandon(self) -> None:
        """The run failed: close the files; a folder with nothing in it is removed."""
        self._stop_threads()
        if self._nothing_written():
            self._remove_empty_folder()
            return
        try:
            self._write_manifest(complete=True, stop_reason="the run failed", final_stats=None)
        except OSError as exc:
            log.info("--record %s: manifest not written: %s", self.folder, exc)

    def _nothing_written(self) -> bool:
        video, io = self._video, self._io
        return (self._started is None and (video is None or video.frames == 0)
                and (io is None or (io.samples == 0 and io.messages == 0)))

    def _remove_empty_folder(self) -> None:
        if not self._made_folder or not self.folder.is_dir():
            return
        for path in self.folder.iterdir():
            try:
                path.unlink()
            except OSError:
                return
        try:
            self.folder.rmdir()
        except OSError:
            pass

    def _summary(self) -> str:
        video, io = self._video, self._io
        frames = video.frames if video else 0
        seconds = (io.samples if io else 0) / MODEL_SAMPLE_RATE_HZ
        messages = io.messages if io else 0
        return f"{frames} frames, {seconds:.1f} s of audio, {messages} messages"

    def _rerun_notes(self, final_stats: dict | None) -> list[str]:
        """Why an offline run on the recording might not give the recorded results."""
        notes = []
        pipeline = self.pipeline
        if pipeline is not None and pipeline.model_resets:
            notes.append(f"the model was reset {pipeline.model_resets} time(s) during the run "
                         "(control `reset` or a camera that came back): a rerun does not")
        if pipeline is not None and pipeline.profile_switches:
            notes.append(f"{pipeline.profile_switches} profile switch(es) during the run "
                         "(control `profile.load`): a rerun keeps the starting profile")
        lost = (final_stats or {}).get("audio_samples_lost") or 0
        if lost:
            notes.append(f"{lost} audio samples were overwritten in the ring before the worker "
                         "read them (their windows read zeros then)")
        if self.io_dropped_audio:
            notes.append(f"{self.io_dropped_audio} audio samples could not be queued for "
                         "writing (written as zeros)")
        if self.failure is not None:
            notes.append("the recording stopped early: a rerun reproduces the results of the "
                         "frames it holds")
        return notes

    def _write_manifest(self, complete: bool, stop_reason: str | None,
                        final_stats: dict | None) -> None:
        pipeline = self.pipeline
        video, io = self._video, self._io
        notes = self._rerun_notes(final_stats) if complete else []
        realtime = bool(self.config.run.realtime)
        quoted = shlex.quote(str(self.folder))
        document = {
            "format": RECORDING_FORMAT, "version": RECORDING_VERSION,
            "closed": complete,  # false: the run is going on, or was killed
            "stop_reason": stop_reason,
            "recording_error": None if self.failure is None else _reason(self.failure),
            "streamav_version": __version__, "versions": _versions(),
            "stream_id": getattr(pipeline.publisher, "stream_id", None) if pipeline else None,
            "started": self._started, "ended": _moment() if complete else None,
            "realtime": realtime,
            "sources": [s.name for s in pipeline.sources] if pipeline else [],
            "model": self._model,
            "files": {"video": VIDEO, "frames": FRAMES, "audio": AUDIO, "messages": MESSAGES},
            "video": {"frames": video.frames if video else 0,
                      "width": video.width if video else None,
                      "height": video.height if video else None,
                      "codec": "h264 lossless (libx264rgb, qp 0, bgr24)",
                      "time_base": f"1/{VIDEO_TIME_BASE.denominator}",
                      "fps_hint": video.fps_hint if video else None},
            "audio": {"samples": io.samples if io else 0,
                      "seconds": round((io.samples if io else 0) / MODEL_SAMPLE_RATE_HZ, 4),
                      "sample_rate_hz": MODEL_SAMPLE_RATE_HZ, "format": "float32 mono (IEEE float WAV)",
                      "gap_samples": io.gap_samples if io else 0},
            "messages": {"logged": io.messages if io else 0,
                         "by_topic": dict(io.by_topic) if io else {},
                         "not_logged": self.io_dropped_messages},
            "counts": {
                "frames_processed": self.frames_offered,
                "frames_recorded": video.frames if video else 0,
                # processed but not in video.mp4 (after the recording stopped, or cut back)
                "frames_not_recorded": self.frames_offered - (video.frames if video else 0),
                "frames_dropped_by_the_run": (final_stats or {}).get("dropped_frames"),
                "audio_samples": io.samples if io else 0,
                "messages_logged": io.messages if io else 0,
                "messages_dropped_by_the_publisher": (final_stats or {}).get("publish_dropped"),
            },
            "rerun": {"command": f"streamav live --no-realtime --video {quoted}",
                      "exact": complete and not notes, "notes": notes},
            "replay": f"streamav replay {quoted}",
            "final_stats": final_stats,
            "config": dataclasses.asdict(self.config),
        }
        self._make_folder()
        path = self.folder / MANIFEST
        partial = path.with_name(path.name + ".partial")
        out = self.opener(partial)
        try:
            out.write((json.dumps(document, indent=2, default=str) + "\n").encode())
        except BaseException:
            out.close()
            partial.unlink(missing_ok=True)
            raise
        out.close()
        partial.replace(path)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        where = f" ({Path(exc.filename).name})" if exc.filename else ""
        return f"{exc.strerror}{where}"
    return str(exc) or type(exc).__name__
