"""Per-principal limit on asking for secrets that do not exist (audit floods).

A token bucket per principal, charged one token per missing secret name: requests that
name only existing secrets are never charged, so plain resolves (load tests run as one
principal) are never limited. A bucket may go into debt by one request's worth; while it
holds less than one token, requests naming missing secrets are refused with RESOURCE_EXHAUSTED
``RATE_LIMITED`` and a RetryInfo saying when the bucket holds a token again.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from vaultsvc.errors import Reason, ResourceExhausted


@dataclass
class _Bucket:
    tokens: float
    updated: float


class MissingNamesLimiter:
    """``rate`` missing names per second per principal, bursts of ``burst``; rate 0: off."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(burst)
        self._buckets: dict[str, _Bucket] = {}

    def charge(self, principal: str, missing: int) -> None:
        """Charge ``missing`` names to ``principal``; RATE_LIMITED if its bucket is empty."""
        if self.rate <= 0 or missing <= 0:
            return
        now = time.monotonic()
        bucket = self._buckets.get(principal)
        if bucket is None:
            bucket = self._buckets[principal] = _Bucket(self.burst, now)
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
        bucket.updated = now
        if bucket.tokens < 1:
            wait = (1 - bucket.tokens) / self.rate
            raise ResourceExhausted(
                f"too many requests naming secrets that do not exist ({missing} in this one); "
                f"retry in {wait:.1f} s",
                reason=Reason.RATE_LIMITED,
                retry_delay=wait,
            )
        bucket.tokens -= missing
