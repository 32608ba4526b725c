"""Progress lines for long work: ``done / total (share), rate, ETA`` at INFO, at most every few seconds.

Ray Data's progress bars are off in jobs (their redraws garble ``ray job logs``), so a stage that streams for hours
says how far it is with plain lines instead: :class:`Progress` counts what is done and logs a line when
``every_s`` seconds have passed since the last one, and once more at the end.

Example::

    p = Progress("score", total=len(todo), unit="images")
    for batch in batches:
        ...
        p.add(batch.num_rows)   # score: 1,200 / 2,299 images (52%), 31.4 images/s, about 35 s left
    p.done()
"""

from __future__ import annotations

import logging
import time


class Progress:
    """Counts work done of ``total`` and logs ``name: done / total unit (share), rate, ETA`` every ``every_s``."""

    def __init__(self, name: str, total: int, unit: str = "items", every_s: float = 10.0, logger=None):
        self.name, self.total, self.unit, self.every_s = name, int(total), unit, float(every_s)
        self.log = logger or logging.getLogger("facerank")
        self.count = 0
        self.t0 = self._last = time.monotonic()

    def line(self) -> str:
        """The progress line as it stands now."""
        elapsed = max(time.monotonic() - self.t0, 1e-9)
        rate = self.count / elapsed
        share = f" ({100 * self.count / self.total:.0f}%)" if self.total else ""
        left = ""
        if rate > 0 and self.total > self.count:
            secs = (self.total - self.count) / rate
            left = f", about {secs:.0f} s left" if secs < 120 else f", about {secs / 60:.0f} min left"
        return f"{self.name}: {self.count:,} / {self.total:,} {self.unit}{share}, {rate:.1f} {self.unit}/s{left}"

    def add(self, n: int) -> None:
        """Count ``n`` more done; log a line when ``every_s`` has passed since the last one."""
        self.count += int(n)
        now = time.monotonic()
        if now - self._last >= self.every_s:
            self._last = now
            self.log.info(self.line())

    def done(self) -> None:
        """The last line (always logged)."""
        self.log.info(self.line())
