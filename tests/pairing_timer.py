"""A test helper (not a test): time what the training loop spends in :class:`pfm.pairing.PairingPlan`."""

from __future__ import annotations

import time
from typing import Callable, Optional

from pfm.pairing import PairingPlan


def time_pairing_plans(monkeypatch, before_close: Optional[Callable[[], None]] = None) -> dict[str, float]:
    """Patch ``PairingPlan`` (undone by ``monkeypatch``) so that the returned dict accumulates ``partners_s``, the
    seconds the training loop spent in ``partners()`` (solving and waiting for the plan's thread), and ``solve_s``,
    the seconds the plans' threads spent solving. Their difference is the loop's wait for the thread.
    ``before_close`` runs as each plan closes (e.g. to release a blocked thread)."""
    timed = {"partners_s": 0.0, "solve_s": 0.0}
    partners, close = PairingPlan.partners, PairingPlan.close

    def timed_partners(self, index):
        t = time.perf_counter()
        try:
            return partners(self, index)
        finally:
            timed["partners_s"] += time.perf_counter() - t

    def timed_close(self):
        if before_close is not None:
            before_close()
        close(self)
        timed["solve_s"] += getattr(self, "stats", {}).get("solve_s", 0.0)

    monkeypatch.setattr(PairingPlan, "partners", timed_partners)
    monkeypatch.setattr(PairingPlan, "close", timed_close)
    return timed
