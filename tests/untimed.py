"""The tests' names for :mod:`pfm_experiments.seeded` (what a results JSON says that must follow from the seeds)."""

from pfm_experiments.seeded import TIMING, seeded_numbers, untimed

__all__ = ["TIMING", "seeded_numbers", "untimed"]
