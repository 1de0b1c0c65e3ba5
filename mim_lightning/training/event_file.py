"""TensorBoard event files, written in the caller's thread with a compiled CRC-32C.

The ``tensorboard`` package's ``EventFileWriter`` checksums every record in pure Python (about
50 us for the 500-byte event of one stage-1 step) on a background thread that holds the GIL while
it does, so at d = 64 logging cost a fifth of a training step (``scripts/bench_stage1.py``). This
writes the same TFRecord framing (little-endian length, its masked CRC-32C, the serialised
``Event``, the data's masked CRC-32C) with ``google-crc32c``; TensorBoard's readers verify both
checksums.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from pathlib import Path

import google_crc32c
from tensorboard.compat.proto import event_pb2

FLUSH_SECONDS = 5.0  # a live TensorBoard sees events at most this late
MASK_DELTA = 0xA282EAD8


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked checksum: rotate CRC-32C(data) right by 15 bits and add 0xa282ead8 (mod 2^32)."""
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + MASK_DELTA) & 0xFFFFFFFF


class EventFile:
    """One ``events.out.tfevents.*`` file in ``folder``, opened with its file-version event;
    buffered, flushed every ``FLUSH_SECONDS`` and on ``close``."""

    def __init__(self, folder: str | Path):
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}.{id(self)}"
        self.path = folder / name
        self.handle = open(self.path, "wb")
        self.flushed = time.monotonic()
        self.write(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))

    def write(self, event: event_pb2.Event) -> None:
        data = event.SerializeToString()
        length = struct.pack("<Q", len(data))
        self.handle.write(length + struct.pack("<I", masked_crc32c(length)) + data + struct.pack("<I", masked_crc32c(data)))
        if time.monotonic() - self.flushed > FLUSH_SECONDS:
            self.flush()

    def flush(self, sync: bool = False) -> None:
        """Hand the buffered events to the operating system (a killed process loses none of them);
        ``sync``: also onto the disk (fsync)."""
        self.handle.flush()
        if sync:
            os.fsync(self.handle.fileno())
        self.flushed = time.monotonic()

    def close(self) -> None:
        self.handle.close()
