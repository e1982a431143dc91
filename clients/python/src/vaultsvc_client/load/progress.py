"""The live progress line on stderr.

On a terminal it is one line rewritten in place (about 4 times a second); when
forced with ``--progress`` onto a pipe or file, it is one plain line per second,
so logs stay readable. It never shows a value: only counts and rates.
"""

from __future__ import annotations

import contextlib
import time
from typing import TextIO

__all__ = ["Progress"]


class Progress:
    def __init__(self, stream: TextIO, enabled: bool, interactive: bool) -> None:
        self._stream = stream
        self.enabled = enabled
        self._interactive = interactive
        self.interval = 0.25 if interactive else 1.0
        self._shown = False
        self._last_time: float | None = None
        self._last_count = 0

    @classmethod
    def for_stream(cls, stream: TextIO, forced: bool | None) -> Progress:
        try:
            tty = stream.isatty()
        except (AttributeError, ValueError):
            tty = False
        return cls(stream, tty if forced is None else forced, tty)

    def message(self, text: str) -> None:
        """A status line (seeding, cleanup) in the same place as the progress line."""
        if self.enabled:
            self._write(f"load: {text}")

    def update(
        self, elapsed: float, ok: int, failed: int, target_rate: float | None = None
    ) -> None:
        if not self.enabled:
            return
        count = ok + failed
        now = time.monotonic()
        if self._last_time is None or now <= self._last_time:
            current = count / elapsed if elapsed > 0 else 0.0
        else:
            current = (count - self._last_count) / (now - self._last_time)
        self._last_time, self._last_count = now, count
        target = f" (target {target_rate:g}/s)" if target_rate is not None else ""
        self._write(
            f"load: {elapsed:6.1f}s  calls {count}  ok {ok}  errors {failed}  "
            f"{current:,.0f} calls/s{target}"
        )

    def close(self) -> None:
        """Ends the line in place, so the report starts on a clean line."""
        if self.enabled and self._interactive and self._shown:
            self._raw("\r\x1b[2K")
        self._shown = False

    def _write(self, line: str) -> None:
        if self._interactive:
            self._raw("\r\x1b[2K" + line)
            self._shown = True
        else:
            self._raw(line + "\n")

    def _raw(self, text: str) -> None:
        with contextlib.suppress(OSError, ValueError):
            self._stream.write(text)
            self._stream.flush()
