"""One valid message of every wire type (streamav/wire/messages.py), for the wire's tests."""

from __future__ import annotations

from streamav.wire import messages as m

LABELS = ("angry", "happy", "neutral", "sad")


def face(frame_seq: int = 0, found: bool = True) -> m.Face:
    if not found:
        return m.Face(found=False, box=None, frame_seq=frame_seq, image_size=(640, 480),
                      pts=None)
    return m.Face(found=True, box=(100.25, 80.5, 120.0, 150.75),
                  landmarks=tuple((110.0 + 10.123456 * i, 120.987654 + i) for i in range(5)),
                  frame_seq=frame_seq, image_size=(640, 480), pts=frame_seq / 30)


def emotion(frame_seq: int = 0, top: str = "happy") -> m.Emotion:
    probs = tuple(0.6123456789 if label == top else 0.1292181070 for label in LABELS)
    return m.Emotion(labels=LABELS, probs=probs, top=top, confidence=0.6123456789,
                     uncertain=False, baseline_s=12.345678, profile=None, frame_seq=frame_seq)


def change(frame_seq: int = 0) -> m.EmotionChange:
    return m.EmotionChange(from_="neutral", to="happy", confidence=0.7777777, frame_seq=frame_seq)


def denoised(frame_seq: int = 0, size: int = 64) -> tuple[m.VideoDenoised, bytes]:
    pixels = bytes(range(256)) * (size * size * 3 // 256) + bytes(size * size * 3 % 256)
    return m.VideoDenoised(width=size, height=size, frame_seq=frame_seq), pixels


def latent(frame_seq: int = 0) -> m.Latent:
    return m.Latent(w=tuple(0.01 * i for i in range(84)), w_var=(0.5,) * 84,
                    z_av=(0.25,) * 16, z_a=(-0.5,) * 8, z_v=(1.0,) * 4, frame_seq=frame_seq)


def stats(final: bool = False) -> m.Stats:
    return m.Stats(fps=29.97, frames=300, faces_found=290, dropped_frames=1, audio_overflows=0,
                   audio_samples_lost=0, has_audio=True, publish_dropped=0, nonfinite_frames=0,
                   model_engine="onnx/cpu/fp32/b1", av_skew_ms=3.5, av_skew_p99_ms=None,
                   latency_ms={"face": m.Percentiles(p50=4.2, p99=9.0),
                               "model": m.Percentiles(p50=None, p99=None)},
                   elapsed_s=10.0, final=final)


def status(state: str = "started") -> m.Status:
    return m.Status(state=state, reason="sources: test",
                    anchor=m.Anchor(t_monotonic=1234.5, t_wall=1.7e9))


def every_topic() -> list[tuple[m.TopicMessage, tuple[bytes, ...]]]:
    """(message, its raw buffers) for each topic type."""
    video, pixels = denoised()
    return [(face(), ()), (face(found=False), ()), (emotion(), ()), (change(), ()),
            (video, (pixels,)), (latent(), ()), (stats(), ()), (status(), ())]


def envelope(seq: int = 0, stream: str = "test-stream") -> m.Envelope:
    return m.Envelope(schema=m.SCHEMA_VERSION, stream=stream, seq=seq, t_capture=100.0,
                      t_publish=100.002)
