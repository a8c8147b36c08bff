"""Bounds on what a peer can make streamav hold in memory: message sizes, queues, subscriptions.

Both listening sockets take input from whoever connects (subscriptions on the data socket,
requests on the control socket), and ZeroMQ keeps what they send until the application reads it.
Without bounds a local program could take the process to gigabytes (issue #12: 200,000
subscriptions and a few 16-64 MiB topic prefixes reached 8.7 GB; one 1 GiB request 2.9 GB).
The bounds, all enforced before anything is buffered where the socket allows it:

- **Message size** (`ZMQ_MAXMSGSIZE`): a peer that sends a larger frame is disconnected by
  ZeroMQ as soon as the frame's header arrives; the frame itself is never read or allocated.
  The data socket takes at most `DATA_MAX_INBOUND_BYTES` per inbound frame (subscriptions are
  its only legitimate input; the CURVE handshake needs about 300 bytes), the control socket
  `CONTROL_MAX_REQUEST_BYTES` per request.
- **Queues** (`ZMQ_RCVHWM`): each connection may have at most `DATA_RCVHWM` subscriptions and
  `CONTROL_RCVHWM` requests waiting to be read; beyond that ZeroMQ stops reading from it (TCP
  back-pressure), it does not buffer.
- **Subscriptions** (`SubscriptionLedger`): the data socket is an XPUB, which reports each new
  distinct subscription. Legitimate subscribers subscribe to a few prefixes of the topics, so
  more than `MAX_SUBSCRIPTIONS` distinct subscriptions, one longer than
  `MAX_SUBSCRIPTION_BYTES`, or anything that is not a subscription, is an attack: the publisher
  closes and rebinds the socket (which frees every peer's subscriptions; honest subscribers
  reconnect and resubscribe by themselves within ZeroMQ's reconnect interval, ~0.1 s) and, with
  CURVE, refuses that client's key for the rest of the run.
- **Frames** (`CONTROL_MAX_FRAMES`): a control request is one frame; a request of more frames
  is answered `malformed`, and one of more than `CONTROL_MAX_FRAMES` frames makes the server
  close and rebind its socket (reading it frame by frame would let a peer stream without end).
- **Replies never echo requests**: error messages quote at most `MAX_QUOTED_CHARS` characters
  of what the peer sent (`quote()`), and a reply's error is at most `MAX_ERROR_CHARS`.

Known limit (libzmq 4.3.5): a peer that speaks raw ZMTP can send one multipart message that
never ends; libzmq buffers its frames inside its I/O thread (high-water marks count whole
messages only) before the application can see any of them. No socket option bounds that. The
defence is authentication: with CURVE and the client allow-list (streamav/wire/auth.py) a peer
that is not allowed is refused during the handshake, before it can send a frame.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Data socket (XPUB): inbound frames are subscriptions ("\x01" + prefix) and cancels ("\x00" + prefix).
DATA_MAX_INBOUND_BYTES = 1024
DATA_RCVHWM = 16
MAX_SUBSCRIPTIONS = 256
MAX_SUBSCRIPTION_BYTES = 256
# How many inbound frames the publisher thread reads between two sends at most.
DATA_MAX_INBOUND_PER_CHECK = 4096

# Control socket (REP).
CONTROL_MAX_REQUEST_BYTES = 8192
CONTROL_RCVHWM = 4
CONTROL_MAX_FRAMES = 16
# A reply from a server the client talks to: bounded too (the client's REQ socket).
CONTROL_MAX_REPLY_BYTES = 1 << 20

MAX_QUOTED_CHARS = 64
MAX_ERROR_CHARS = 400

# After a reset: how long to retry binding the same endpoint (ZeroMQ closes the old listener
# asynchronously) before giving up for now.
REBIND_TIMEOUT_S = 2.0


def quote(value: object, limit: int = MAX_QUOTED_CHARS) -> str:
    """`value` as a short printable string for an error message: never more than `limit` chars
    of it, with its full length when it was cut (so replies never echo what a peer sent)."""
    text = value if isinstance(value, str) else repr(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} chars)"


def clip(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """At most `limit` characters of `text` (an error line)."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass
class SubscriptionLedger:
    """The distinct subscriptions an XPUB socket holds, from the notifications it delivers.

    `note(frame, more)` takes one inbound frame (what `XPUB.recv()` returned) and returns None,
    or the reason the socket must be reset. A non-verbose XPUB reports a subscription when the
    first peer makes it and a cancel when the last one drops it, so `len(ledger)` is the number
    of distinct prefixes in ZeroMQ's subscription trie (whose memory is what an attack inflates).
    """

    max_subscriptions: int = MAX_SUBSCRIPTIONS
    max_subscription_bytes: int = MAX_SUBSCRIPTION_BYTES
    _prefixes: set[bytes] = field(default_factory=set)

    def __len__(self) -> int:
        return len(self._prefixes)

    def clear(self) -> None:
        self._prefixes.clear()

    def note(self, frame: bytes, more: bool = False) -> str | None:
        if more or not frame or frame[0] not in (0, 1):
            return f"a peer sent data, not a subscription ({len(frame)} bytes{', multipart' if more else ''})"
        prefix = frame[1:]
        if frame[0] == 0:
            self._prefixes.discard(prefix)
            return None
        if len(prefix) > self.max_subscription_bytes:
            return (f"a subscription of {len(prefix)} bytes (at most "
                    f"{self.max_subscription_bytes})")
        self._prefixes.add(prefix)
        if len(self._prefixes) > self.max_subscriptions:
            return f"more than {self.max_subscriptions} distinct subscriptions"
        return None
