"""The microphone source: one PortAudio input stream turned into 16 kHz mono float32 blocks.

`sounddevice` (and so PortAudio) is imported only when a microphone is listed or opened, so the
rest of streamav works on machines without PortAudio.

Two paths, picked when the stream is opened:

- Direct: the device accepts 16 kHz float32 (`check_input_settings`). The PortAudio callback
  downmixes to mono (a view when the stream is mono, else a mean into a preallocated buffer) and
  hands the block to the sink, which copies it.
- Resampled: the device only runs at another rate (or `device_rate_hz` asks for one). The
  callback downmixes into a preallocated ring of raw blocks and queues the slot number; a
  resampler thread converts to 16 kHz with FFmpeg's swresample (PyAV `av.AudioResampler`: a
  streaming polyphase filter that keeps its state between blocks and whose output pts already
  account for its own delay), re-cuts the output into blocks of exactly `block_size` samples and
  writes them to the sink. Blocks the resampler thread has no room for are dropped and counted
  as overflows, like the device's own overflows.

Timestamps: the monotonic capture time (ns) of each block's first sample. In the callback it is
`now - (currentTime - inputBufferAdcTime)` when PortAudio reports an ADC time, else
`now - block duration`; the first sample of a block cannot be younger than the block itself, so
the age is never taken below one block duration. Resampled blocks map their first sample's
position back onto the timestamp of the input block it came from. Timestamps are forced
strictly increasing.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from dataclasses import dataclass
from fractions import Fraction
from types import ModuleType
from typing import Any

import numpy as np

from streamav.clock import NS_PER_S
from streamav.errors import DeviceError, InputError, MissingDependencyError
from streamav.sources.base import MODEL_SAMPLE_RATE_HZ, AVSink

PORTAUDIO_INSTALL_HINT = "apt-get install libportaudio2"
RING_DURATION_S = 1.0  # raw audio the resampled path can queue before it drops blocks
MAX_PLAUSIBLE_AGE_S = 5.0  # an ADC time older than this (or in the future) is not believed
ANCHORS_KEPT = 8  # input blocks remembered for dating resampled output (which lags < 1 block)


def import_sounddevice() -> ModuleType:
    """`sounddevice`, or a `MissingDependencyError` saying how to install what is missing."""
    try:
        import sounddevice
    except OSError as exc:  # sounddevice raises OSError("PortAudio library not found")
        raise MissingDependencyError(
            f"PortAudio is not installed ({exc}); install it with: {PORTAUDIO_INSTALL_HINT}"
        ) from exc
    except ImportError as exc:
        raise MissingDependencyError(
            f"the Python package sounddevice is missing ({exc}); install it with: "
            "pip install sounddevice"
        ) from exc
    return sounddevice


def list_input_devices() -> list[dict[str, Any]]:
    """Every PortAudio device with input channels: index, name, channels, default_samplerate
    (Hz), hostapi (name) and is_default (PortAudio's default input)."""
    sd = import_sounddevice()
    try:
        devices = sd.query_devices()
        hostapis = sd.query_hostapis()
    except sd.PortAudioError as exc:
        raise DeviceError(f"PortAudio cannot list audio devices: {exc}") from exc
    default_index = _default_input_index(sd)
    return [
        {
            "index": int(info["index"]),
            "name": str(info["name"]),
            "channels": int(info["max_input_channels"]),
            "default_samplerate": float(info["default_samplerate"]),
            "hostapi": str(hostapis[info["hostapi"]]["name"]),
            "is_default": int(info["index"]) == default_index,
        }
        for info in devices
        if int(info["max_input_channels"]) > 0
    ]


def describe_inputs(inputs: list[dict[str, Any]]) -> str:
    """One line naming every input, for error messages."""
    if not inputs:
        return "no audio inputs found"
    described = [
        f"{d['index']} {d['name']!r} ({d['hostapi']}, {d['channels']} ch"
        f"{', default' if d['is_default'] else ''})"
        for d in inputs
    ]
    return "audio inputs: " + "; ".join(described)


@dataclass(frozen=True)
class CaptureSettings:
    """What the input stream was opened with."""

    device_index: int
    device_name: str
    sample_rate_hz: int  # the device's rate; blocks reach the sink at MODEL_SAMPLE_RATE_HZ
    channels: int  # the device's channels; blocks reach the sink downmixed to mono
    device_block_frames: int  # frames per PortAudio callback

    @property
    def resampled(self) -> bool:
        return self.sample_rate_hz != MODEL_SAMPLE_RATE_HZ


class MicrophoneSource:
    """A PortAudio input device (index, or case-insensitive part of its name; None: default)."""

    has_video = False
    has_audio = True

    def __init__(self, device: int | str | None = None, block_size: int = 256,
                 channels: int | None = None, *, device_rate_hz: int | None = None) -> None:
        """`block_size`: samples per block at 16 kHz. `channels`: channels to open (None: mono
        if the device allows it, else up to 2), always downmixed to mono. `device_rate_hz`:
        open the device at this rate and resample (None: 16 kHz if accepted, else the device's
        default rate)."""
        if block_size <= 0:
            raise InputError(f"microphone block size must be positive, got {block_size}")
        if channels is not None and channels <= 0:
            raise InputError(f"microphone channels must be positive, got {channels}")
        if device_rate_hz is not None and device_rate_hz <= 0:
            raise InputError(f"microphone rate must be positive, got {device_rate_hz} Hz")
        self.device = device
        self.block_size = block_size
        self.name = "microphone" if device is None else f"microphone:{device}"
        self._channels = channels
        self._device_rate_hz = device_rate_hz
        self.settings: CaptureSettings | None = None
        self._sd: ModuleType | None = None
        self._index: int | None = None  # the PortAudio device, once prepared
        self._sink: AVSink | None = None
        self._stream: Any = None
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        self._stopping = False
        self._ended = False
        self._seq = 0
        self._last_t_ns = -1
        self._block_ns = 0
        self._mix: np.ndarray = np.empty(0, np.float32)
        # Resampled path: raw mono blocks at the device rate, their timestamps, a slot queue.
        self._ring: np.ndarray = np.empty((0, 0), np.float32)
        self._ring_t_ns: np.ndarray = np.empty(0, np.int64)
        self._ring_next = 0
        self._slots: queue.SimpleQueue[int | None] = queue.SimpleQueue()
        self._resampler_thread: threading.Thread | None = None

    # -- Source protocol ---------------------------------------------------------------------

    def prepare(self) -> None:
        """Find the device and the rate and channels it accepts, without opening the stream
        (a DeviceError or MissingDependencyError now rather than after the model loads)."""
        if self.settings is not None:
            return
        sd = import_sounddevice()
        self._sd = sd
        self._index = resolve_input_device(sd, self.device)
        self.settings = _choose_settings(sd, self._index, self._channels, self._device_rate_hz,
                                         self.block_size)

    def start(self, sink: AVSink) -> None:
        if self._stream is not None:
            raise RuntimeError(f"{self.name} is already started")
        self.prepare()
        sd, index, settings = self._sd, self._index, self.settings
        assert sd is not None and settings is not None
        self._sink = sink
        self._block_ns = settings.device_block_frames * NS_PER_S // settings.sample_rate_hz
        self._mix = np.zeros(settings.device_block_frames, np.float32)
        if settings.resampled:
            n_slots = max(4, round(RING_DURATION_S * settings.sample_rate_hz
                                   / settings.device_block_frames))
            self._ring = np.zeros((n_slots, settings.device_block_frames), np.float32)
            self._ring_t_ns = np.zeros(n_slots, np.int64)
        callback = self._ring_callback if settings.resampled else self._direct_callback
        # latency="low" lets PortAudio use one block per host period, so each callback comes as
        # its block completes; "high" picks larger periods that PortAudio splits into bursts.
        try:
            self._stream = sd.InputStream(
                device=index, samplerate=settings.sample_rate_hz,
                blocksize=settings.device_block_frames, channels=settings.channels,
                dtype="float32", latency="low", callback=callback,
                finished_callback=self._on_stream_finished)
        except (sd.PortAudioError, ValueError) as exc:
            raise DeviceError(
                f"cannot open microphone {settings.device_name!r} at {settings.sample_rate_hz} Hz,"
                f" {settings.channels} ch: {exc}") from exc
        if settings.resampled:
            self._resampler_thread = threading.Thread(
                target=self._resample_loop, name=f"{self.name}-resampler", daemon=True)
            self._resampler_thread.start()
        try:
            self._stream.start()
        except sd.PortAudioError as exc:
            self._stream.close(ignore_errors=True)
            self._stream = None
            self._stop_resampler()
            raise DeviceError(f"cannot start microphone {settings.device_name!r}: {exc}") from exc

    def stop(self) -> None:
        """Close the stream, drain the resampler, then tell the sink the audio has ended."""
        with self._lock:
            if self._stopping or self._stream is None:
                return
            self._stopping = True
        try:
            self._stream.stop()
            self._stream.close()
        except self._sd.PortAudioError:  # type: ignore[union-attr]
            pass  # closing a stream whose device vanished; nothing left to release
        self._stop_resampler()
        self._end_of_stream()

    def error(self) -> BaseException | None:
        return self._error

    # -- PortAudio callbacks (PortAudio's thread: no logging, no allocation) -----------------

    def _first_sample_time_ns(self, now_ns: int, time_info: Any) -> int:
        adc_s = time_info.inputBufferAdcTime
        current_s = time_info.currentTime
        age_ns = self._block_ns
        if adc_s > 0.0 and current_s > 0.0 and 0.0 <= current_s - adc_s <= MAX_PLAUSIBLE_AGE_S:
            age_ns = max(age_ns, int((current_s - adc_s) * NS_PER_S))
        t_first_ns = now_ns - age_ns
        if t_first_ns <= self._last_t_ns:
            t_first_ns = self._last_t_ns + 1
        self._last_t_ns = t_first_ns
        return t_first_ns

    @staticmethod
    def _downmix(indata: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Mono samples of `indata` (frames, channels): a view if mono, else the mean in `out`."""
        if indata.shape[1] == 1:
            return indata[:, 0]
        np.mean(indata, axis=1, out=out)
        return out

    def _stamp_block(self, time_info: Any, status: Any) -> int:
        """Callback: the block's first-sample capture time; counts PortAudio's overflow flag."""
        t_first_ns = self._first_sample_time_ns(time.monotonic_ns(), time_info)
        if status.input_overflow:
            self._sink.audio_overflow()
        return t_first_ns

    def _direct_callback(self, indata: np.ndarray, frames: int, time_info: Any,
                         status: Any) -> None:
        try:
            t_first_ns = self._stamp_block(time_info, status)
            self._sink.write_audio(self._seq, t_first_ns, self._downmix(indata, self._mix[:frames]))
            self._seq += 1
        except BaseException as exc:  # keep it for error(); PortAudio only sees an abort
            self._error = exc
            raise self._sd.CallbackAbort from exc

    def _ring_callback(self, indata: np.ndarray, frames: int, time_info: Any,
                       status: Any) -> None:
        try:
            t_first_ns = self._stamp_block(time_info, status)
            n_slots = self._ring.shape[0]
            if self._slots.qsize() >= n_slots - 1:  # the resampler is a full ring behind
                self._sink.audio_overflow()
                return
            slot = self._ring_next
            self._ring_next = (slot + 1) % n_slots
            row = self._ring[slot, :frames]
            np.copyto(row, self._downmix(indata, row))  # a no-op copy when it mixed into row
            self._ring_t_ns[slot] = t_first_ns
            self._slots.put(slot)
        except BaseException as exc:
            self._error = exc
            raise self._sd.CallbackAbort from exc

    def _on_stream_finished(self) -> None:
        if self._stopping:
            return
        if self._error is None:
            self._error = DeviceError(f"microphone {self.name!r} stopped delivering audio")
        if self._sink is not None:
            self._sink.status("source_lost", f"{self.name}: {self._error}")

    # -- resampled path (its own thread) -----------------------------------------------------

    def _resample_loop(self) -> None:
        try:
            _Resampler(self).run()
        except BaseException as exc:
            self._error = exc
            if self._sink is not None:
                self._sink.status("source_lost", f"{self.name}: resampler failed: {exc}")

    def _stop_resampler(self) -> None:
        if self._resampler_thread is not None:
            self._slots.put(None)
            self._resampler_thread.join()
            self._resampler_thread = None

    def _end_of_stream(self) -> None:
        if not self._ended and self._sink is not None:
            self._ended = True
            self._sink.end_of_stream("audio")


class _Resampler:
    """Device-rate blocks from the source's ring → 16 kHz blocks of `block_size` into the sink."""

    def __init__(self, source: MicrophoneSource) -> None:
        import av  # PyAV: a dependency, but only needed on this path

        assert source.settings is not None and source._sink is not None
        self.source = source
        self.sink = source._sink
        self.in_rate_hz = source.settings.sample_rate_hz
        self.block_size = source.block_size
        self.resampler = av.AudioResampler(format="flt", layout="mono", rate=MODEL_SAMPLE_RATE_HZ)
        self.make_frame = av.AudioFrame.from_ndarray
        self.time_base = Fraction(1, self.in_rate_hz)
        self.n_in = 0  # device-rate samples fed so far
        # (input sample position, capture time ns) of the first sample of recent input blocks
        self.anchors: deque[tuple[int, int]] = deque(maxlen=ANCHORS_KEPT)
        self.pending = np.empty(0, np.float32)  # 16 kHz samples not yet cut into a block
        self.pending_pos = 0  # 16 kHz position of pending[0]
        self.last_t_ns = -1

    def run(self) -> None:
        source = self.source
        while True:
            slot = source._slots.get()
            if slot is None:
                break
            block = source._ring[slot]
            frame = self.make_frame(block[np.newaxis, :], format="flt", layout="mono")
            frame.sample_rate = self.in_rate_hz
            frame.pts = self.n_in
            frame.time_base = self.time_base
            self.anchors.append((self.n_in, int(source._ring_t_ns[slot])))
            self.n_in += block.shape[0]
            self._take(self.resampler.resample(frame), final=False)
        self._take(self.resampler.resample(None), final=True)

    def _take(self, frames: list[Any], final: bool) -> None:
        for out in frames:
            samples = out.to_ndarray().reshape(-1).astype(np.float32, copy=False)
            if self.pending.shape[0] == 0 and out.pts is not None:
                self.pending_pos = int(out.pts)
            self.pending = np.concatenate([self.pending, samples])
        while self.pending.shape[0] >= self.block_size:
            self._emit(self.pending[:self.block_size])
            self.pending = self.pending[self.block_size:]
        if final and self.pending.shape[0] > 0:
            self._emit(self.pending)
            self.pending = self.pending[:0]

    def _emit(self, samples: np.ndarray) -> None:
        # The block's first sample, dated from the input block it came from (the latest one that
        # starts at or before it on the input's timeline): t + (pos/16k - n/rate) s, in integers.
        scaled_pos = self.pending_pos * self.in_rate_hz
        anchor_pos, anchor_t_ns = self.anchors[0]
        for n_start, t_ns in self.anchors:
            if n_start * MODEL_SAMPLE_RATE_HZ <= scaled_pos:
                anchor_pos, anchor_t_ns = n_start, t_ns
        offset_ns = ((scaled_pos - anchor_pos * MODEL_SAMPLE_RATE_HZ)
                     * NS_PER_S // (MODEL_SAMPLE_RATE_HZ * self.in_rate_hz))
        t_first_ns = max(anchor_t_ns + offset_ns, self.last_t_ns + 1)
        self.last_t_ns = t_first_ns
        self.sink.write_audio(self.source._seq, t_first_ns, samples)
        self.source._seq += 1
        self.pending_pos += samples.shape[0]


def _default_input_index(sd: ModuleType) -> int | None:
    try:
        info = sd.query_devices(kind="input")
    except (sd.PortAudioError, ValueError):
        return None
    return int(info["index"])


def resolve_input_device(sd: ModuleType, device: int | str | None) -> int:
    """The PortAudio index of `device`; a `DeviceError` listing the inputs if there is none."""
    inputs = list_input_devices()
    if device is None:
        index = _default_input_index(sd)
        if index is None or not any(d["index"] == index for d in inputs):
            raise DeviceError(f"no default microphone; {describe_inputs(inputs)}")
        return index
    if isinstance(device, bool):
        raise InputError(f"microphone must be an index or a name, got {device!r}")
    if isinstance(device, int) or device.strip().isdigit():
        index = int(device)
        if any(d["index"] == index for d in inputs):
            return index
        raise DeviceError(f"no microphone with index {index}; {describe_inputs(inputs)}")
    wanted = device.strip().lower()
    exact = [d for d in inputs if d["name"].lower() == wanted]
    matches = exact or [d for d in inputs if wanted in d["name"].lower()]
    if len(matches) == 1:
        return int(matches[0]["index"])
    if not matches:
        raise DeviceError(f"no microphone matches {device!r}; {describe_inputs(inputs)}")
    raise DeviceError(f"microphone name {device!r} is ambiguous, give an index; "
                      f"{describe_inputs(matches)}")


def _choose_settings(sd: ModuleType, index: int, channels: int | None,
                     device_rate_hz: int | None, block_size: int) -> CaptureSettings:
    """The first (rate, channels) the device accepts, 16 kHz first, mono first."""
    info = sd.query_devices(index)
    max_channels = int(info["max_input_channels"])
    channel_options = [channels] if channels is not None else \
        list(dict.fromkeys([1, min(2, max_channels), max_channels]))
    default_rate_hz = int(round(float(info["default_samplerate"])))
    rate_options = [device_rate_hz] if device_rate_hz is not None else \
        list(dict.fromkeys([MODEL_SAMPLE_RATE_HZ, default_rate_hz]))
    refused: list[str] = []
    for rate_hz in rate_options:
        for n_channels in channel_options:
            try:
                sd.check_input_settings(device=index, channels=n_channels, dtype="float32",
                                        samplerate=rate_hz)
            except (sd.PortAudioError, ValueError) as exc:
                refused.append(f"{rate_hz} Hz x {n_channels} ch: {exc}")
                continue
            block_frames = block_size if rate_hz == MODEL_SAMPLE_RATE_HZ else \
                max(1, round(block_size * rate_hz / MODEL_SAMPLE_RATE_HZ))
            return CaptureSettings(index, str(info["name"]), rate_hz, n_channels, block_frames)
    raise DeviceError(f"microphone {index} {info['name']!r} refuses float32 capture "
                      f"({'; '.join(refused)})")
