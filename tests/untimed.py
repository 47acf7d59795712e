"""What a results JSON says that must follow from the seeds (issue 29): everything but measured times."""

TIMING = {"seconds", "wall_seconds", "compute_seconds", "cached", "seconds_per_output"}


def untimed(v):
    """``v`` without its measured times (and the comparisons matched by a measured time, which may pick another n
    in another run)."""
    if isinstance(v, dict):
        return {k: untimed(x) for k, x in v.items() if k not in TIMING}
    return [untimed(x) for x in v if not (isinstance(x, dict) and x.get("matched_by") == "wall time")] \
        if isinstance(v, list) else v


def seeded_numbers(result: dict) -> dict:
    """A results JSON's config, summary and per-seed runs without their measured times: what two runs of the same
    seeds must agree on, whatever their data directories held."""
    return untimed({k: result[k] for k in ("config", "summary", "runs")})
