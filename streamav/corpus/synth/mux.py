"""Writing a clip's files, byte-for-byte reproducibly: the mp4 and the traces npz.

The mp4 holds H.264 video (libx264, yuv420p, one encoder thread, constant-quality) and AAC audio
(FFmpeg's native encoder, 16 kHz mono), interleaved in time order. Nothing variable goes into
the file: no creation time, one thread per encoder, fixed options, so the same frames and samples
give the same bytes. The npz is a zip whose entries carry a fixed date (numpy's own `savez`
stamps the current time). Both are written to a temporary name and renamed into place.
"""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path
from typing import Iterable

import av
import numpy as np

from streamav.corpus.synth.factors import FPS, SAMPLE_RATE_HZ

VIDEO_CODEC = "libx264"
VIDEO_OPTIONS = {"crf": "18", "preset": "veryfast", "tune": "film", "threads": "1",
                 "x264-params": "threads=1:lookahead-threads=1:sliced-threads=0"}
AUDIO_BITRATE = 64_000
_AAC_FRAME = 1024
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


def _temp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.partial")


def write_mp4(path: Path, frames_rgb: Iterable[np.ndarray], audio: np.ndarray,
              size_px: tuple[int, int]) -> int:
    """Write `frames_rgb` ((H, W, 3) uint8 RGB at 30 fps) and `audio` ((N,) float32, 16 kHz) to
    an mp4 at `path`; returns the number of video frames written."""
    path = Path(path)
    temp = _temp_path(path)
    width, height = size_px
    audio = np.ascontiguousarray(audio, dtype=np.float32)
    n_frames = 0
    with av.open(str(temp), mode="w", format="mp4") as container:
        container.metadata.clear()
        video = container.add_stream(VIDEO_CODEC, rate=FPS, options=dict(VIDEO_OPTIONS))
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.codec_context.thread_count = 1
        sound = container.add_stream("aac", rate=SAMPLE_RATE_HZ, layout="mono")
        sound.bit_rate = AUDIO_BITRATE
        sound.codec_context.thread_count = 1
        audio_pos = 0

        def send_audio(until: int) -> None:
            nonlocal audio_pos
            while audio_pos < until:
                chunk = audio[audio_pos: min(audio_pos + _AAC_FRAME, until, len(audio))]
                if len(chunk) == 0:
                    break
                frame = av.AudioFrame.from_ndarray(chunk[None, :], format="flt", layout="mono")
                frame.sample_rate = SAMPLE_RATE_HZ
                frame.pts = audio_pos
                container.mux(sound.encode(frame))
                audio_pos += len(chunk)

        for index, rgb in enumerate(frames_rgb):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            frame.pts = index
            container.mux(video.encode(frame))
            n_frames += 1
            send_audio(((index + 1) * SAMPLE_RATE_HZ) // FPS // _AAC_FRAME * _AAC_FRAME)
        send_audio(len(audio))
        container.mux(video.encode(None))
        container.mux(sound.encode(None))
    temp.replace(path)
    return n_frames


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """An uncompressed .npz (readable by numpy.load) with fixed entry dates, written atomically."""
    path = Path(path)
    temp = _temp_path(path)
    with zipfile.ZipFile(temp, mode="w", compression=zipfile.ZIP_STORED) as archive:
        for name in sorted(arrays):
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.ascontiguousarray(arrays[name]),
                                      allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_DATE)
            info.external_attr = 0o644 << 16
            archive.writestr(info, buffer.getvalue())
    temp.replace(path)
