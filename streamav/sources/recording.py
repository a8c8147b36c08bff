"""A recording made by `streamav live --record DIR`, played back as a source (`--video DIR`).

The folder (docs/live.md, "Record and replay"):

    manifest.json      what was recorded: versions, model, config, stream id, times, counts
    video.mp4          every frame the worker processed, lossless H.264 (libx264rgb, qp 0: the
                       decoded pixels are the captured ones), fragmented MP4 (readable when cut
                       short), presentation times from the capture clock (90 kHz)
    frames.csv         one row per frame of video.mp4: frame, seq, t_capture_s, media_s,
                       pts_s, audio_end
    audio.wav          every audio sample the run's audio ring stored, 16 kHz mono float32
                       (exactly what the model's windows read)
    messages.msgpack   every message published (streamav/wire/msglog.py)

`RecordingSource` plays video.mp4 and audio.wav so that the pipeline sees what the recorded run
saw: each frame keeps its source sequence number (`seq`) and is placed at the audio sample where
its window ended in that run (`audio_end`), so every frame gets the same audio window, and an
offline run (`--no-realtime`) on the recording reproduces the recorded run's results
(docs/live.md says exactly which, and when not).
"""

from __future__ import annotations

import csv
import json
import logging
import struct
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from streamav.clock import NS_PER_S
from streamav.errors import InputError
from streamav.sources.base import MODEL_SAMPLE_RATE_HZ, AVSink, ReplayingSource, StreamThreads

log = logging.getLogger(__name__)

RECORDING_FORMAT = "streamav-recording"
RECORDING_VERSION = 1
MANIFEST = "manifest.json"
VIDEO = "video.mp4"
FRAMES = "frames.csv"
AUDIO = "audio.wav"
MESSAGES = "messages.msgpack"
FRAME_COLUMNS = ("frame", "seq", "t_capture_s", "media_s", "pts_s", "audio_end")
NS_PER_SAMPLE = NS_PER_S // MODEL_SAMPLE_RATE_HZ  # 62,500: a sample index is an exact time
_AUDIO_BLOCK = 1024  # samples written to the ring at a time when playing audio.wav


def is_recording(location: str | Path) -> bool:
    """A folder with a recording's manifest."""
    path = Path(location)
    return path.is_dir() and (path / MANIFEST).is_file()


def read_manifest(folder: Path) -> dict:
    """The manifest of a recording; InputError when the folder is not one."""
    path = Path(folder) / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{folder} is not a streamav recording (no {MANIFEST})") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != RECORDING_FORMAT:
        raise InputError(f"{path} is not a streamav recording manifest")
    if manifest.get("version") != RECORDING_VERSION:
        raise InputError(f"{path}: recording version {manifest.get('version')} (this streamav "
                         f"reads version {RECORDING_VERSION})")
    return manifest


@dataclass(frozen=True)
class FrameRow:
    frame: int
    seq: int
    t_capture_s: float
    media_s: float  # from the first frame, on the capture clock (the video's time)
    pts_s: float | None  # the source's own time of the frame (a file's pts; None: a camera's)
    audio_end: int | None


def read_frames(folder: Path) -> list[FrameRow]:
    """The rows of frames.csv (a last row cut short is left out)."""
    path = Path(folder) / FRAMES
    rows: list[FrameRow] = []
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            header = tuple(next(reader, ()))
            if header != FRAME_COLUMNS:
                raise InputError(f"{path}: unexpected columns {header}")
            for row in reader:
                if len(row) != len(FRAME_COLUMNS):
                    break
                try:
                    rows.append(FrameRow(int(row[0]), int(row[1]), float(row[2]), float(row[3]),
                                         float(row[4]) if row[4] else None,
                                         int(row[5]) if row[5] else None))
                except ValueError:
                    break
    except FileNotFoundError:
        raise InputError(f"{folder}: the recording has no {FRAMES}") from None
    return rows


# -- audio.wav: IEEE float, mono, 16 kHz -------------------------------------------------------

WAV_FLOAT = 3  # WAVE_FORMAT_IEEE_FLOAT
WAV_HEADER_BYTES = 58  # RIFF(12) + fmt (8 + 18) + fact (8 + 4) + data header (8)


def wav_header(samples: int, sample_rate_hz: int = MODEL_SAMPLE_RATE_HZ) -> bytes:
    """The 58-byte header of a mono float32 WAV holding `samples` samples."""
    data = samples * 4
    return (b"RIFF" + struct.pack("<I", min(0xFFFFFFFF, WAV_HEADER_BYTES - 8 + data)) + b"WAVE"
            + b"fmt " + struct.pack("<IHHIIHHH", 18, WAV_FLOAT, 1, sample_rate_hz,
                                    sample_rate_hz * 4, 4, 32, 0)
            + b"fact" + struct.pack("<II", 4, min(0xFFFFFFFF, samples))
            + b"data" + struct.pack("<I", min(0xFFFFFFFF, data)))


def read_wav_samples(path: Path) -> np.ndarray:
    """The samples of an audio.wav as written by a recording: float32 mono 16 kHz. The data
    chunk is read to the end of the file (a header not yet updated by a killed run is fine)."""
    raw = Path(path).read_bytes()
    if len(raw) < 12 or raw[:4] != b"RIFF" or raw[8:12] != b"WAVE":
        raise InputError(f"{path} is not a WAV file")
    pos, fmt = 12, None
    while pos + 8 <= len(raw):
        kind, size = raw[pos:pos + 4], struct.unpack("<I", raw[pos + 4:pos + 8])[0]
        if kind == b"fmt ":
            fmt = struct.unpack("<HHIIHH", raw[pos + 8:pos + 24])
        elif kind == b"data":
            if fmt is None or fmt[0] != WAV_FLOAT or fmt[1] != 1 or fmt[5] != 32 \
                    or fmt[2] != MODEL_SAMPLE_RATE_HZ:
                raise InputError(f"{path}: not a recording's audio (float32 mono "
                                 f"{MODEL_SAMPLE_RATE_HZ} Hz)")
            data = raw[pos + 8:]
            return np.frombuffer(data[:len(data) // 4 * 4], dtype="<f4").astype(np.float32)
        pos += 8 + size + (size & 1)
    raise InputError(f"{path}: no audio data")


class RecordingSource(ReplayingSource):
    """Plays a recording folder: its video (frames in their recorded order, with their
    recorded `seq`) and, when `use_audio`, its audio. With the audio each frame's time is the
    recorded position of its audio window's end; without it, the frame's recorded media time."""

    def __init__(self, folder: str | Path, *, realtime: bool, use_audio: bool = True,
                 anchor_ns: int | None = None) -> None:
        self.folder = Path(folder)
        self.manifest = read_manifest(self.folder)
        self.name = f"recording:{self.folder.name}"
        self.realtime = realtime
        self.anchor_ns = anchor_ns
        self.rows = read_frames(self.folder)
        if not (self.folder / VIDEO).is_file() or not self.rows:
            raise InputError(f"{self.folder}: the recording holds no video frame")
        video = self.manifest.get("video") or {}
        self.video_fps = video.get("fps_hint")
        audio_path = self.folder / AUDIO
        has_audio = audio_path.is_file() and audio_path.stat().st_size > WAV_HEADER_BYTES
        if use_audio and not has_audio:
            log.warning("%s has no audio: running on its video alone, the model hears silence",
                        self.folder)
        self.has_video = True
        self.has_audio = use_audio and has_audio
        self._threads = StreamThreads("recording", translate=self._decode_error)

    def _decode_error(self, kind: str, exc: BaseException) -> BaseException:
        import av

        if isinstance(exc, (av.FFmpegError, OSError)):
            return InputError(f"error while reading the {kind} of the recording {self.folder}: "
                              f"{exc}")
        return exc

    def _frame_time_ns(self, row: FrameRow) -> int:
        assert self.anchor_ns is not None
        if self.has_audio and row.audio_end is not None:
            return self.anchor_ns + row.audio_end * NS_PER_SAMPLE
        return self.anchor_ns + int(round(row.media_s * NS_PER_S))

    def _run_video(self, sink: AVSink) -> None:
        import av

        with av.open(str(self.folder / VIDEO), mode="r") as container:
            stream = container.streams.video[0]
            frames = container.decode(stream)
            for row in self.rows:
                if self._threads.stopped.is_set():
                    return
                t0 = time.perf_counter_ns()
                try:
                    frame = next(frames, None)
                except av.FFmpegError as exc:  # cut short: a killed run's last fragment
                    log.warning("%s: the video ends in a damaged part after frame %d (%s)",
                                self.folder, row.frame, exc)
                    return
                if frame is None:
                    return
                image = frame.to_ndarray(format="bgr24")
                t_ns = self._frame_time_ns(row)
                if self.realtime:
                    self._threads.sleep_until(t_ns)
                sink.write_video(row.seq, t_ns, image, row.pts_s, time.perf_counter_ns() - t0)

    def _run_audio(self, sink: AVSink) -> None:
        assert self.anchor_ns is not None
        samples = read_wav_samples(self.folder / AUDIO)
        for seq, start in enumerate(range(0, samples.size, _AUDIO_BLOCK)):
            if self._threads.stopped.is_set():
                return
            block = samples[start:start + _AUDIO_BLOCK]
            t_ns = self.anchor_ns + start * NS_PER_SAMPLE
            if self.realtime:  # a device delivers a block once its last sample is in
                self._threads.sleep_until(t_ns + block.size * NS_PER_SAMPLE)
            sink.write_audio(seq, t_ns, np.ascontiguousarray(block))
