"""Progress lines of long work (pipeline/progress.py): done / total, rate and time left, at most every few seconds."""

from __future__ import annotations

import logging
import re

from pipeline.progress import Progress


def test_progress_lines_say_how_far_how_fast_and_how_long(caplog, monkeypatch):
    clock = iter([0.0, 1.0, 5.0, 20.0, 20.0, 21.0, 30.0]).__next__  # a logged line reads the clock again
    monkeypatch.setattr("pipeline.progress.time.monotonic", clock)
    caplog.set_level(logging.INFO, logger="facerank")
    p = Progress("score", total=2299, unit="images", every_s=10)
    p.add(100)  # t=1: too soon for a line
    p.add(200)  # t=5: too soon
    p.add(1000)  # t=20: a line
    p.add(99)  # t=21: too soon again
    p.done()  # t=30: the last line, always
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "score: 1,300 / 2,299 images (57%), 65.0 images/s, about 15 s left",
        "score: 1,399 / 2,299 images (61%), 46.6 images/s, about 19 s left",
    ]
    assert all(re.fullmatch(r"score: [\d,]+ / [\d,]+ images \(\d+%\), [\d.]+ images/s(, about \d+ s left)?", x)
               for x in lines)  # fmt: skip
