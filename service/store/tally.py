"""Runs by status and live leases, as the metrics report them (docs/operations.md, "Metrics").

A scrape must not touch the database, and counting the runs at each one would cost as much as
the runs are many. So a :class:`RunTally` is counted once, when the store opens, and then kept
by the writes themselves: each committed transaction hands it a :class:`TallyDelta` (the
statuses that runs left and entered, and the leases it set or ended), built from the rows the
transaction read and wrote anyway. A transaction that is rolled back hands nothing.

A lease is live until its expiry time, which passes without any write: the tally keeps each
leased run's expiry (a number per leased run, not per run) and counts those still ahead at a
scrape, dropping the ones that passed.

Everything here is pure and thread-safe (the SQLite writer thread adjusts, the event loop reads).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = ["RunTally", "TallyDelta"]


@dataclass(slots=True)
class TallyDelta:
    """What one transaction changed: runs per status (+1 entered, -1 left), and each run's
    lease expiry after it (None: no live lease any more)."""

    statuses: Counter[str] = field(default_factory=Counter)
    leases: dict[str, int | None] = field(default_factory=dict)

    def moved(self, before: str | None, after: str | None) -> None:
        """A run went from status ``before`` to ``after`` (None: it did not exist / was
        deleted)."""
        if before == after:
            return
        if before is not None:
            self.statuses[before] -= 1
        if after is not None:
            self.statuses[after] += 1

    def leased(self, run_id: str, expires_at: int | None) -> None:
        self.leases[run_id] = expires_at

    def __bool__(self) -> bool:
        return bool(self.leases) or any(self.statuses.values())


class RunTally:
    """Runs by status and lease expiries, counted once and then adjusted by committed writes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._statuses: Counter[str] = Counter()
        self._leases: dict[str, int] = {}
        self.counted = False

    def reset(self, statuses: Iterable[tuple[str, int]], leases: Iterable[tuple[str, int]]) -> None:
        """Start from a count of the store: (status, runs) and (run id, lease expiry) pairs."""
        with self._lock:
            self._statuses = Counter(dict(statuses))
            self._leases = dict(leases)
            self.counted = True

    def apply(self, deltas: Iterable[TallyDelta]) -> None:
        """The deltas of committed transactions, in commit order."""
        with self._lock:
            for delta in deltas:
                self._statuses.update(delta.statuses)
                for run_id, expires_at in delta.leases.items():
                    if expires_at is None:
                        self._leases.pop(run_id, None)
                    else:
                        self._leases[run_id] = expires_at

    def runs_by_status(self) -> dict[str, int]:
        """Runs per status; a status no run has any more is reported as 0, not dropped."""
        with self._lock:
            return dict(self._statuses)

    def live_leases(self, now_ms: int) -> int:
        """Leases that expire after ``now_ms`` (by the store's clock); expired ones are
        forgotten."""
        with self._lock:
            expired = [run_id for run_id, until in self._leases.items() if until <= now_ms]
            for run_id in expired:
                del self._leases[run_id]
            return len(self._leases)
