"""The one error hierarchy of streamav, and the exit code each kind of failure gives.

Fatal errors stop a run with a one-line reason on stderr and a non-zero exit code (the CLI
catches `StreamavError`); transient faults are counted and logged with a rate limit instead.
"""

from __future__ import annotations


class StreamavError(Exception):
    """Base of every error streamav raises on purpose. `exit_code` is what the CLI exits with."""

    exit_code = 1


class InputError(StreamavError):
    """Bad user input: a missing or unreadable file, a file without the stream asked for, a bad option."""

    exit_code = 2


class DeviceError(StreamavError):
    """A capture device that cannot be opened or found (camera, microphone, PortAudio itself)."""

    exit_code = 3


class EndpointError(StreamavError):
    """A ZeroMQ endpoint that cannot be bound or connected (already in use, bad address, no keys)."""

    exit_code = 4


class MissingDependencyError(StreamavError):
    """An optional dependency is not installed; the message says how to install it."""

    exit_code = 5


class SourceError(StreamavError):
    """A source failed during the run: its decoder died (a damaged file) or a network source
    stopped delivering (read timeout). The run stops at once with a `source_failed` status
    message, then its final stats; what it produced up to there is kept."""

    exit_code = 6
