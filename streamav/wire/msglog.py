"""The message log of a recording (`streamav live --record DIR`: DIR/messages.msgpack).

The file is a stream of msgpack values, in the wire protocol's own encoding (protocol.py):

1. a header map: {"format": "streamav-message-log", "version": 1, "schema": SCHEMA_VERSION,
   "stream": the stream id, "clock": "monotonic", "anchor": {"t_monotonic", "t_wall"}};
2. one array per message the publisher sent, in the order it sent them:
   [t_publish_ns (int: the publisher's monotonic clock, ns), topic (str),
    map (bin: the message's msgpack map exactly as sent, envelope included),
    buffers (array of bin: its raw buffers)].

Sending [topic, map, *buffers] again reproduces the message byte for byte (`streamav replay`).
A log cut short (a disk that filled up, a killed process) is read up to its last complete
record; `LogReader.trailing_bytes` says how much was left over.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import msgpack

from streamav.wire import protocol

LOG_FORMAT = "streamav-message-log"
LOG_VERSION = 1


@dataclass(frozen=True)
class LogRecord:
    """One logged message: when it was sent, and its multipart frames."""

    t_ns: int
    topic: str
    body: bytes  # the msgpack map, envelope included
    buffers: tuple[bytes, ...]

    def frames(self) -> list[bytes]:
        return [self.topic.encode("utf-8"), self.body, *self.buffers]

    def message(self) -> protocol.Message:
        return protocol.decode(self.frames())


def header_bytes(stream_id: str, anchor: dict[str, float]) -> bytes:
    """The log's first value."""
    return protocol.packb({"format": LOG_FORMAT, "version": LOG_VERSION,
                           "schema": protocol.SCHEMA_VERSION, "stream": stream_id,
                           "clock": "monotonic", "anchor": dict(anchor)})


def record_bytes(frames: list[bytes], t_ns: int) -> bytes:
    """One message as a log record (frames: [topic, map, *buffers] as sent)."""
    topic = bytes(frames[0]).decode("utf-8")
    return msgpack.packb([int(t_ns), topic, bytes(frames[1]), [bytes(b) for b in frames[2:]]],
                         use_bin_type=True)


class LogReader:
    """Reads a message log: `header`, then iterate for the records.

    Raises ValueError when the file is not a message log."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._file: BinaryIO = self.path.open("rb")
        self._unpacker = msgpack.Unpacker(self._file, raw=False, strict_map_key=False,
                                          max_buffer_size=256 * 1024 * 1024)
        self.trailing_bytes = 0
        self.records = 0
        try:
            header = next(self._unpacker)
        except (StopIteration, ValueError, msgpack.UnpackException) as exc:
            self.close()
            raise ValueError(f"{self.path} is not a streamav message log (no header)") from exc
        if not isinstance(header, dict) or header.get("format") != LOG_FORMAT:
            self.close()
            raise ValueError(f"{self.path} is not a streamav message log")
        if header.get("version") != LOG_VERSION:
            self.close()
            raise ValueError(f"{self.path}: message log version {header.get('version')} "
                             f"(this streamav reads version {LOG_VERSION})")
        self.header: dict[str, Any] = header

    def __iter__(self) -> Iterator[LogRecord]:
        while True:
            try:
                value = next(self._unpacker)
            except StopIteration:
                break
            except (ValueError, msgpack.UnpackException):  # a damaged record: stop there
                break
            if not (isinstance(value, list) and len(value) == 4 and isinstance(value[0], int)
                    and isinstance(value[1], str) and isinstance(value[2], bytes)
                    and isinstance(value[3], list)):
                break
            self.records += 1
            yield LogRecord(value[0], value[1], value[2], tuple(value[3]))
        self.trailing_bytes = max(0, self.path.stat().st_size - self._unpacker.tell())

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> LogReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_log(path: Path) -> tuple[dict[str, Any], list[LogRecord]]:
    """The header and every complete record of a log (small logs; tests, tools)."""
    with LogReader(path) as reader:
        return reader.header, list(reader)
