"""The causal power spectrum, streamed through the ring frame by frame, equals the offline
reference computed on the whole signal (relative error <= 1e-5), on synthetic and real audio."""

from __future__ import annotations

import av
import numpy as np
import pytest

from conftest import CREMA_D_CLIPS, OBAMA, require_shared_data
from streamav.frontend.spectrum import (CausalPowerSpectrum, SpectrumConfig,
                                        offline_power_spectrogram)
from streamav.ring import AVRing
from streamav.sources.media_file import MediaFileSource
from streamav.sources.synthetic import SyntheticConfig, SyntheticSource

RATE = 16_000


def _stream_spectra(source, window_samples=1024):
    """Run a source offline through the ring; one (end_index, spectrum, pts) per frame."""
    ring = AVRing(4, 8 * RATE, RATE, blocking=True)
    spectrum = CausalPowerSpectrum()
    source.start(ring)
    ends, spectra, pts = [], [], []
    try:
        while (frame := ring.video.read_next(timeout_s=10)) is not None:
            window = ring.audio.window_ending_at(frame.t_media_ns, window_samples, timeout_s=10)
            ends.append(window.end_index)
            spectra.append(spectrum.step(window.samples))
            pts.append(frame.pts_s)
    finally:
        ring.abort()
        source.stop()
    assert source.error() is None
    return np.array(ends), np.stack(spectra), np.array(pts)


def _max_relative_error(streamed: np.ndarray, reference: np.ndarray) -> float:
    """Per frame: max |difference| over the frame's largest bin; the worst frame."""
    scale = np.maximum(reference.max(axis=1, keepdims=True), 1e-20)
    return float((np.abs(streamed - reference) / scale).max())


def test_spectrum_shape_and_power_of_a_sine():
    cfg = SpectrumConfig()
    n = np.arange(cfg.window_samples)
    tone = np.sin(2 * np.pi * 64 * n / cfg.window_samples).astype(np.float32)  # exactly bin 64
    power = CausalPowerSpectrum(cfg).step(tone)
    assert power.shape == (513,) and power.dtype == np.float32
    assert int(np.argmax(power)) == 64
    assert power.min() >= 0
    with pytest.raises(ValueError):
        CausalPowerSpectrum(cfg).step(tone[:100])


def test_streamed_spectra_equal_offline_stft_with_hop_533():
    """At 16000/533 fps each frame ends exactly one hop later: a plain STFT with hop 533."""
    cfg = SpectrumConfig()
    source = SyntheticSource(SyntheticConfig(duration_s=3.0, fps=RATE / cfg.hop_samples,
                                             audio_block_samples=317), realtime=False)
    ends, streamed, _ = _stream_spectra(source)
    assert np.array_equal(ends, np.arange(len(ends)) * cfg.hop_samples)
    reference = offline_power_spectrogram(source.audio_signal(), ends, cfg)
    assert _max_relative_error(streamed, reference) <= 1e-5
    assert streamed[10:].max() > 1.0  # real content, not silence


@pytest.mark.parametrize("clip", ["crema-d", "obama"])
def test_streamed_spectra_equal_offline_reference_on_real_clips(clip):
    require_shared_data()
    path = CREMA_D_CLIPS[0] if clip == "crema-d" else OBAMA
    ends, streamed, pts = _stream_spectra(MediaFileSource(str(path), realtime=False))
    # The reference decodes and resamples the whole track at once, then frames it by pts.
    with av.open(str(path)) as container:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=RATE)
        chunks, first_s = [], None
        for frame in container.decode(audio=0):
            first_s = frame.time if first_s is None else first_s
            chunks += [out.to_ndarray().ravel() for out in resampler.resample(frame)]
        chunks += [out.to_ndarray().ravel() for out in resampler.resample(None)]
    signal = np.concatenate(chunks)
    expected_ends = np.round((pts - first_s) * RATE).astype(int)
    assert np.abs(ends - expected_ends).max() <= 1
    reference = offline_power_spectrogram(signal, ends)
    assert _max_relative_error(streamed, reference) <= 1e-5
