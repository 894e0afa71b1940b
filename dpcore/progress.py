"""Progress a person can follow: periodic lines with counts, rate and time left.

Used by the training loop (steps of an epoch) and by the launcher while a local pipeline runs (files
committed so far). Lines go to the log at most every ``every_s`` seconds, so a long run shows it is
alive without flooding the terminal.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Callable

logger = logging.getLogger(__name__)


def progress_seconds() -> float:
    """How often progress lines appear (``DPBEAM_PROGRESS_SECONDS``, default 15)."""
    return float(os.environ.get("DPBEAM_PROGRESS_SECONDS", "15"))


def duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``2 h 07 min``."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class Progress:
    """Reports ``done`` of ``total`` ``unit`` for ``what``, with the rate since the start and an ETA."""

    def __init__(self, what: str, total: int | None, unit: str, every_s: float = 10.0,
                 log: Callable[[str], None] | None = None, clock: Callable[[], float] = time.monotonic):
        self.what, self.total, self.unit, self.every_s = what, total, unit, every_s
        self.log = log or logger.info
        self.clock = clock
        self.started = clock()
        self.last_report = self.started
        self.offset = 0

    def restart(self, done: int) -> None:
        """Measure the rate from here on (e.g. after a first step that compiled the model): the time
        already spent on ``done`` items stays out of the rate and the time left."""
        self.started = self.clock()
        self.last_report = self.started
        self.offset = done

    def line(self, done: int, extra: str = "") -> str:
        elapsed = self.clock() - self.started
        rate = (done - self.offset) / elapsed if elapsed > 0 else 0.0
        count = f"{done} of {self.total} {self.unit}" if self.total else f"{done} {self.unit}"
        if self.total:
            count += f" ({100.0 * done / self.total:.0f}%)"
        parts = [count, f"{rate:.3g} {self.unit}/s" if rate > 0 else f"{duration(elapsed)} elapsed"]
        if self.total and rate > 0:
            parts.append(f"ETA {duration((self.total - done) / rate)}")
        return f"{self.what}: " + ", ".join(parts) + (f", {extra}" if extra else "")

    def update(self, done: int, extra: str = "", force: bool = False) -> bool:
        """Log a line if ``every_s`` has passed since the last one (or ``force``); True if logged."""
        now = self.clock()
        if not force and now - self.last_report < self.every_s:
            return False
        self.last_report = now
        self.log(self.line(done, extra))
        return True
