"""The config tree (TOML + flags, validation) and the preview image composition."""

from __future__ import annotations

import numpy as np
import pytest

from streamav.config import load_config
from streamav.errors import InputError
from streamav.preview import display_available, render_preview


def test_toml_sections_and_flag_overrides(tmp_path):
    path = tmp_path / "live.toml"
    path.write_text("""
[source]
video = "talk.mp4"
[ring]
video_capacity_frames = 16
[publish]
endpoint = "tcp://127.0.0.1:6000"
[run]
realtime = false
max_frames = 10
""")
    config = load_config(path, {"run.max_frames": 99, "publish.endpoint": None})
    assert config.source.video == "talk.mp4" and config.ring.video_capacity_frames == 16
    assert config.run.max_frames == 99  # the flag wins
    assert config.publish.endpoint == "tcp://127.0.0.1:6000"  # a flag not given leaves it
    assert config.run.realtime is False
    assert config.face.crop_size_px == 64 and config.spectrum.window_samples == 1024


def test_config_errors_are_input_errors(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[ring]\nvideo_capacity = 3\n")
    with pytest.raises(InputError, match="unknown key"):
        load_config(bad)
    bad.write_text("[rnig]\n")
    with pytest.raises(InputError, match="unknown config section"):
        load_config(bad)
    bad.write_text("[ring\n")
    with pytest.raises(InputError, match="not valid TOML"):
        load_config(bad)
    with pytest.raises(InputError, match="no such config file"):
        load_config(tmp_path / "missing.toml")
    with pytest.raises(InputError, match="--max-frames"):
        load_config(None, {"source.video": "x.mp4", "run.max_frames": 0})


def test_display_detection(monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    available, why = display_available()
    assert not available and "DISPLAY" in why
    monkeypatch.setenv("DISPLAY", ":99")
    assert display_available() == (True, "")


def test_render_preview_draws_frame_box_crop_and_meter():
    frame = np.full((240, 320, 3), 50, np.uint8)
    crop = np.zeros((64, 64, 3), np.uint8)
    crop[..., 0] = 255  # pure red in RGB
    denoised = np.zeros((64, 64, 3), np.uint8)
    denoised[..., 2] = 255  # pure blue in RGB
    image = render_preview(frame, (100, 60, 80, 100), crop, audio_level_dbfs=-20.0, fps=29.9,
                           latency_ms=12.5, denoised_rgb=denoised, emotion="happy 0.91")
    assert image.shape == (504, 320 + 160, 3)
    assert tuple(image[60, 140]) == (80, 220, 80)  # box edge, green
    assert tuple(image[120, 200]) == (50, 50, 50)  # inside the box: the frame untouched
    assert tuple(image[50, 320 + 16 + 60]) == (0, 0, 255)  # the crop, now BGR red
    assert tuple(image[200, 320 + 16 + 60]) == (255, 0, 0)  # the denoised face, BGR blue
    meter = image[289, 320 + 16:320 + 16 + 128]
    filled = int((meter == (80, 220, 80)).all(axis=1).sum())
    assert 80 <= filled <= 90  # -20 dBFS fills 2/3 of the -60..0 scale
    silent = render_preview(frame, None, None, audio_level_dbfs=None)
    assert (silent[:240, :320] == 50).all()  # no box drawn when no face


def test_render_preview_draws_one_bar_per_emotion_the_top_one_green():
    frame = np.full((240, 320, 3), 50, np.uint8)
    labels = ("angry", "happy", "neutral")
    image = render_preview(frame, emotion_probs=(labels, (0.1, 0.7, 0.2)))
    x0, y0 = 320 + 16 + 52, 306  # the bars: 76 px wide from x0, one 13 px row per class
    rows = [image[y0 + 13 * i + 5, x0:x0 + 77] for i in range(3)]
    green = [int((row == (80, 220, 80)).all(axis=1).sum()) for row in rows]
    assert green[0] == green[2] == 0 and 50 <= green[1] <= 56  # 0.7 of 76 px, in green
    grey = [int((row == (150, 150, 150)).all(axis=1).sum()) for row in rows]
    assert 6 <= grey[0] <= 12 and 14 <= grey[2] <= 20  # the others in grey, to scale


def test_preview_emotion_line_says_when_it_is_uncertain():
    from streamav.preview import emotion_line
    from streamav.wire.messages import Emotion

    def emotion(top: str, confidence: float, uncertain: bool, baseline_s: float | None):
        labels = ("happy", "sad", "disgusted")
        probs = tuple(confidence if label == top else 0.0 for label in labels)
        return Emotion(labels=labels, probs=probs, top=top, confidence=confidence,
                       uncertain=uncertain, baseline_s=baseline_s, profile=None, frame_seq=0)

    certain = emotion("happy", 0.81, False, 12.0)
    assert emotion_line(certain) == "happy 0.81"
    young = emotion("sad", 0.14, True, 1.2)
    assert emotion_line(young) == "learning face 1s"
    later = emotion("disgusted", 0.41, True, None)
    assert emotion_line(later) == "unsure: disgusted"
    assert max(len(emotion_line(e)) for e in (certain, young, later)) <= 18  # the panel's width
