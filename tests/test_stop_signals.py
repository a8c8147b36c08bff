"""A stop signal during a live run's set-up (streamav/stop_signals.py): it aborts the set-up with
KeyboardInterrupt, but only where that exception unwinds through Python code alone; a signal
that lands in a third-party module (PyTorch's start-up, an ONNX export: C++ that calls back into
Python) is raised as soon as the main thread is back in such code, and at the latest at the
pipeline's next set-up step. Every stage started before the abort is stopped."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

import streamav
from streamav.config import load_config
from streamav.pipeline import LivePipeline, NullPublisher
from streamav.sources.synthetic import SyntheticConfig, SyntheticSource
from streamav.stop_signals import StopSignals, _interruptible, stop_on_signals

THIRD_PARTY_FILE = os.path.join(sys.prefix, "lib", "site-packages", "some_extension", "core.py")
STREAMAV_FILE = str(Path(streamav.__file__).parent / "some_stage.py")


def _function_in(filename: str, source: str, name: str):
    """A function whose code says it comes from `filename` (what the signal handler looks at)."""
    namespace: dict = {}
    exec(compile(source, filename, "exec"), namespace)
    return namespace[name]


CALLER = "def call(function):\n    return function()\n"
# An extension's long call: the signal arrives in it (`action`), it goes on, and finishes.
EXTENSION = ("def work(action, log):\n    action()\n    total = 0\n"
             "    for i in range(200000):\n        total += i\n    log.append('extension done')\n")
# streamav code calling the extension, then going on.
SET_UP = ("def set_up(extension, action, log):\n    extension(action, log)\n"
          "    log.append('set-up went on')\n")


def test_a_frame_is_interruptible_when_only_python_code_lies_between_it_and_the_block():
    anchor = sys._getframe()
    in_streamav = _function_in(STREAMAV_FILE, CALLER, "call")
    in_extension = _function_in(THIRD_PARTY_FILE, CALLER, "call")
    assert _interruptible(sys._getframe(), anchor)
    assert _interruptible(in_streamav(sys._getframe), anchor)
    assert not _interruptible(in_extension(sys._getframe), anchor)
    assert not _interruptible(in_streamav(lambda: in_extension(sys._getframe)), anchor)
    assert not _interruptible(in_streamav(sys._getframe), None)  # not inside the block


def test_a_signal_in_third_party_code_is_raised_back_in_streamav_code():
    extension = _function_in(THIRD_PARTY_FILE, EXTENSION, "work")
    set_up = _function_in(STREAMAV_FILE, SET_UP, "set_up")
    log: list[str] = []
    raised_in = None
    with stop_on_signals() as signals:
        try:
            set_up(extension, lambda: os.kill(os.getpid(), signal.SIGTERM), log)
        except KeyboardInterrupt as exc:
            tb, files = exc.__traceback__, []
            while tb is not None:
                files.append(tb.tb_frame.f_code.co_filename)
                tb = tb.tb_next
            raised_in = [f for f in files if not f.endswith("stop_signals.py")][-1]
        assert signals.aborting
    # the extension ran to its end; the interrupt came in streamav code right after it
    assert log == ["extension done"]
    assert raised_in == STREAMAV_FILE
    assert sys.getprofile() is None  # the hook is gone
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


class _Face:
    """A face stage that receives SIGTERM while it starts (in test code: not interruptible)."""

    def __init__(self) -> None:
        self.started = self.stopped = False

    def start(self) -> None:
        self.started = True
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)

    def step(self, image_bgr):  # pragma: no cover - never reached
        raise AssertionError("a frame after an aborted set-up")

    def stop(self) -> None:
        self.stopped = True


class _Publisher(NullPublisher):
    def __init__(self) -> None:
        super().__init__()
        self.started = self.stopped = False

    def start(self) -> None:
        self.started = True

    def stop(self, timeout_s: float = 2.0) -> None:
        self.stopped = True


def _pipeline(face) -> tuple[LivePipeline, _Publisher, SyntheticSource]:
    config = load_config(None, {"source.video": "synthetic", "source.no_audio": True,
                                "run.preview": False, "model.enabled": False,
                                "publish.control_endpoint": "none"})
    source = SyntheticSource(SyntheticConfig(duration_s=5.0, audio=False), realtime=True)
    publisher = _Publisher()
    return LivePipeline(config, [source], face, publisher), publisher, source


def test_a_signal_while_a_stage_starts_aborts_the_set_up_and_stops_that_stage():
    face = _Face()
    pipeline, publisher, source = _pipeline(face)
    with stop_on_signals() as signals:
        signals.pipeline = pipeline
        with pytest.raises(KeyboardInterrupt):
            pipeline.run()
    assert face.started and face.stopped  # stopped although its start() was interrupted
    assert publisher.started and publisher.stopped
    assert pipeline.stats.frames == 0 and not pipeline._running
    assert sys.getprofile() is None


def test_a_signal_before_the_pipeline_exists_aborts_its_run_before_anything_starts():
    face = _Face()
    pipeline, publisher, _ = _pipeline(face)
    signals = StopSignals(anchor=None)  # nowhere is interruptible: only the set-up steps abort
    signals.handle(signal.SIGTERM, sys._getframe())
    signals.unhook()
    assert not signals.aborting
    signals.pipeline = pipeline  # the pending signal goes to the pipeline
    with pytest.raises(KeyboardInterrupt):
        pipeline.run()
    assert not publisher.started and not face.started
    assert pipeline.setup_aborted
    assert pipeline.on_stop_signal("terminated (SIGTERM)")  # later signals: absorbed
