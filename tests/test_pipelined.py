"""`[run] pipelined` (#13 item 3): the model step in a thread of its own, so that the face of
frame t+1 overlaps the step of frame t. Offline (every frame of a file), the outputs are those of
the serial worker, frame for frame and bit for bit: the real demo clip through the real pipeline
and the shipped model on ONNX Runtime, run both ways in this process."""

from __future__ import annotations

import threading

import numpy as np

from streamav.config import load_config
from streamav.data import demo_clip_path
from streamav.live import build_pipeline

from conftest import free_tcp_port


def _run(pipelined: bool, **overrides):
    results, threads = [], set()

    def on_frame(result):
        results.append(result)
        threads.add(threading.current_thread().name)

    config = load_config(None, {
        "source.video": str(demo_clip_path()), "run.realtime": False, "run.preview": False,
        "publish.endpoint": f"tcp://127.0.0.1:{free_tcp_port()}",
        "publish.control_endpoint": "none", "run.pipelined": pipelined, **overrides})
    summary = build_pipeline(config, on_frame=on_frame).run()
    return results, summary.final_stats, threads


def test_pipelined_offline_outputs_equal_the_serial_worker():
    serial, serial_stats, serial_threads = _run(False)
    piped, piped_stats, piped_threads = _run(True)
    assert serial_threads == {"streamav-worker"} and piped_threads == {"streamav-model"}
    assert [r.frame.seq for r in piped] == [r.frame.seq for r in serial]
    assert len(serial) > 40 and sum(r.model is not None for r in serial) > 40
    for a, b in zip(serial, piped):
        assert a.face.found == b.face.found
        np.testing.assert_array_equal(a.face.landmarks_xy, b.face.landmarks_xy)
        np.testing.assert_array_equal(a.spectrum, b.spectrum)
        assert (a.model is None) == (b.model is None)
        if a.model is not None:
            assert a.model.latent == b.model.latent and a.model.emotion == b.model.emotion
            np.testing.assert_array_equal(a.model.denoised_rgb, b.model.denoised_rgb)
    for key in ("frames", "faces_found", "dropped_frames", "nonfinite_frames"):
        assert piped_stats[key] == serial_stats[key], key
    assert piped_stats["latency_ms"]["model"]["p50"] is not None


def test_pipelined_stops_after_max_frames_exactly():
    results, stats, _ = _run(True, **{"run.max_frames": 7})
    assert [r.frame.seq for r in results] == list(range(7)) and stats["frames"] == 7


def test_a_stop_while_the_model_thread_is_busy_ends_the_hand_over():
    """A slow or stuck step must not hold the worker past a stop: its wait to hand the model
    thread the next frame ends with the stop (the frame is not handed over)."""
    import queue

    from streamav.pipeline import LivePipeline, NullPublisher
    from streamav.sources.synthetic import SyntheticConfig, SyntheticSource

    config = load_config(None, {"source.video": "synthetic", "source.no_audio": True,
                                "run.preview": False, "model.enabled": False,
                                "publish.control_endpoint": "none"})
    pipeline = LivePipeline(config, [SyntheticSource(SyntheticConfig(duration_s=1.0,
                                                                     audio=False))],
                            None, NullPublisher())
    pipeline._to_model = queue.Queue()
    pipeline._to_model.put("the frame the model thread is stuck on")  # never task_done
    handed = []
    worker = threading.Thread(target=lambda: handed.append(pipeline._hand_over("next")))
    worker.start()
    worker.join(0.3)
    assert worker.is_alive()  # waiting for the busy model thread
    pipeline.request_stop("test")
    worker.join(5)
    assert not worker.is_alive() and handed == [False]
    assert pipeline._to_model.qsize() == 1
