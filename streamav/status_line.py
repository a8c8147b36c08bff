"""The live status line of `streamav live` on a terminal (rich): fps, latency, face, emotion.

    ● 12.4 s  29.9 fps  latency 14.2 ms  face ✓  happy 0.62

Shown on stderr only when it is a terminal; refreshed 4 times a second by rich's own thread
and removed when the run ends (transient), so that the final summary line is what stays.
Log lines during the run (a warning, a source lost) are printed above it.

fps: the last 30 frames; latency: the p50 of the last stats window (one second; the run so far
before the first), capture to the `emotion` message when the model runs, else capture to the
`face` message (its stages are in the `stats` message); emotion: the newest
frame's top class and probability, `uncertain (top)` while the estimator abstains, `learning
face Ns` in a new person's first seconds.
"""

from __future__ import annotations

import logging
import sys

from rich.console import Console
from rich.live import Live
from rich.text import Text

from streamav.run_view import RunView
from streamav.wire.messages import Emotion, Stats

REFRESH_PER_S = 4


def wanted(stream=None) -> bool:
    """The status line is shown when stderr is a terminal."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or replaced streams
        return False


def emotion_text(emotion: Emotion | None) -> str:
    if emotion is None:
        return ""
    if not emotion.uncertain:
        return f"{emotion.top} {emotion.confidence:.2f}"
    seen_s = emotion.baseline_s
    if seen_s is not None and seen_s < 3.0:
        return f"learning face {seen_s:.0f}s"
    return f"uncertain ({emotion.top} {emotion.confidence:.2f})"


def status_text(view: RunView, last_stats: Stats | None) -> Text:
    """One line from the run's newest frame and stats window (cut to the terminal's width,
    never wrapped)."""
    numbers = view.run_numbers()
    line = Text(no_wrap=True, overflow="ellipsis")
    line.append("● ", style="green")
    line.append(f"{numbers.elapsed_s:5.1f} s  ")
    fps = numbers.fps
    line.append(f"{fps:4.1f} fps" if fps is not None else "-- fps", style="bold")
    stage = "capture_to_emotion" if numbers.model_running else "capture_to_publish"
    latency = None
    if last_stats is not None:  # the last second
        percentiles = last_stats.latency_ms.get(stage)
        latency = None if percentiles is None else percentiles.p50
    if latency is None:  # the first second: the run so far
        latency = numbers.emotion_latency_ms if numbers.model_running else numbers.face_latency_ms
    line.append("  latency " + (f"{latency:.1f} ms" if latency is not None else "--"))
    frame = view.newest_frame()
    if frame is None:
        return line
    if frame.face_found:
        line.append("  face ✓", style="green")
    else:
        line.append("  no face", style="yellow")
    if frame.emotion is not None:
        line.append("  " + emotion_text(frame.emotion),
                    style="dim" if frame.emotion.uncertain else "bold cyan")
    return line


class StatusLine:
    """`start()` once capture runs, `stop()` when the run is over (both idempotent)."""

    def __init__(self, view: RunView, console: Console | None = None) -> None:
        self.view = view
        self.console = console or Console(stderr=True)
        self.last_stats: Stats | None = None
        self._live: Live | None = None
        self._handlers: list[tuple[logging.StreamHandler, object]] = []

    def on_stats(self, stats: Stats) -> None:
        """The pipeline's `on_stats`: keep the newest window for its latency."""
        if not stats.final:
            self.last_stats = stats

    def start(self) -> None:
        if self._live is not None:
            return
        original = sys.stderr
        self._live = Live(get_renderable=lambda: status_text(self.view, self.last_stats),
                          console=self.console, refresh_per_second=REFRESH_PER_S,
                          transient=True, redirect_stdout=False, redirect_stderr=True)
        self._live.start()
        # logging's handlers hold the real stderr: point them at rich's proxy meanwhile, so
        # that a warning prints above the line instead of through it
        proxy = sys.stderr
        if proxy is original:  # rich redirects only on a terminal
            return
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream is original:
                handler.setStream(proxy)
                self._handlers.append((handler, original))

    def stop(self) -> None:
        if self._live is None:
            return
        for handler, stream in self._handlers:
            handler.setStream(stream)
        self._handlers.clear()
        try:
            self._live.stop()
        finally:
            self._live = None
