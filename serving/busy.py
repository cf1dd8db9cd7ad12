"""How many of this server's workers are inside a network call right now.

Steps slow down when workers run at once on a small host (two busy vCPUs of one core each run slower, though
neither waits for a CPU), so a prediction for an idle host is not what a busy one should be held to. Each
worker marks a byte of a small file shared by the server's workers (named for the process that spawned them)
while its network call runs; the number of marked bytes when a step starts is that step's load level.
"""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

SLOTS = 256  # workers per server this can tell apart


class BusyBoard:
    def __init__(self, path: Path, index: int):
        self.index = index % SLOTS
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        if os.fstat(self.fd).st_size < SLOTS:
            os.pwrite(self.fd, bytes(SLOTS), 0)
        os.pwrite(self.fd, b"\x00", self.index)  # a worker killed inside a call left its mark: its replacement clears it

    @classmethod
    def for_this_server(cls, index: int | None) -> "BusyBoard":
        return cls(Path(tempfile.gettempdir()) / f"srnas-busy-{os.getuid()}-{os.getppid()}", index or 0)

    def count(self) -> int:
        return sum(os.pread(self.fd, SLOTS, 0))

    @contextmanager
    def busy(self) -> Iterator[int]:
        """Marks this worker busy; yields how many workers are (this one included)."""
        os.pwrite(self.fd, b"\x01", self.index)
        try:
            yield max(1, self.count())
        finally:
            os.pwrite(self.fd, b"\x00", self.index)
