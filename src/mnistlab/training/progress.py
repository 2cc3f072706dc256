"""The progress line of a training run, and the lines that stay on screen.

The live line (step, images/s, loss, accuracy, time left) is redrawn in place on stderr, and
only when stderr is a terminal, so logs and pipes get the permanent lines alone.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def format_duration(seconds: float) -> str:
    seconds = int(round(max(0.0, seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Progress:
    def __init__(self, total_steps: int, *, live: bool | None = None, quiet: bool = False,
                 out: TextIO | None = None, err: TextIO | None = None):
        self.total = total_steps
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.quiet = quiet
        self.live = (not quiet) and (self.err.isatty() if live is None else live)
        self._last_draw = 0.0
        self._drawn = False

    def update(self, step: int, *, images_per_s: float, loss: float | None, accuracy: float | None,
               seconds_left: float) -> None:
        """Redraw the live line for `step` steps done (at most ten times a second)."""
        now = time.monotonic()
        if not self.live or (now - self._last_draw < 0.1 and step < self.total):
            return
        self._last_draw = now
        width = 24
        filled = int(width * step / max(1, self.total))
        bar = "=" * filled + (">" if filled < width else "") + "." * max(0, width - filled - 1)
        parts = [f"step {step}/{self.total} [{bar}]", f"{images_per_s:,.0f} img/s"]
        if loss is not None:
            parts.append(f"loss {loss:.4f}")
        if accuracy is not None:
            parts.append(f"acc {100 * accuracy:.2f}%")
        parts.append(f"ETA {format_duration(seconds_left)}")
        self.err.write("\r\033[K" + "  ".join(parts))
        self.err.flush()
        self._drawn = True

    def line(self, text: str) -> None:
        """A line that stays: an epoch's summary, the final result."""
        if self.quiet:
            return
        self.clear()
        print(text, file=self.out, flush=True)

    def clear(self) -> None:
        if self._drawn:
            self.err.write("\r\033[K")
            self.err.flush()
            self._drawn = False
