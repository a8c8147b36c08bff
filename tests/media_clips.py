"""Small real media files for the fault, staleness and loop tests, made with PyAV here.

`make_clip` re-encodes the bundled CREMA-D clip (a real face and real speech) as H.264 + AAC in
MP4, optionally with a short key-frame interval. `corrupt_packet` flips the bytes of one packet
of a stream in place (AAC's decoder rejects a damaged packet; H.264's conceals it), and says
where that packet plays.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from streamav.data import demo_clip_path


def make_clip(out: Path, *, gop: int = 30, scale: float = 1.0, repeat: int = 1) -> Path:
    """The demo clip (1.9 s, 480x360, 29.97 fps) as H.264 (key frame every `gop` frames) and
    AAC 44.1 kHz stereo in MP4, its frames `scale`d, played `repeat` times in a row."""
    with av.open(str(demo_clip_path())) as src:
        vstream = src.streams.video[0]
        images = [f.to_ndarray(format="rgb24") for f in src.decode(vstream)]
    with av.open(str(demo_clip_path())) as src:
        astream = src.streams.audio[0]
        rate = astream.rate
        resampler = av.AudioResampler(format="fltp", layout="stereo", rate=rate)
        chunks = [out_frame.to_ndarray() for f in src.decode(astream)
                  for out_frame in resampler.resample(f)]
    audio = np.concatenate(chunks, axis=1)
    height, width = images[0].shape[:2]
    if scale != 1.0:
        import cv2

        width, height = int(width * scale) // 2 * 2, int(height * scale) // 2 * 2
        images = [cv2.resize(im, (width, height), interpolation=cv2.INTER_LINEAR) for im in images]
    with av.open(str(out), "w") as container:
        video = container.add_stream("libx264", rate=Fraction(30000, 1001))
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.options = {"preset": "ultrafast", "g": str(gop), "keyint_min": str(gop),
                         "sc_threshold": "0", "bf": "0"}
        sound = container.add_stream("aac", rate=rate, layout="stereo")
        for _ in range(repeat):
            for image in images:
                container.mux(video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(video.encode())
        whole = np.ascontiguousarray(np.tile(audio, (1, repeat)), dtype=np.float32)
        step = 1024
        for start in range(0, whole.shape[1], step):
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(whole[:, start:start + step]),
                                               format="fltp", layout="stereo")
            frame.sample_rate = rate
            frame.pts = start
            frame.time_base = Fraction(1, rate)
            container.mux(sound.encode(frame))
        container.mux(sound.encode())
    return out


def corrupt_packet(path: Path, kind: str, at_s: float) -> float:
    """Flip every byte of the first `kind` packet that starts at or after `at_s`, in place;
    returns that packet's time (s from the file's start)."""
    with av.open(str(path)) as container:
        stream = getattr(container.streams, kind)[0]
        for packet in container.demux(stream):
            if packet.pts is None or packet.pos is None or packet.pos < 0:
                continue
            t = float(packet.pts * packet.time_base)
            if t >= at_s and packet.size >= 16:
                pos, size = packet.pos, packet.size
                break
        else:
            raise ValueError(f"no {kind} packet at or after {at_s} s in {path}")
    data = bytearray(path.read_bytes())
    for i in range(pos, pos + size):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    return t
