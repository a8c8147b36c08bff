"""Bounded memory on everything that listens (issue #12 item 2), attacked for real on 127.0.0.1.

Each attack runs against a real Publisher / ControlServer (and, in the slow test, a real
`streamav live` process) while a 30 fps stream goes through it; the checks are the issue's
acceptance: the process's peak RSS (the kernel's VmHWM, reset before the attack) grows by less
than 50 MB, and the stream keeps its frame rate without drops on the publisher's side.
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

import msgpack
import numpy as np
import pytest
import zmq

from conftest import OBAMA, cli_env, free_tcp_port, require_shared_data, streamav_command
from streamav.clock import now_ns
from streamav.wire import limits
from streamav.wire.control import ControlServer, request
from streamav.wire.limits import SubscriptionLedger, quote
from streamav.wire.publisher import Publisher
from streamav.wire.subscriber import Subscriber
import wire_samples
from wire_attacks import (frame, oversize_frame, peak_rss_bytes, reset_peak_rss, rss_bytes,
                          subscription_bomb, zmtp_connect)

MB = 1 << 20
MiB = 1 << 20
RSS_BUDGET = 50 * MB
FPS = 30.0


# ---- the ledger and the quoting, no sockets -------------------------------------------------


def test_ledger_counts_distinct_subscriptions_and_flags_abuse() -> None:
    ledger = SubscriptionLedger(max_subscriptions=3, max_subscription_bytes=8)
    assert ledger.note(b"\x01emotion") is None
    assert ledger.note(b"\x01face") is None
    assert ledger.note(b"\x00face") is None and len(ledger) == 1  # the last one dropped it
    assert ledger.note(b"\x01") is None  # "" = everything
    assert ledger.note(b"\x01stats") is None and len(ledger) == 3
    assert "more than 3" in ledger.note(b"\x01status")
    assert "9 bytes" in SubscriptionLedger(max_subscription_bytes=8).note(b"\x01" + b"x" * 9)
    assert "not a subscription" in SubscriptionLedger().note(b"\x02hello")
    assert "multipart" in SubscriptionLedger().note(b"\x01a", more=True)
    assert "not a subscription" in SubscriptionLedger().note(b"")


def test_quote_never_echoes_more_than_its_limit() -> None:
    assert quote("fly") == "fly"
    long = "x" * 1_000_000
    quoted = quote(long)
    assert len(quoted) < 100 and quoted.endswith("(1000000 chars)")


# ---- a 30 fps stream through a real publisher ------------------------------------------------


@dataclass
class Stream:
    """Publishes `face` (and a 64x64 RGB `video.denoised`) at 30 fps from a thread, as the
    pipeline's worker does, while a real Subscriber counts what arrives."""

    publisher: Publisher
    ticks: list[float] = field(default_factory=list)
    refused: int = 0  # publish() returned False (queue full or stopped)
    received: list[tuple[float, int]] = field(default_factory=list)  # (time, seq) of `face`
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        self._threads = [threading.Thread(target=self._produce, daemon=True),
                         threading.Thread(target=self._consume, daemon=True)]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(5)

    def _produce(self) -> None:
        image = np.zeros((64, 64, 3), np.uint8)
        face = wire_samples.face()
        video, _ = wire_samples.denoised()
        next_tick = time.monotonic()
        while not self._stop.is_set():
            t = now_ns()
            ok = self.publisher.publish(face, t)
            ok &= self.publisher.publish(video, t, [image])
            self.refused += not ok
            self.ticks.append(time.monotonic())
            next_tick += 1 / FPS
            self._stop.wait(max(0.0, next_tick - time.monotonic()))

    def _consume(self) -> None:
        with Subscriber(self.publisher.endpoint, topics=("face",)) as sub:
            while not self._stop.is_set():
                message = sub.recv(timeout_s=0.05)
                if message is not None:
                    self.received.append((time.monotonic(), message.seq))

    def wait_receiving(self, timeout_s: float = 10.0) -> float:
        """Seconds until the subscriber receives a message published from now on."""
        start = time.monotonic()
        while time.monotonic() - start < timeout_s:
            if self.received and self.received[-1][0] > start + 0.05:
                return time.monotonic() - start
            time.sleep(0.02)
        raise AssertionError(f"the subscriber received nothing within {timeout_s} s")

    def fps_between(self, t0: float, t1: float) -> float:
        return sum(t0 <= t < t1 for t in self.ticks) / (t1 - t0)


@pytest.fixture
def stream():
    publisher = Publisher(f"tcp://127.0.0.1:{free_tcp_port()}", stream_id="victim")
    publisher.start()
    running = Stream(publisher)
    running.start()
    running.wait_receiving()
    yield running
    running.stop()
    publisher.stop()


def _start_measuring() -> int:
    gc.collect()
    time.sleep(0.3)
    assert reset_peak_rss(), "cannot reset the peak RSS (/proc/self/clear_refs)"
    return rss_bytes()


def _libzmq_subscriber_flood(port: int, count: int, seconds: float) -> subprocess.Popen:
    """A real libzmq SUB client in another process with `count` random 32-byte subscriptions:
    ZeroMQ sends them all again on each reconnect, so it keeps coming back after a reset."""
    code = (
        "import os, sys, time, zmq\n"
        "s = zmq.Context().socket(zmq.SUB)\n"
        f"for _ in range({count}): s.setsockopt(zmq.SUBSCRIBE, os.urandom(32))\n"
        f"s.connect('tcp://127.0.0.1:{port}')\n"
        f"time.sleep({seconds}); s.close(0)\n"
    )
    return subprocess.Popen([sys.executable, "-c", code])


def test_subscription_bomb_keeps_memory_bounded_and_the_stream_at_30_fps(stream: Stream) -> None:
    publisher = stream.publisher
    port = int(publisher.endpoint.rsplit(":", 1)[1])
    flood = _libzmq_subscriber_flood(port, 20_000, seconds=4)
    base = _start_measuring()
    t0 = time.monotonic()

    bomb = subscription_bomb(port, total=200_000, prefix_bytes=32)
    taken = {size: oversize_frame(port, "SUB", size * MiB) for size in (16, 32, 64)}
    assert flood.wait(30) == 0
    t1 = time.monotonic()
    peak = peak_rss_bytes()
    time_to_receive = stream.wait_receiving()

    print(f"\nsubscription bomb: {bomb['sent']} subscriptions over {bomb['connections']} "
          f"connections in {t1 - t0:.1f} s; oversize prefixes, body bytes the kernel took: "
          f"{ {k: v // MiB for k, v in taken.items()} } MiB; resets {publisher.socket_resets}; "
          f"RSS {base / MB:.0f} MB, peak +{(peak - base) / MB:.1f} MB; stream "
          f"{stream.fps_between(t0, t1):.1f} fps; receiving again after {time_to_receive:.2f} s")
    assert bomb["sent"] == 200_000
    assert publisher.socket_resets >= 1
    for size, accepted in taken.items():
        assert accepted < size * MiB, f"the server read a whole {size} MiB subscription"
    assert peak - base < RSS_BUDGET
    assert stream.refused == 0 and publisher.dropped_queue_full == 0
    assert stream.fps_between(t0, t1) >= 0.9 * FPS


def test_limits_let_honest_subscribers_through(stream: Stream) -> None:
    """Every topic prefix a subscriber may use is well within the limits: no reset."""
    with Subscriber(stream.publisher.endpoint, topics=("", "e", "emotion", "emotion.change",
                                                       "face", "status", "stats", "latent",
                                                       "video.denoised")) as sub:
        assert sub.recv(timeout_s=5) is not None
    assert stream.publisher.socket_resets == 0


def test_a_new_subscriber_after_a_reset_gets_the_stream(stream: Stream) -> None:
    port = int(stream.publisher.endpoint.rsplit(":", 1)[1])
    sock = zmtp_connect(port, "XSUB")
    sock.sendall(frame(b"\x02not a subscription"))
    deadline = time.monotonic() + 5
    while stream.publisher.socket_resets == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    sock.close()
    assert stream.publisher.socket_resets == 1
    with Subscriber(stream.publisher.endpoint, topics="face") as late:
        assert late.recv(timeout_s=5) is not None
    stream.wait_receiving()  # the first subscriber came back by itself


# ---- the control socket -------------------------------------------------------------------------


@pytest.fixture
def control():
    server = ControlServer(f"tcp://127.0.0.1:{free_tcp_port()}")
    server.resets_done = 0

    def reset(_args):
        server.resets_done += 1
        return {}

    def fail(_args):
        raise RuntimeError("x" * 100_000)

    server.register("reset", reset)
    server.register("fail", fail)
    server.start()
    yield server
    server.stop()


def _request_from_another_process(endpoint: str, payload_bytes: int, timeout_s: float) -> str:
    """A real REQ client sending an unknown command of `payload_bytes`; what it got back."""
    code = (
        "import msgpack, zmq\n"
        "s = zmq.Context().socket(zmq.REQ); s.linger = 0\n"
        f"s.connect({endpoint!r})\n"
        f"s.send(msgpack.packb({{'cmd': 'x' * {payload_bytes}}}))\n"
        f"print('reply' if s.poll({int(timeout_s * 1000)}) else 'no reply', flush=True)\n"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60).stdout.strip()


def test_oversize_control_requests_are_dropped_not_buffered(control: ControlServer) -> None:
    port = int(control.endpoint.rsplit(":", 1)[1])
    base = _start_measuring()
    delimiter = frame(b"", more=True)  # what a REQ socket puts before its request
    taken = oversize_frame(port, "REQ", 1 << 30, envelope=delimiter)  # 1 GiB announced
    answer = _request_from_another_process(control.endpoint, 64 * MiB, timeout_s=3)
    peak = peak_rss_bytes()
    print(f"\n1 GiB request: the kernel took {taken / MiB:.1f} MiB before the server hung up; "
          f"64 MiB request from libzmq: {answer}; RSS {base / MB:.0f} MB, "
          f"peak +{(peak - base) / MB:.1f} MB")
    assert taken < 64 * MiB
    assert answer == "no reply"
    assert peak - base < RSS_BUDGET
    assert request(control.endpoint, "ping")["ok"] is True


def test_replies_never_echo_the_request(control: ControlServer) -> None:
    name = "y" * (limits.CONTROL_MAX_REQUEST_BYTES - 100)  # within the size limit
    reply = request(control.endpoint, name)
    assert reply["ok"] is False and reply["error"].startswith("unknown command yyy")
    assert len(reply["error"]) <= limits.MAX_ERROR_CHARS and f"({len(name)} chars)" in reply["error"]
    reply = request(control.endpoint, "fail")
    assert reply["ok"] is False and len(reply["error"]) <= limits.MAX_ERROR_CHARS
    assert len(msgpack.packb(reply)) < 1024


def test_pipelined_and_multi_frame_floods_keep_memory_bounded(control: ControlServer) -> None:
    port = int(control.endpoint.rsplit(":", 1)[1])
    base = _start_measuring()
    # 100,000 pings pipelined on one connection, replies never read.
    ping = frame(b"", more=True) + frame(msgpack.packb({"cmd": "ping"}))
    flood = zmtp_connect(port, "DEALER")
    flood.settimeout(5)
    sent = 0
    try:
        for _ in range(100):
            flood.sendall(ping * 1000)
            sent += 1000
    except OSError:
        pass
    # One request of 200,000 frames.
    multi = zmtp_connect(port, "REQ")
    try:
        multi.sendall(frame(b"", more=True) + frame(b"x", more=True) * 200_000 + frame(b"x"))
    except OSError:
        pass
    deadline = time.monotonic() + 10
    while control.socket_resets == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    flood.close()
    multi.close()
    peak = peak_rss_bytes()
    print(f"\n{sent} pipelined pings + a 200,000-frame request: served {control.requests}, "
          f"resets {control.socket_resets}; RSS {base / MB:.0f} MB, peak +{(peak - base) / MB:.1f} MB")
    assert control.socket_resets == 1
    assert peak - base < RSS_BUDGET
    assert request(control.endpoint, "ping", timeout_s=5)["ok"] is True


# ---- the same attacks on a real `streamav live` run ---------------------------------------------


ATTACK_S = 6.0


@pytest.mark.slow
def test_attacks_on_a_real_time_live_run(tmp_path) -> None:
    """`streamav live` on a 25 fps clip in real time, attacked on both sockets for 6 s mid-run
    (rounds of: 200,000 subscriptions, 16 and 64 MiB topic prefixes, a 1 GiB control request):
    its peak RSS grows by < 50 MB, it keeps the clip's frame rate and drops no more frames than
    its budget (2 %), and the publisher itself drops nothing."""
    require_shared_data()
    pub, ctl = free_tcp_port(), free_tcp_port()
    stats_json = tmp_path / "stats.json"
    process = subprocess.Popen(
        [*streamav_command(), "live", "--video", str(OBAMA), "--no-model", "--no-preview",
         "--publish", f"tcp://127.0.0.1:{pub}", "--control", f"tcp://127.0.0.1:{ctl}",
         "--stats-json", str(stats_json)],
        stderr=subprocess.PIPE, text=True, env=cli_env())
    stats: list[tuple[float, dict]] = []
    stop = threading.Event()

    def watch() -> None:  # reconnects by itself after each reset
        with Subscriber(f"tcp://127.0.0.1:{pub}", topics="stats") as sub:
            while not stop.is_set():
                message = sub.recv(timeout_s=0.1)
                if message is not None:
                    stats.append((time.monotonic(), message.payload))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    rounds = sent = 0
    taken: dict[str, int] = {}
    try:
        deadline = time.monotonic() + 60
        while len(stats) < 3:  # started, and a few seconds of stats before the attack
            assert process.poll() is None, process.stderr.read()
            assert time.monotonic() < deadline, "no stats from streamav live"
            time.sleep(0.05)
        assert reset_peak_rss(process.pid)
        base = rss_bytes(process.pid)
        t0 = time.monotonic()
        while time.monotonic() - t0 < ATTACK_S:
            sent += subscription_bomb(pub, total=200_000, prefix_bytes=32, deadline_s=3)["sent"]
            for size in (16, 64):
                taken[f"{size} MiB prefix"] = max(taken.get(f"{size} MiB prefix", 0),
                                                  oversize_frame(pub, "SUB", size * MiB, deadline_s=2))
            taken["1 GiB request"] = max(taken.get("1 GiB request", 0), oversize_frame(
                ctl, "REQ", 1 << 30, envelope=frame(b"", more=True), deadline_s=2))
            rounds += 1
        t1 = time.monotonic()
        peak = peak_rss_bytes(process.pid)
        assert request(f"tcp://127.0.0.1:{ctl}", "ping", timeout_s=5)["ok"] is True
        time.sleep(1.5)  # the next stats message, after the attack
        assert process.wait(60) == 0, process.stderr.read()
    finally:
        stop.set()
        process.kill()
        watcher.join(5)
    final = json.loads(stats_json.read_text())["stats"]
    before = [s for t, s in stats if t <= t0 and not s["final"]][-1]
    after = [s for t, s in stats if t >= t1 and not s["final"]][0]
    window_s = after["elapsed_s"] - before["elapsed_s"]
    fps = (after["frames"] - before["frames"]) / window_s
    dropped = after["dropped_frames"] - before["dropped_frames"]
    print(f"\nlive under attack for {t1 - t0:.1f} s: {rounds} rounds, {sent} subscriptions; "
          f"bytes the kernel took of the oversize frames, at most: "
          f"{ {k: f'{v / MiB:.1f} MiB' for k, v in taken.items()} }; RSS {base / MB:.0f} MB, "
          f"peak +{(peak - base) / MB:.1f} MB; {fps:.1f} fps and {dropped} frames dropped over "
          f"the {window_s:.1f} s around the attack (whole run: {final['fps']:.1f} fps, "
          f"{final['dropped_frames']} of {final['frames']} dropped, publisher dropped "
          f"{final.get('publish_dropped')})")
    assert rounds >= 1 and sent >= 200_000
    assert all(v < 16 * MiB for v in taken.values())
    assert peak - base < RSS_BUDGET
    assert fps >= 0.9 * 25
    assert dropped <= 0.02 * (after["frames"] - before["frames"]) + 1
    assert final.get("publish_dropped", 0) == 0
