"""How `streamav live` stops on SIGINT, SIGTERM and SIGHUP (`stop_on_signals`), and how a
library run absorbs repeated Ctrl-Cs (`interrupts_deferred`).

Kept apart from the pipeline (numpy, OpenCV, ...) so that the CLI can install the handlers
before it imports them: a signal during those imports then aborts the start-up like one
during the rest of it.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import sys
import sysconfig
import threading
from contextlib import contextmanager
from typing import Iterator

log = logging.getLogger(__name__)

# The signals that end a live run like Ctrl-C, and the stop reason each one gives.
STOP_SIGNALS: dict[str, str] = {"SIGINT": "interrupted", "SIGTERM": "terminated (SIGTERM)",
                                "SIGHUP": "hung up (SIGHUP)"}


@contextmanager
def interrupts_deferred(raise_first: bool = True):
    """In the main thread, with Python's default Ctrl-C handler installed (library use): the
    first Ctrl-C inside the block raises KeyboardInterrupt as usual (`raise_first`), further
    ones are logged and dropped until the block ends (the run is already stopping). Elsewhere
    (another thread, a handler of the application's or `stop_on_signals`'s) it changes
    nothing."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield
        return
    raised = not raise_first

    def once(signum, frame):
        nonlocal raised
        if not raised:
            raised = True
            raise KeyboardInterrupt
        log.info("Ctrl-C again: already stopping")

    signal.signal(signal.SIGINT, once)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _package_dir(module_name: str) -> str | None:
    module = sys.modules.get(module_name)
    path = getattr(module, "__file__", None)
    return os.path.dirname(path) + os.sep if path else None


_STDLIB_DIR = os.path.realpath(sysconfig.get_paths()["stdlib"]) + os.sep
_STREAMAV_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep  # this package


@functools.lru_cache(maxsize=4096)
def _python_only_file(filename: str) -> bool:
    """Code of streamav, typer/click (the CLI around it) or the standard library: no C++ of a
    third-party extension calls into it during a live run's set-up."""
    if filename.startswith("<frozen "):
        return True
    for package in ("typer", "click"):
        root = _package_dir(package)
        if root is not None and filename.startswith(root):
            return True
    if filename.startswith(_STREAMAV_DIR):
        return True
    real = os.path.realpath(filename)
    return (real.startswith(_STDLIB_DIR) and "site-packages" not in real
            and "dist-packages" not in real)


def _interruptible(frame, anchor) -> bool:
    """Whether a KeyboardInterrupt raised in `frame` unwinds to `anchor` (the frame of the
    `with stop_on_signals()` block) through Python code only.

    A signal handler runs between two bytecodes of whatever Python code the main thread is
    in; during set-up that can be Python called back from a C++ extension (PyTorch's start-up,
    an ONNX export), where an exception can be swallowed or end the process with `terminate
    called after throwing an instance of 'pybind11::error_already_set'`."""
    while frame is not None:
        if frame is anchor:
            return True
        if not _python_only_file(frame.f_code.co_filename):
            return False
        frame = frame.f_back
    return False


class StopSignals:
    """What `stop_on_signals` yields: set `pipeline` once it is built.

    During the set-up (before the pipeline's sources start) a stop signal aborts it with
    KeyboardInterrupt: at once when the main thread is in code where that is safe (see
    `_interruptible`), else as soon as it gets back to such code (a profile hook, main thread
    only) or, at the latest, at the pipeline's next set-up step."""

    def __init__(self, anchor=None) -> None:
        self._pipeline = None  # a LivePipeline
        self._anchor = anchor
        self._pending: str | None = None  # a stop signal before the pipeline was built
        self._hooked = False
        self._previous_profile = None
        self.aborting = False

    @property
    def pipeline(self):
        return self._pipeline

    @pipeline.setter
    def pipeline(self, pipeline) -> None:
        self._pipeline = pipeline
        if pipeline is not None and self._pending is not None:
            pipeline.on_stop_signal(self._pending)  # its run() aborts before it starts anything

    def _abort_underway(self) -> bool:
        return self.aborting or (self._pipeline is not None and self._pipeline.setup_aborted)

    def handle(self, signum: int, frame) -> None:
        if self._abort_underway():
            return  # the first signal is already unwinding the set-up
        reason = STOP_SIGNALS.get(signal.Signals(signum).name, "interrupted")
        if self._pipeline is not None:
            if self._pipeline.on_stop_signal(reason):
                return  # running: it ends cleanly, the worker finishing its frame first
        elif self._pending is None:
            self._pending = reason
        if _interruptible(frame, self._anchor):
            self._raise()
        self._hook()

    def _raise(self) -> None:
        self.aborting = True
        self.unhook()
        raise KeyboardInterrupt

    def _hook(self) -> None:
        if self._hooked or threading.current_thread() is not threading.main_thread():
            return
        self._previous_profile = sys.getprofile()
        self._hooked = True

        def on_event(frame, event, _arg):
            if event not in ("call", "c_call"):
                return
            if self._abort_underway():
                self.unhook()
            elif _interruptible(frame, self._anchor):
                self._raise()

        sys.setprofile(on_event)

    def unhook(self) -> None:
        if self._hooked:
            self._hooked = False
            sys.setprofile(self._previous_profile)
            self._previous_profile = None


@contextmanager
def stop_on_signals(afterwards: str = "restore") -> Iterator[StopSignals]:
    """SIGINT, SIGTERM and SIGHUP end the run of the yielded object's `pipeline` like the end
    of input (final stats, outputs written, exit 0) while the body runs; before its sources
    start (set-up) they abort it with KeyboardInterrupt, as Ctrl-C does, but only where that
    exception unwinds through Python code alone (see `StopSignals`).

    Main thread only (elsewhere this does nothing). A signal that is ignored when the body
    starts (e.g. SIGHUP under nohup) stays ignored. The handler only records the signal
    (`LivePipeline.on_stop_signal`): a signal can never tear down a stage under a frame, and a
    repeated Ctrl-C during shutdown or while outputs are written is absorbed.

    `afterwards`: "restore" the previous handlers when the body ends, or "ignore" these signals
    from then on (for a process that exits right after the body: a late Ctrl-C must not turn a
    finished run, or an aborted set-up, into a traceback).
    """
    if afterwards not in ("restore", "ignore"):
        raise ValueError(f"afterwards must be 'restore' or 'ignore', got {afterwards!r}")
    signals = StopSignals(anchor=sys._getframe(2))  # the frame of the `with` block
    if threading.current_thread() is not threading.main_thread():
        yield signals
        return
    previous: dict[int, object] = {}
    try:
        for name in STOP_SIGNALS:
            signum = getattr(signal, name, None)
            if signum is None or signal.getsignal(signum) is signal.SIG_IGN:
                continue
            previous[signum] = signal.signal(signum, signals.handle)
        yield signals
    finally:
        signals.unhook()
        for signum, old in previous.items():
            signal.signal(signum, old if afterwards == "restore" else signal.SIG_IGN)
