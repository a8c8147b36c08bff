"""The microphone source against real PortAudio, reading a virtual ALSA microphone.

There is no sound card here, so the test builds a microphone out of ALSA's own plugins: in a
temporary HOME, an .asoundrc makes the default PCM a `file` plugin whose capture side returns the
bytes of `infile`, over a `null` slave. Speech comes from espeak-ng, converted by sox to 16 kHz
(and 48 kHz) raw float32. What experiment showed about this setup:

- The file plugin fills the capture buffer from `infile` only in snd_pcm_readi, in the format the
  client opened the PCM with. A `plug` above it breaks that (its conversions read the slave through
  mmap, which skips `infile`: the samples match for the first period, then are garbage), so the
  file plugin must be the top PCM and `infile` must hold what PortAudio opens: float32 LE at the
  source's rate and channel count (PortAudio picks float32 because the source asks for it and the
  null slave offers every format). That is why the speech is raw float32, not s16le.
- `null` paces nothing: a plain file is read as fast as the CPU goes (100 000 callbacks a second,
  then zeros past its end). So `infile` is a FIFO that the child process fills one PortAudio period
  at a time on a real-time schedule, i.e. a virtual ADC; after the speech it writes silence until
  the source has stopped. Each write is one whole period and at most PIPE_BUF bytes (atomic),
  because PortAudio's read path treats a short read as a full one.

PortAudio reads ALSA's configuration once, in Pa_Initialize, so every PortAudio call runs in a
child process (this file run as a script) whose HOME points at the temporary configuration.
"""

from __future__ import annotations

import ctypes.util
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

try:
    from recording_sink import RecordingSink
except ImportError:  # tests/ imported as a package
    from tests.recording_sink import RecordingSink

MODEL_RATE_HZ = 16_000
CAPTURE_S = 1.5
MIN_CORRELATION = 0.9
PIPE_BUF_BYTES = 4096
SPEECH_TEXT = ("The quick brown fox jumps over the lazy dog. "
               "Streaming audio from a virtual microphone, one block at a time.")
CHILD_TIMEOUT_S = 60

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ALSA is Linux only"),
    pytest.mark.skipif(shutil.which("espeak-ng") is None or shutil.which("sox") is None,
                       reason="needs espeak-ng and sox (apt-get install espeak-ng sox)"),
    pytest.mark.skipif(ctypes.util.find_library("portaudio") is None,
                       reason="needs PortAudio (apt-get install libportaudio2)"),
]


# -- fixtures and helpers (parent side) --------------------------------------------------------


@dataclass(frozen=True)
class Speech:
    raw_16k: Path  # float32 LE mono at 16 kHz: the reference, and the 16 kHz device's input
    raw_48k: Path  # float32 LE mono at 48 kHz

    def reference(self) -> np.ndarray:
        return np.fromfile(self.raw_16k, dtype="<f4")


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> Speech:
    directory = tmp_path_factory.mktemp("speech")
    wav = directory / "speech.wav"
    subprocess.run(["espeak-ng", "-w", str(wav), SPEECH_TEXT], check=True, capture_output=True)
    raws = []
    for rate_hz in (16_000, 48_000):
        raw = directory / f"speech_{rate_hz}.f32"
        subprocess.run(["sox", str(wav), "-r", str(rate_hz), "-c", "1", "-e", "floating-point",
                        "-b", "32", "-t", "raw", str(raw)], check=True, capture_output=True)
        raws.append(raw)
    speech = Speech(*raws)
    assert speech.reference().shape[0] > 3 * MODEL_RATE_HZ  # enough speech for the capture
    return speech


def virtual_mic_env(home: Path, infile: Path) -> dict[str, str]:
    """An environment whose ALSA default PCM reads `infile` (see the module docstring)."""
    home.mkdir(parents=True, exist_ok=True)
    assert '"' not in str(infile) and "\\" not in str(infile)
    (home / ".asoundrc").write_text(
        "pcm.!default {\n"
        "    type file\n"
        '    slave.pcm "null"\n'
        '    file "/dev/null"\n'
        f'    infile "{infile}"\n'
        '    format "raw"\n'
        "}\n")
    env = dict(os.environ)
    env.pop("ALSA_CONFIG_PATH", None)
    env["HOME"] = str(home)
    env["XDG_CONFIG_HOME"] = str(home / ".config")
    return env


def run_child(command: str, args: dict[str, Any], env: dict[str, str]) -> str:
    done = subprocess.run([sys.executable, __file__, command, json.dumps(args)], env=env,
                          capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)
    assert done.returncode == 0, f"child {command} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@dataclass(frozen=True)
class Capture:
    samples: np.ndarray
    t_ns: np.ndarray
    seqs: np.ndarray
    block_lengths: np.ndarray
    write_ns: np.ndarray  # when the virtual ADC delivered each period (monotonic ns)
    meta: dict[str, Any]


def capture(tmp_path: Path, data: np.ndarray, rate_hz: int, channels: int,
            source_kwargs: dict[str, Any]) -> Capture:
    """Run the source in a child for CAPTURE_S on a FIFO fed with `data` (interleaved float32)."""
    fifo = tmp_path / "mic.fifo"
    os.mkfifo(fifo)
    pcm = tmp_path / "mic.f32"
    data.astype("<f4").tofile(pcm)
    out = tmp_path / "capture"
    run_child("capture", {"fifo": str(fifo), "pcm": str(pcm), "rate_hz": rate_hz,
                          "channels": channels, "source": source_kwargs, "out": str(out)},
              virtual_mic_env(tmp_path / "home", fifo))
    arrays = np.load(out.with_suffix(".npz"))
    meta = json.loads(out.with_suffix(".json").read_text())
    return Capture(arrays["samples"], arrays["t_ns"], arrays["seqs"], arrays["block_lengths"],
                   arrays["write_ns"], meta)


def correlation_peak(captured: np.ndarray, reference: np.ndarray,
                     max_lag: int) -> tuple[float, int]:
    """Best normalised cross-correlation over lags in [-max_lag, max_lag], and its lag (samples
    by which the capture is late)."""
    best = (-1.0, 0)
    for lag in range(-max_lag, max_lag + 1):
        x = captured[max(lag, 0):]
        y = reference[max(-lag, 0):]
        n = min(x.shape[0], y.shape[0])
        x, y = x[:n].astype(np.float64), y[:n].astype(np.float64)
        denominator = np.sqrt(np.dot(x, x) * np.dot(y, y))
        if denominator > 0:
            best = max(best, (float(np.dot(x, y) / denominator), lag))
    return best


def assert_stream_shape(result: Capture, block_size: int) -> None:
    """seq 0, 1, 2, ...; full blocks; ~CAPTURE_S of audio; first-sample times spaced by a block."""
    meta = result.meta
    assert meta["error"] is None
    assert meta["ended"] == ["audio"]
    assert meta["overflows"] == 0
    assert result.seqs.tolist() == list(range(result.seqs.shape[0]))
    assert set(result.block_lengths[:-1].tolist()) == {block_size}
    assert 0 < result.block_lengths[-1] <= block_size
    expected_samples = CAPTURE_S * MODEL_RATE_HZ
    assert 0.85 * expected_samples <= result.samples.shape[0] <= 1.15 * expected_samples, (
        f"{result.samples.shape[0]} samples in {CAPTURE_S} s; far more than real time means "
        "PortAudio read the FIFO in periods other than one block (short reads give garbage)")

    block_ns = block_size * 1e9 / MODEL_RATE_HZ
    steps_ns = np.diff(result.t_ns[:-1])  # the last block may be a short flush
    assert np.all(steps_ns > 0), "capture times must increase"
    assert abs(np.median(steps_ns) - block_ns) <= 0.1 * block_ns
    assert abs(steps_ns.mean() - block_ns) <= 0.05 * block_ns
    assert meta["t_start_ns"] - 1e9 <= result.t_ns[0] and result.t_ns[-1] <= meta["t_stop_ns"]


def assert_times_match_the_virtual_adc(result: Capture, lag_samples: int) -> None:
    """Each block's time against when its first sample was "captured": the virtual ADC delivers
    period i when it writes it, so its first sample dates from one period before that write."""
    rate_hz = result.meta["rate_hz"]
    period_frames = result.meta["settings"]["device_block_frames"]
    first_positions = np.concatenate([[0], np.cumsum(result.block_lengths)[:-1]]) - lag_samples
    device_positions = first_positions * rate_hz // MODEL_RATE_HZ  # on the device's timeline
    periods = device_positions // period_frames
    inside = (periods >= 0) & (periods < result.write_ns.shape[0])
    true_ns = (result.write_ns[periods[inside]] - period_frames * 1e9 / rate_hz
               + (device_positions[inside] - periods[inside] * period_frames) * 1e9 / rate_hz)
    errors_ms = (result.t_ns[inside] - true_ns) / 1e6
    print(f"capture time - virtual ADC time: median {np.median(errors_ms):.3f} ms, "
          f"min {errors_ms.min():.3f} ms, max {errors_ms.max():.3f} ms")
    assert inside.sum() >= 0.9 * inside.shape[0]
    assert -2.0 <= np.median(errors_ms) <= 10.0


# -- tests -------------------------------------------------------------------------------------


def test_default_microphone_delivers_the_speech_at_16k(tmp_path: Path, speech: Speech) -> None:
    block_size = 256
    reference = speech.reference()
    result = capture(tmp_path, reference, MODEL_RATE_HZ, 1, {"block_size": block_size})

    settings = result.meta["settings"]
    assert settings["sample_rate_hz"] == MODEL_RATE_HZ and settings["channels"] == 1
    assert settings["device_name"] == "default"
    assert_stream_shape(result, block_size)
    peak, lag = correlation_peak(result.samples, reference, max_lag=MODEL_RATE_HZ // 4)
    print(f"16 kHz direct: correlation peak {peak:.6f} at lag {lag}")
    assert peak >= MIN_CORRELATION
    assert lag == 0
    assert_times_match_the_virtual_adc(result, lag)
    # The direct path passes PortAudio's float32 samples through untouched.
    n = result.samples.shape[0]
    np.testing.assert_array_equal(result.samples, reference[:n])


def test_48k_stereo_device_is_resampled_and_downmixed(tmp_path: Path, speech: Speech) -> None:
    block_size = 128  # 384 stereo float32 frames at 48 kHz = 3072 bytes: atomic FIFO writes
    mono_48k = np.fromfile(speech.raw_48k, dtype="<f4")
    stereo = np.stack([mono_48k, 0.5 * mono_48k], axis=1)  # downmix (mean) = 0.75 x speech
    result = capture(tmp_path, stereo.reshape(-1), 48_000, 2,
                     {"device": "DEFAULT", "block_size": block_size, "channels": 2,
                      "device_rate_hz": 48_000})

    settings = result.meta["settings"]
    assert settings["sample_rate_hz"] == 48_000 and settings["channels"] == 2
    assert settings["device_block_frames"] == 384
    assert_stream_shape(result, block_size)
    reference = speech.reference()
    peak, lag = correlation_peak(result.samples, reference, max_lag=MODEL_RATE_HZ // 4)
    print(f"48 kHz stereo resampled: correlation peak {peak:.6f} at lag {lag}")
    assert peak >= MIN_CORRELATION
    assert abs(lag) <= 2  # swresample's delay is compensated, not passed on
    assert_times_match_the_virtual_adc(result, lag)
    n = min(result.samples.shape[0], reference.shape[0])
    gain = np.sqrt(np.mean(result.samples[:n] ** 2) / np.mean(reference[:n] ** 2))
    assert abs(gain - 0.75) <= 0.05, f"downmix gain {gain:.3f}, expected the mean of 1 and 0.5"


@pytest.mark.parametrize("device", ["no-such-microphone", 99])
def test_unknown_microphone_is_a_device_error_listing_inputs(tmp_path: Path, speech: Speech,
                                                             device: str | int) -> None:
    env = virtual_mic_env(tmp_path / "home", speech.raw_16k)
    report = json.loads(run_child("unknown", {"device": device}, env))
    assert report["type"] == "DeviceError", report
    message = report["message"]
    assert "\n" not in message
    assert str(device) in message
    assert "0 'default' (ALSA" in message  # what does exist, so the user can pick it


def test_print_devices_shows_the_alsa_default(tmp_path: Path, speech: Speech) -> None:
    env = virtual_mic_env(tmp_path / "home", speech.raw_16k)
    out = run_child("devices", {}, env)
    assert "Traceback" not in out
    assert "Audio inputs" in out
    rows = [line for line in out.splitlines() if "default" in line]
    assert any("ALSA" in row and "*" in row for row in rows), out


def test_bad_options_are_input_errors() -> None:
    from streamav.errors import InputError
    from streamav.sources.microphone import MicrophoneSource

    for kwargs in ({"block_size": 0}, {"channels": 0}, {"device_rate_hz": -1}):
        with pytest.raises(InputError):
            MicrophoneSource(**kwargs)


# -- child side: runs with HOME pointing at the virtual microphone -----------------------------


class PacedWriter(threading.Thread):
    """Writes `data` into the FIFO one period at a time at the device rate, then silence."""

    def __init__(self, fd: int, data: np.ndarray, rate_hz: int, channels: int,
                 period_frames: int) -> None:
        super().__init__(daemon=True)
        chunk_bytes = period_frames * channels * 4
        assert chunk_bytes <= PIPE_BUF_BYTES, "FIFO writes must be atomic"
        self.fd = fd
        self.data = data.astype("<f4")
        self.chunk = period_frames * channels
        self.period_ns = period_frames * 1_000_000_000 // rate_hz
        self.stopped = threading.Event()
        self.write_ns: list[int] = []  # when each period was handed over

    def run(self) -> None:
        t0_ns = time.monotonic_ns()
        silence = np.zeros(self.chunk, "<f4")
        i = 0
        while not self.stopped.is_set():
            chunk = self.data[i * self.chunk:(i + 1) * self.chunk]
            self.write_ns.append(time.monotonic_ns())
            os.write(self.fd, (chunk if chunk.shape[0] == self.chunk else silence).tobytes())
            i += 1
            remaining_ns = t0_ns + i * self.period_ns - time.monotonic_ns()
            if remaining_ns > 0:
                time.sleep(remaining_ns / 1e9)


def child_capture(args: dict[str, Any]) -> None:
    # Hold the FIFO open read-write first: PortAudio's opens of the PCM (device enumeration,
    # format checks, the stream) then never block, and the writer never gets SIGPIPE.
    fd = os.open(args["fifo"], os.O_RDWR)
    from streamav.sources.microphone import MicrophoneSource

    source = MicrophoneSource(**args["source"])
    sink = RecordingSink()
    t_start_ns = time.monotonic_ns()
    source.start(sink)
    settings = source.settings
    assert settings is not None
    writer = PacedWriter(fd, np.fromfile(args["pcm"], dtype="<f4"), args["rate_hz"],
                         args["channels"], settings.device_block_frames)
    writer.start()
    time.sleep(CAPTURE_S)
    source.stop()  # the writer keeps feeding until here: PortAudio's read must not starve
    writer.stopped.set()
    t_stop_ns = time.monotonic_ns()
    ended = sink.wait_ended("audio", timeout_s=1.0)
    out = Path(args["out"])
    np.savez(out.with_suffix(".npz"), samples=sink.audio(), t_ns=sink.audio_times_ns(),
             seqs=np.array(sink.audio_seqs(), np.int64),
             block_lengths=np.array([b.samples.shape[0] for b in sink.audio_blocks], np.int64),
             write_ns=np.array(writer.write_ns, np.int64))
    error = source.error()
    out.with_suffix(".json").write_text(json.dumps({
        "settings": settings.__dict__, "rate_hz": args["rate_hz"],
        "ended": sorted(sink.ended) if ended else [],
        "overflows": sink.overflows, "error": None if error is None else repr(error),
        "statuses": sink.statuses, "t_start_ns": t_start_ns, "t_stop_ns": t_stop_ns}))


def child_unknown(args: dict[str, Any]) -> None:
    from streamav.errors import StreamavError
    from streamav.sources.microphone import MicrophoneSource

    try:
        MicrophoneSource(args["device"]).start(RecordingSink())
    except StreamavError as exc:
        print(json.dumps({"type": type(exc).__name__, "message": str(exc)}))
    else:
        print(json.dumps({"type": None, "message": "opened"}))


def child_devices(args: dict[str, Any]) -> None:
    from rich.console import Console

    from streamav.devices import print_devices

    print_devices(Console(file=sys.stdout, width=160, color_system=None))


if __name__ == "__main__":
    children = {"capture": child_capture, "unknown": child_unknown, "devices": child_devices}
    children[sys.argv[1]](json.loads(sys.argv[2]))
