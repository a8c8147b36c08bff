"""Hostile peers for the listening sockets, and peak-RSS readings (tests of issue #12 item 2).

The attackers speak ZMTP 3.0 by hand on a plain TCP socket, the way a hostile local program
would: no client library limits what they send (a libzmq SUB would refuse nothing either, but
it keeps every subscription in its own trie too, which makes a large attack expensive for the
attacker rather than for the server). They allocate almost nothing, so they can run in the test
process without blurring its RSS.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from pathlib import Path


def _greeting() -> bytes:
    # signature, version 3.0, mechanism NULL, as-server 0, filler
    return b"\xff" + b"\x00" * 8 + b"\x7f" + b"\x03\x00" + b"NULL".ljust(20, b"\x00") + b"\x00" * 32


def _ready(socket_type: str) -> bytes:
    body = (b"\x05READY" + b"\x0bSocket-Type" + struct.pack(">I", len(socket_type))
            + socket_type.encode("ascii"))
    return b"\x04" + bytes([len(body)]) + body


def frame(body: bytes, more: bool = False) -> bytes:
    """One ZMTP message frame."""
    flags = 0x01 if more else 0x00
    if len(body) < 256:
        return bytes([flags, len(body)]) + body
    return bytes([flags | 0x02]) + struct.pack(">Q", len(body)) + body


def zmtp_connect(port: int, socket_type: str, timeout_s: float = 2.0) -> socket.socket:
    """A TCP connection to 127.0.0.1:port that has sent its greeting and READY (NULL mechanism)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
    sock.sendall(_greeting())
    # libzmq loses what follows the greeting in the same read: wait for its greeting first.
    received = b""
    while len(received) < 64:
        chunk = sock.recv(64 - len(received))
        if not chunk:
            sock.close()
            raise ConnectionResetError("the server closed the connection during the greeting")
        received += chunk
    sock.sendall(_ready(socket_type))
    return sock


def connect_retrying(port: int, socket_type: str, timeout_s: float = 3.0) -> socket.socket:
    """`zmtp_connect`, tried again while the server is closed for a moment (binding its socket
    again after a reset)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return zmtp_connect(port, socket_type)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.005)


def subscription_bomb(port: int, total: int, prefix_bytes: int = 32, batch: int = 1000,
                      deadline_s: float = 30.0) -> dict[str, int]:
    """Send `total` distinct random subscriptions as fast as the server takes them, connecting
    again whenever it drops the connection. Returns {"sent", "connections"}."""
    sent = connections = 0
    sock = None
    deadline = time.monotonic() + deadline_s
    while sent < total and time.monotonic() < deadline:
        try:
            if sock is None:
                sock = zmtp_connect(port, "SUB")
                connections += 1
            n = min(batch, total - sent)
            sock.sendall(b"".join(frame(b"\x01" + os.urandom(prefix_bytes)) for _ in range(n)))
            sent += n
        except OSError:  # reset by the server (or refused while it binds again)
            if sock is not None:
                sock.close()
            sock = None
            time.sleep(0.002)
    if sock is not None:
        sock.close()
    return {"sent": sent, "connections": connections}


def oversize_frame(port: int, socket_type: str, claimed_bytes: int, envelope: bytes = b"",
                   chunk_bytes: int = 1 << 20, deadline_s: float = 10.0) -> int:
    """Announce one frame of `claimed_bytes` and stream its body until the server hangs up (or
    all of it is sent). `envelope`: frames to send first (a REQ's empty delimiter). Returns how
    many body bytes the kernel took before the connection broke."""
    sock = connect_retrying(port, socket_type)
    chunk = b"\x00" * chunk_bytes
    accepted = 0
    deadline = time.monotonic() + deadline_s
    try:
        sock.sendall(envelope + bytes([0x02]) + struct.pack(">Q", claimed_bytes))
        sock.settimeout(0.5)
        while accepted < claimed_bytes and time.monotonic() < deadline:
            try:
                accepted += sock.send(chunk[: min(chunk_bytes, claimed_bytes - accepted)])
            except socket.timeout:  # the server does not read: its buffers are full
                continue
    except OSError:
        pass
    finally:
        sock.close()
    return accepted


def connection_closed_by_peer(sock: socket.socket, timeout_s: float) -> bool:
    """Whether the server closes `sock` within `timeout_s` (reads and drops what it sent)."""
    sock.settimeout(0.1)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if sock.recv(65536) == b"":
                return True
        except socket.timeout:
            continue
        except OSError:
            return True
    return False


# ---- memory -----------------------------------------------------------------------------------


def _status(pid: int | str, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def rss_bytes(pid: int | str = "self") -> int:
    return _status(pid, "VmRSS")


def reset_peak_rss(pid: int | str = "self") -> bool:
    """Make the kernel's peak RSS (VmHWM) start again from the current RSS; False if it cannot."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_bytes(pid: int | str = "self") -> int:
    """The largest RSS since the last `reset_peak_rss` (or since the process started)."""
    return _status(pid, "VmHWM")
