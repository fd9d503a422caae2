"""One measured stream, and the summaries the report shows."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field


@dataclass
class Stream:
    """Timestamps (time.perf_counter) of one generation as its client saw it."""

    sent: float = 0.0
    arrivals: list[tuple[float, int]] = field(default_factory=list)  # (time, tokens in that message)
    error: str | None = None

    def add(self, t: float, tokens: int) -> None:
        if tokens > 0:
            self.arrivals.append((t, tokens))

    @property
    def tokens(self) -> int:
        return sum(n for _, n in self.arrivals)

    @property
    def ttft(self) -> float | None:
        return self.arrivals[0][0] - self.sent if self.arrivals else None

    @property
    def end(self) -> float:
        return self.arrivals[-1][0] if self.arrivals else self.sent

    def itls(self) -> list[float]:
        """Inter-token latencies: a gap spanning k tokens counts as k gaps of gap/k."""
        out = []
        for (t0, _), (t1, n) in zip(self.arrivals, self.arrivals[1:], strict=False):
            out += [(t1 - t0) / n] * n
        return out

    @property
    def decode_tps(self) -> float:
        """Tokens/s after the first token (steady-state decoding)."""
        if len(self.arrivals) < 2:
            return 0.0
        return (self.tokens - self.arrivals[0][1]) / max(self.end - self.arrivals[0][0], 1e-9)

    @property
    def e2e_tps(self) -> float:
        """Tokens/s from the request to the last token (includes the first-token latency)."""
        return self.tokens / max(self.end - self.sent, 1e-9) if self.arrivals else 0.0


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    k = (len(s) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def single_summary(streams: list[Stream]) -> dict:
    """Repeated single-stream runs: medians of rates, pooled latency percentiles."""
    ok = [s for s in streams if s.error is None and s.arrivals]
    itls = [x for s in ok for x in s.itls()]
    return {
        "runs": len(streams),
        "errors": len(streams) - len(ok),
        "tokens": statistics.median([s.tokens for s in ok]) if ok else 0,
        "tokens_per_s": statistics.median([s.decode_tps for s in ok]) if ok else 0.0,
        "e2e_tokens_per_s": statistics.median([s.e2e_tps for s in ok]) if ok else 0.0,
        "ttft_ms": 1000 * statistics.median([s.ttft for s in ok]) if ok else None,
        "itl_p50_ms": _ms(pct(itls, 50)),
        "itl_p99_ms": _ms(pct(itls, 99)),
        "ttft_runs_ms": [round(1000 * s.ttft, 1) for s in ok],
        "tps_runs": [round(s.decode_tps, 2) for s in ok],
        "error_messages": sorted({s.error for s in streams if s.error})[:3],
    }


def concurrent_summary(streams: list[Stream]) -> dict:
    """Simultaneous sessions: aggregate rate over the whole window, latency, and fairness."""
    ok = [s for s in streams if s.error is None and s.arrivals]
    itls = [x for s in ok for x in s.itls()]
    tokens = sum(s.tokens for s in ok)
    window = (max(s.end for s in ok) - min(s.sent for s in ok)) if ok else 0.0
    rates = [s.e2e_tps for s in ok]
    median = statistics.median(rates) if rates else 0.0
    return {
        "sessions": len(streams),
        "errors": len(streams) - len(ok),
        "tokens": tokens,
        "wall_s": round(window, 3),
        "aggregate_tokens_per_s": tokens / window if window > 0 else 0.0,
        "ttft_p50_ms": _ms(pct([s.ttft for s in ok], 50)),
        "itl_p50_ms": _ms(pct(itls, 50)),
        "itl_p99_ms": _ms(pct(itls, 99)),
        "session_tps_min": min(rates) if rates else 0.0,
        "session_tps_median": median,
        "session_tps_max": max(rates) if rates else 0.0,
        # starvation: a session slower than half, or faster than twice, the median session
        "starved": sum(1 for r in rates if r < median / 2 or r > 2 * median),
        "error_messages": sorted({s.error for s in streams if s.error})[:3],
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else 1000 * seconds
