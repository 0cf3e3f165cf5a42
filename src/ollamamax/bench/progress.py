"""The progress bar of ``ollamamax bench``: owns :class:`Progress`, one status line on a text
stream (redrawn with ``\\r`` on a terminal, else one line a second).  It must not decide
when it is shown (the command does) nor read results; it only draws what
:meth:`Progress.update` is given, and imports nothing outside the standard library.
"""

from __future__ import annotations

from typing import TextIO

__all__ = ["Progress"]


class Progress:
    """A one-line progress bar on a text stream (``\\r`` updates on a terminal, else one line a second)."""

    def __init__(self, stream: TextIO, *, tty: bool, width: int = 24) -> None:
        import time

        self.stream = stream
        self.tty = tty
        self.width = width
        self._clock = time.monotonic
        self._last = -1e9
        self._shown = 0

    def update(self, *, index: int, count: int, concurrency: int, elapsed: float, total: float,
               warming: bool, draining: bool, ok: int, errors: int, in_flight: int) -> None:
        now = self._clock()
        if now - self._last < (0.1 if self.tty else 1.0):
            return
        self._last = now
        frac = min(1.0, elapsed / total) if total > 0 else 1.0
        fill = int(frac * self.width)
        phase = "warm-up" if warming else ("draining" if draining else "measuring")
        line = (f"level {index + 1}/{count} c={concurrency} [{'#' * fill}{'.' * (self.width - fill)}] "
                f"{min(elapsed, total):.1f}/{total:.1f}s {phase}  req {ok}  err {errors}  in-flight {in_flight}")
        if self.tty:
            pad = max(0, self._shown - len(line))
            self.stream.write("\r" + line + " " * pad)
            self._shown = len(line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def clear(self) -> None:
        if self.tty and self._shown:
            self.stream.write("\r" + " " * self._shown + "\r")
            self.stream.flush()
        self._shown = 0
        self._last = -1e9
