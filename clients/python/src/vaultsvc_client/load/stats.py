"""Recording calls: an HDR latency histogram plus counts of errors by code and reason.

Latencies are recorded in microseconds in an HdrHistogram (1 µs to 1 hour, 3
significant digits), so percentiles are exact to 0.1% whatever the spread, and
the histograms of several processes merge losslessly (each process sends its
histogram encoded; the parent decodes and adds them).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from hdrh.histogram import HdrHistogram  # type: ignore[import-untyped]

__all__ = ["LatencyHistogram", "ProcessResult", "Recorder"]

LOWEST_US = 1
HIGHEST_US = 3_600_000_000
SIGNIFICANT_DIGITS = 3

PERCENTILES: tuple[tuple[str, float], ...] = (
    ("p50", 50.0),
    ("p90", 90.0),
    ("p99", 99.0),
    ("p99_9", 99.9),
)


class LatencyHistogram:
    """A typed face on ``hdrh.histogram.HdrHistogram``, in seconds outside, µs inside."""

    def __init__(self) -> None:
        self._hdr = HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)

    def record(self, seconds: float) -> None:
        micros = int(seconds * 1_000_000 + 0.5)
        self._hdr.record_value(min(max(micros, LOWEST_US), HIGHEST_US))

    @property
    def count(self) -> int:
        return int(self._hdr.get_total_count())

    def encode(self) -> bytes:
        """The HdrHistogram wire form (compressed, base64), for merging in another process."""
        return bytes(self._hdr.encode())

    def add_encoded(self, encoded: bytes) -> None:
        self._hdr.decode_and_add(encoded)

    def summary_ms(self) -> dict[str, float | int | None]:
        """count, min, mean, p50, p90, p99, p99_9 and max in milliseconds (None when empty)."""
        count = self.count
        result: dict[str, float | int | None] = {"count": count}
        keys = ["min", "mean", *(name for name, _ in PERCENTILES), "max"]
        if count == 0:
            result.update(dict.fromkeys(keys))
            return result
        hdr = self._hdr
        result["min"] = _ms(hdr.get_min_value())
        result["mean"] = _ms(hdr.get_mean_value())
        for name, percentile in PERCENTILES:
            result[name] = _ms(hdr.get_value_at_percentile(percentile))
        result["max"] = _ms(hdr.get_max_value())
        return result


def _ms(micros: float) -> float:
    return round(float(micros) / 1000.0, 3)


ErrorKey = tuple[str, str]
"""(status code name, ErrorInfo reason; the code name again when the server sent none)."""


class Recorder:
    """What one process saw: successes in the histogram, failures counted by code and reason.

    Only successful calls go into the latency histogram: a refused or failed
    call (UNAVAILABLE from a stopped server takes microseconds) would make the
    latency look better than the service is.
    """

    def __init__(self) -> None:
        self.histogram = LatencyHistogram()
        self.ok = 0
        self.failed = 0
        self.errors: Counter[ErrorKey] = Counter()

    def success(self, seconds: float) -> None:
        self.ok += 1
        self.histogram.record(seconds)

    def error(self, key: ErrorKey) -> None:
        self.failed += 1
        self.errors[key] += 1

    def result(self, elapsed: float, planned: int | None, missed: int) -> ProcessResult:
        return ProcessResult(
            ok=self.ok,
            failed=self.failed,
            errors=dict(self.errors),
            histogram=self.histogram.encode(),
            elapsed=elapsed,
            planned=planned,
            missed=missed,
        )


@dataclass(frozen=True)
class ProcessResult:
    """One process's outcome; picklable, sent from worker processes to the parent."""

    ok: int
    failed: int
    errors: dict[ErrorKey, int]
    histogram: bytes
    elapsed: float
    planned: int | None = None
    """Open loop: the slots scheduled within the run (made or missed); else None."""
    missed: int = 0
    """Open loop: scheduled slots never started, because every worker was still busy
    when the run's time (plus one call deadline of grace) was up."""

    @property
    def count(self) -> int:
        return self.ok + self.failed
