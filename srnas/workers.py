"""Worker processes that share one command's plan, and stop with it."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from contextlib import contextmanager
from typing import Iterator, Sequence

STOPPED = 128 + signal.SIGTERM  # the exit status of a process ended by SIGTERM, as shells report it


class ExitOnTerm:
    """A SIGTERM handler that exits through `finally` blocks, deferred while workers start: a Popen interrupted
    before it returns leaves its child running, unknown to the list that `finally` stops (a `kill` during
    start-up, on a loaded host, left both workers of a study running)."""

    def __init__(self) -> None:
        self.deferring = False
        self.pending = False

    def __call__(self, signum: int, frame: object) -> None:
        if self.deferring:
            self.pending = True
        else:
            sys.exit(STOPPED)

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """Hold a SIGTERM that arrives inside the block until its end."""
        self.deferring = True
        try:
            yield
        finally:
            self.deferring = False
        if self.pending:
            sys.exit(STOPPED)


def run_workers(argv: Sequence[str], n: int) -> int:
    """Run `n` processes of `argv` side by side and return how many failed. `kill` (SIGTERM) of this process
    stops them too: left running, they would run the plan a second time beside a restarted command."""
    stop = ExitOnTerm()
    signal.signal(signal.SIGTERM, stop)
    # side by side, OpenMP threads that spin while waiting burn the cores the other workers need (two 2-thread
    # trainings at once ran 11x slower on a 2-core host): idle threads sleep instead
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    procs: list[subprocess.Popen] = []
    try:
        with stop.deferred():
            for _ in range(n):
                procs.append(subprocess.Popen(list(argv), env=env))
        return sum(p.wait() != 0 for p in procs)
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
