"""Bounded-memory latency histograms: per-stage p50/p99 over a window and over a whole run.

A run can last hours, so samples are not kept: each duration falls into one of ~1,900 log-spaced
bins from 1 µs to 100 s (1% wide), and percentiles are read off the cumulative counts. Recording
is O(1) and lock-free for a single writer; readers take a snapshot.
"""

from __future__ import annotations

import math
import threading

import numpy as np

_MIN_NS = 1_000  # 1 µs
_MAX_NS = 100_000_000_000  # 100 s
_BIN_RATIO = 1.01
_N_BINS = int(math.ceil(math.log(_MAX_NS / _MIN_NS) / math.log(_BIN_RATIO))) + 2
# Upper edge of each bin in ns; bin 0 holds everything below 1 µs, the last everything above 100 s.
_UPPER_NS = np.concatenate(([_MIN_NS], _MIN_NS * _BIN_RATIO ** np.arange(1, _N_BINS)))
_LOG_RATIO = math.log(_BIN_RATIO)


class LatencyHistogram:
    """Durations in ns in; percentiles in ms out."""

    def __init__(self) -> None:
        self._counts = np.zeros(_N_BINS, dtype=np.int64)
        self._lock = threading.Lock()
        self.count = 0
        self.max_ns = 0

    def record_ns(self, duration_ns: int) -> None:
        if duration_ns <= _MIN_NS:
            index = 0
        else:
            index = min(_N_BINS - 1, int(math.log(duration_ns / _MIN_NS) / _LOG_RATIO) + 1)
        with self._lock:
            self._counts[index] += 1
            self.count += 1
            if duration_ns > self.max_ns:
                self.max_ns = duration_ns

    def merge(self, other: "LatencyHistogram") -> None:
        counts, count, max_ns = other.snapshot()
        with self._lock:
            self._counts += counts
            self.count += count
            self.max_ns = max(self.max_ns, max_ns)

    def snapshot(self) -> tuple[np.ndarray, int, int]:
        with self._lock:
            return self._counts.copy(), self.count, self.max_ns

    def reset(self) -> None:
        with self._lock:
            self._counts[:] = 0
            self.count = 0
            self.max_ns = 0

    def percentile_ms(self, q: float) -> float | None:
        """The q-th percentile (0..100) in ms, to within 1%; None when nothing was recorded."""
        counts, count, max_ns = self.snapshot()
        if count == 0:
            return None
        rank = max(1, math.ceil(q / 100.0 * count))
        index = int(np.searchsorted(np.cumsum(counts), rank))
        upper_ns = min(float(_UPPER_NS[index]), float(max_ns))
        return upper_ns / 1e6

    def summary_ms(self) -> dict[str, float | None]:
        return {"p50": self.percentile_ms(50), "p99": self.percentile_ms(99)}


class StageLatencies:
    """One histogram per named stage, for the current stats window and for the whole run."""

    def __init__(self, stages: tuple[str, ...]) -> None:
        self.stages = stages
        self.window = {name: LatencyHistogram() for name in stages}
        self.total = {name: LatencyHistogram() for name in stages}

    def record_ns(self, stage: str, duration_ns: int) -> None:
        self.window[stage].record_ns(duration_ns)
        self.total[stage].record_ns(duration_ns)

    def window_summary_ms(self, reset: bool = True) -> dict[str, dict[str, float | None]]:
        summary = {name: hist.summary_ms() for name, hist in self.window.items()}
        if reset:
            for hist in self.window.values():
                hist.reset()
        return summary

    def total_summary_ms(self) -> dict[str, dict[str, float | None]]:
        return {name: hist.summary_ms() for name, hist in self.total.items()}
