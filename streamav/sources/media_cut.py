"""Cut a time span out of a media file into a new video (.mp4) and audio (.wav) pair (PyAV).

Used to play part of a clip through `streamav live --video V --audio A` (e.g. the second halves
of calibration clips): frames whose time is in [start_s, end_s) are re-encoded losslessly enough
for the face front end (MPEG-4 part 2 at a high quality), the audio samples of the same span are
written as 16-bit mono WAV at the source's sample rate. The new files start at time 0.
"""

from __future__ import annotations

import wave
from fractions import Fraction
from pathlib import Path

import numpy as np

from streamav.errors import InputError


def cut_media(source: Path, start_s: float, end_s: float, out_dir: Path) -> tuple[Path, Path | None]:
    """Returns (video path, wav path or None when the source has no audio)."""
    import av

    if not end_s > start_s >= 0:
        raise InputError(f"cut {source}: need 0 <= start < end, got {start_s}, {end_s}")
    out_dir.mkdir(parents=True, exist_ok=True)
    video_out = out_dir / f"{Path(source).stem}_{start_s:.2f}-{end_s:.2f}.mp4"
    wav_out = video_out.with_suffix(".wav")
    try:
        with av.open(str(source)) as container:
            stream = container.streams.video[0]
            rate = stream.average_rate or Fraction(30, 1)
            frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)
                      if frame.time is not None and start_s <= frame.time < end_s]
        with av.open(str(source)) as container:
            chunks, sample_rate = [], None
            if container.streams.audio:
                audio = container.streams.audio[0]
                for frame in container.decode(audio):
                    samples = frame.to_ndarray()
                    if samples.dtype.kind != "f":
                        samples = samples / np.iinfo(samples.dtype).max
                    if frame.format.is_planar:  # (channels, samples)
                        samples = samples.reshape(-1, frame.samples).mean(axis=0)
                    else:  # (1, samples * channels), interleaved
                        samples = samples.reshape(frame.samples, -1).mean(axis=1)
                    sample_rate = frame.sample_rate
                    t = frame.time + np.arange(frame.samples) / frame.sample_rate
                    chunks.append(samples[(t >= start_s) & (t < end_s)])
    except av.error.FFmpegError as exc:
        raise InputError(f"cannot read {source}: {exc}") from None
    if not frames:
        raise InputError(f"{source}: no video frame between {start_s:g} s and {end_s:g} s")
    height, width = frames[0].shape[:2]
    with av.open(str(video_out), "w") as container:
        stream = container.add_stream("mpeg4", rate=rate)
        stream.width, stream.height, stream.pix_fmt = width - width % 2, height - height % 2, "yuv420p"
        stream.options = {"qscale": "2"}
        for image in frames:
            frame = av.VideoFrame.from_ndarray(image[:stream.height, :stream.width], format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    if sample_rate is None:
        return video_out, None
    pcm = (np.clip(np.concatenate(chunks), -1.0, 1.0) * 32767.0).astype("<i2")
    with wave.open(str(wav_out), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(int(sample_rate))
        handle.writeframes(pcm.tobytes())
    return video_out, wav_out
