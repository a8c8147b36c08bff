"""The wire between a capture client (`streamav live --remote`) and the ingress (`streamav serve`).

A client's DEALER socket talks to the ingress's ROUTER. Every message is a ZeroMQ multipart
message `[kind, msgpack header, raw buffers...]` (the ROUTER sees the client's identity first):

- `frame`: one frame with a face, for the model (`FrameIn`; buffers: the aligned face crop,
  (64, 64, 3) uint8 RGB; the frame's power spectrum, (513,) float32, when it has audio; the
  face mesh in crop pixels, (468, 2) float32, for the emotion estimator).
- `msg`: a message the client's own pipeline publishes (`face`, `status`, `stats`), forwarded
  as it is: `Forward` (topic, stream, capture time), then the topic body (encoded by
  streamav.wire.messages) and its raw buffers. The ingress publishes it on the PUB edge under
  the client's stream id.
- `ctl`: a command for a stream's model state (`Command`: `reset`, a new person; `leave`, the
  stream has ended and frees its slot).

From the ingress to a client: `refused` with a `Refusal` header (a stream the replicas have no
room for; the client stops that stream).

Capture times are the client's monotonic clock (streamav.clock), in ns; results published on
the edge carry them unchanged (docs/scaling.md: clocks across machines).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import msgspec
import numpy as np

from streamav.errors import InputError

KIND_FRAME = b"frame"
KIND_MSG = b"msg"
KIND_CTL = b"ctl"
KIND_REFUSED = b"refused"

CROP_SHAPE = (64, 64, 3)
SPECTRUM_BINS = 513
MESH_POINTS = 468


class FrameIn(msgspec.Struct, frozen=True, kw_only=True):
    """The header of a `frame` message."""

    stream: str
    seq: int  # the capture frame's seq (the `frame_seq` of its results)
    t_capture_ns: int
    has_spectrum: bool
    # an offline client (--no-realtime): the ingress keeps every frame instead of the newest
    keep_all: bool = False
    # the frame rate the stream's model stage assumes (its emotion smoothing, change detector)
    fps: float = 30.0


class Forward(msgspec.Struct, frozen=True, kw_only=True):
    """The header of a `msg` message."""

    stream: str
    topic: str
    t_capture_ns: int


class Command(msgspec.Struct, frozen=True, kw_only=True):
    stream: str
    command: Literal["reset", "leave"]


class Refusal(msgspec.Struct, frozen=True, kw_only=True):
    stream: str
    reason: str


@dataclass(frozen=True)
class FrameInputs:
    """One frame's model inputs, as a replica takes them."""

    stream: str
    seq: int
    t_capture_ns: int
    crop_rgb: np.ndarray  # (64, 64, 3) uint8
    spectrum: np.ndarray | None  # (513,) float32, None without audio
    mesh_crop_xy: np.ndarray  # (468, 2) float32
    fps: float = 30.0  # the frame rate the stream's model stage assumes


_encoder = msgspec.msgpack.Encoder()


def encode_frame(inputs: FrameInputs, keep_all: bool) -> list[bytes]:
    header = FrameIn(stream=inputs.stream, seq=int(inputs.seq),
                     t_capture_ns=int(inputs.t_capture_ns),
                     has_spectrum=inputs.spectrum is not None, keep_all=keep_all,
                     fps=float(inputs.fps))
    crop = np.ascontiguousarray(inputs.crop_rgb, np.uint8)
    if crop.shape != CROP_SHAPE:
        raise ValueError(f"a face crop is {CROP_SHAPE}, not {crop.shape}")
    frames = [KIND_FRAME, _encoder.encode(header), crop.tobytes()]
    if inputs.spectrum is not None:
        frames.append(np.ascontiguousarray(inputs.spectrum, np.float32).tobytes())
    frames.append(np.ascontiguousarray(inputs.mesh_crop_xy, np.float32).tobytes())
    return frames


def decode_frame(parts: Sequence[bytes]) -> tuple[FrameIn, FrameInputs]:
    """(header, inputs) of a `frame` message's parts after the kind; InputError when malformed."""
    try:
        header = msgspec.msgpack.decode(parts[0], type=FrameIn)
    except (msgspec.DecodeError, IndexError) as exc:
        raise InputError(f"bad frame header: {exc}") from None
    if not 0.1 <= header.fps <= 1000:  # also NaN
        raise InputError(f"a frame's fps must be in 0.1..1000, got {header.fps}")
    want = 3 if header.has_spectrum else 2
    if len(parts) != 1 + want:
        raise InputError(f"a frame has {want} buffers, not {len(parts) - 1}")
    crop = _array(parts[1], np.uint8, CROP_SHAPE)
    spectrum = _array(parts[2], np.float32, (SPECTRUM_BINS,)) if header.has_spectrum else None
    mesh = _array(parts[-1], np.float32, (MESH_POINTS, 2))
    return header, FrameInputs(header.stream, header.seq, header.t_capture_ns, crop, spectrum,
                               mesh, header.fps)


def _array(buffer: bytes, dtype, shape: tuple[int, ...]) -> np.ndarray:
    array = np.frombuffer(buffer, dtype)
    try:
        return array.reshape(shape)
    except ValueError:
        raise InputError(f"a buffer of {len(buffer)} bytes is not {shape} {np.dtype(dtype)}"
                         ) from None


def encode_forward(stream: str, topic: str, t_capture_ns: int, body: bytes,
                   buffers: Sequence[bytes]) -> list[bytes]:
    header = Forward(stream=stream, topic=topic, t_capture_ns=int(t_capture_ns))
    return [KIND_MSG, _encoder.encode(header), body, *buffers]


def decode_forward(parts: Sequence[bytes]) -> tuple[Forward, bytes, list[bytes]]:
    try:
        header = msgspec.msgpack.decode(parts[0], type=Forward)
        return header, parts[1], list(parts[2:])
    except (msgspec.DecodeError, IndexError) as exc:
        raise InputError(f"bad forwarded message: {exc}") from None


def encode_command(stream: str, command: str) -> list[bytes]:
    return [KIND_CTL, _encoder.encode(Command(stream=stream, command=command))]


def decode_command(parts: Sequence[bytes]) -> Command:
    try:
        return msgspec.msgpack.decode(parts[0], type=Command)
    except (msgspec.DecodeError, IndexError) as exc:
        raise InputError(f"bad command: {exc}") from None


def encode_refusal(stream: str, reason: str) -> list[bytes]:
    return [KIND_REFUSED, _encoder.encode(Refusal(stream=stream, reason=reason))]


def decode_refusal(parts: Sequence[bytes]) -> Refusal:
    return msgspec.msgpack.decode(parts[0], type=Refusal)
