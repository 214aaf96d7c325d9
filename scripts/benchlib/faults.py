"""The soak's fault schedule, and the driver that applies it to fault proxies and emulator knobs.

Every ``slot_s`` each backend gets a mode: ``pass`` and ``latency`` (up), or ``tls_blackhole``,
``reset``, ``refuse`` (made by its FaultProxy), ``429``, ``503`` and ``corrupt`` (made by its
emulator's knobs: status faults and bytes that are no image). The schedule is a pure function
of a seed, so a failing soak can be replayed exactly.
"""

from __future__ import annotations

import random
import time
from bisect import bisect_right
from collections import Counter
from dataclasses import dataclass, field

from imagegate.testing import FaultProxy, Knobs

MODES = ("pass", "latency", "tls_blackhole", "reset", "refuse", "429", "503", "corrupt")
UP_MODES = frozenset({"pass", "latency"})
_PROXY_MODES = {
    "pass": "pass",
    "latency": "latency",
    "tls_blackhole": "tls_blackhole",
    "reset": "reset",
    "refuse": "refuse",
}
_HUGE = 10**9  # "every request while the mode lasts"

Schedule = list[tuple[str, ...]]


def fault_schedule(seed: int, backends: int, slots: int, *, up_share: float = 0.5) -> Schedule:
    """``slots`` rows of one mode per backend, drawn from ``random.Random(seed)``.

    Each backend is up with probability ``up_share``, else in one of the six down modes;
    then, where the table has room, one slot (not the first) has every backend down, so that
    "all down" is exercised too, and every mode appears at least once.
    """
    rng = random.Random(seed)
    down = [m for m in MODES if m not in UP_MODES]
    rows = [
        [
            rng.choice(("pass", "pass", "latency")) if rng.random() < up_share else rng.choice(down)
            for _ in range(backends)
        ]
        for _ in range(slots)
    ]
    all_down = rng.randrange(1, slots) if slots >= 3 else None
    if all_down is not None:
        rows[all_down] = [rng.choice(down) for _ in range(backends)]
    cells = [(s, b) for s in range(slots) for b in range(backends)]
    rng.shuffle(cells)
    for mode in MODES:
        counts = Counter(m for row in rows for m in row)
        if counts[mode]:
            continue
        for s, b in cells:  # a cell whose mode appears elsewhere too, outside the all-down slot
            if counts[rows[s][b]] > 1 and not (s == all_down and mode in UP_MODES):
                rows[s][b] = mode
                break
    return [tuple(row) for row in rows]


@dataclass
class FaultDriver:
    """Applies one schedule row at a time to the backends' proxies and knobs, and remembers
    when each row took effect (to tell afterwards which backends were up at any moment)."""

    proxies: list[FaultProxy]
    knobs: list[Knobs]
    base_latency_s: float = 0.0
    proxy_latency_s: float = 0.05
    retry_after: str = "1"
    starts: list[float] = field(default_factory=list)
    rows: list[tuple[str, ...]] = field(default_factory=list)

    def apply(self, row: tuple[str, ...]) -> None:
        for proxy, knobs, mode in zip(self.proxies, self.knobs, row, strict=True):
            knobs.clear()
            knobs.requests.clear()  # the record would grow for the whole soak
            knobs.latency_s = self.base_latency_s
            proxy.latency_s = self.proxy_latency_s
            proxy.mode = _PROXY_MODES.get(mode, "pass")  # type: ignore[assignment]
            if mode == "429":
                knobs.arm(
                    "status", count=_HUGE, status=429, headers={"Retry-After": self.retry_after}
                )
            elif mode == "503":
                knobs.arm("status", count=_HUGE, status=503)
            elif mode == "corrupt":
                knobs.arm("not_image", count=_HUGE)
        self.starts.append(time.monotonic())
        self.rows.append(row)

    def up_throughout(self, t0: float, t1: float) -> bool:
        """Was some backend up (pass/latency) for the whole of [t0, t1]?"""
        first = max(0, bisect_right(self.starts, t0) - 1)
        last = max(0, bisect_right(self.starts, t1) - 1)
        if not self.rows:
            return False
        span = self.rows[first : last + 1]
        return any(all(row[b] in UP_MODES for row in span) for b in range(len(span[0])))

    def up_at(self, t: float) -> bool:
        return self.up_throughout(t, t)

    def slot_of(self, t: float) -> tuple[int, float]:
        """The schedule row in force at ``t``, and how long it had been in force."""
        k = max(0, bisect_right(self.starts, t) - 1)
        return k, t - self.starts[k] if self.starts else 0.0
