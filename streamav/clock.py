"""The clocks streamav uses: one monotonic clock for every timestamp, and the wall-clock anchor.

All capture and publish times are `time.monotonic_ns()` values (integers, ns) inside the process
and seconds (float) on the wire. `wall_anchor()` pairs one monotonic reading with the wall clock
so that subscribers can map monotonic times to UTC.
"""

from __future__ import annotations

import time

NS_PER_S = 1_000_000_000


def now_ns() -> int:
    """The monotonic clock, in ns. Every capture and publish timestamp comes from here."""
    return time.monotonic_ns()


def ns_to_s(t_ns: int) -> float:
    return t_ns / NS_PER_S


def wall_anchor() -> dict[str, float]:
    """A simultaneous pair (monotonic s, unix wall-clock s) for mapping one clock to the other."""
    t_mono_ns = time.monotonic_ns()
    t_wall_ns = time.time_ns()
    return {"t_monotonic": ns_to_s(t_mono_ns), "t_wall": ns_to_s(t_wall_ns)}
