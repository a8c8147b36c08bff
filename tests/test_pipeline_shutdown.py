"""Shutdown cannot race with a frame being processed: Ctrl-C (KeyboardInterrupt in the main
thread, the library path) and stop signals (`stop_on_signals`, the CLI path) arriving while the
worker is inside a slow stage let that frame finish before any stage is stopped."""

from __future__ import annotations

import _thread
import os
import signal
import threading
import time

from streamav.config import load_config
from streamav.frontend.face import NOT_FOUND
from streamav.pipeline import LivePipeline, NullPublisher
from streamav.stop_signals import stop_on_signals
from streamav.sources.synthetic import SyntheticConfig, SyntheticSource


class SlowFace:
    """A face stage that takes 0.2 s a frame and notices being stopped under a frame."""

    def __init__(self) -> None:
        self.started = False
        self.in_step = threading.Event()
        self.steps_done = 0
        self.stopped_during_step = False
        self._stepping = False

    def start(self) -> None:
        self.started = True

    def step(self, image_bgr):
        assert self.started, "start() first"
        self._stepping = True
        self.in_step.set()
        time.sleep(0.2)
        assert self.started, "stopped under a frame"
        self._stepping = False
        self.steps_done += 1
        return NOT_FOUND

    def stop(self) -> None:
        self.stopped_during_step = self._stepping
        self.started = False


def _pipeline() -> tuple[LivePipeline, SlowFace]:
    config = load_config(None, {"source.video": "synthetic", "source.no_audio": True,
                                "run.preview": False, "model.enabled": False,
                                "publish.control_endpoint": "none"})
    face = SlowFace()
    source = SyntheticSource(SyntheticConfig(duration_s=30.0, audio=False), realtime=True)
    return LivePipeline(config, [source], face, NullPublisher()), face


def _in_a_frame_then(face: SlowFace, action, repeats: int,
                     until: threading.Event | None = None) -> threading.Thread:
    """Once the worker is inside a frame, do `action` `repeats` times, 10 ms apart (stopping
    early once `until` is set: the pipeline has taken the stop)."""
    def run() -> None:
        face.in_step.wait(30)
        for _ in range(repeats):
            if until is not None and until.is_set():
                break
            action()
            time.sleep(0.01)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _join_absorbing_interrupts(thread: threading.Thread) -> None:
    """Wait for the helper; Ctrl-Cs it sends after `run` has returned are the caller's, not the
    pipeline's, and must not end the test run."""
    while thread.is_alive():
        try:
            thread.join(0.05)
        except KeyboardInterrupt:
            pass
    for _ in range(5):  # an interrupt still pending lands at the next bytecode
        try:
            time.sleep(0.02)
        except KeyboardInterrupt:
            pass


def test_ctrl_c_in_the_main_thread_lets_the_frame_finish():
    pipeline, face = _pipeline()
    # Python's own Ctrl-C handler, even when this run inherited SIGINT ignored (background).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    escaped = None
    try:
        # Ctrl-Cs while the frame is in hand; none once the pipeline is stopping (a Ctrl-C
        # then, under load, could land while the stages stop: a second, later Ctrl-C by the
        # user, which this test is not about)
        helper = _in_a_frame_then(face, _thread.interrupt_main, repeats=5,
                                  until=pipeline._stop)
        try:
            summary = pipeline.run()
        except KeyboardInterrupt as exc:  # fail this test, never stop the whole pytest run
            escaped = exc
        _join_absorbing_interrupts(helper)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert escaped is None, "a Ctrl-C during the frame escaped pipeline.run()"
    assert summary.stop_reason == "interrupted"
    assert not face.stopped_during_step and face.steps_done >= 1
    assert pipeline._worker_error is None


def test_sigterm_under_a_frame_ends_the_run_after_it():
    pipeline, face = _pipeline()
    with stop_on_signals() as signals:
        signals.pipeline = pipeline
        helper = _in_a_frame_then(face, lambda: os.kill(os.getpid(), signal.SIGTERM), repeats=3)
        summary = pipeline.run()
        helper.join(5)
    assert summary.stop_reason == "terminated (SIGTERM)"
    assert summary.final_stats["final"] is True
    assert not face.stopped_during_step and face.steps_done >= 1
    assert pipeline._worker_error is None
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored afterwards
