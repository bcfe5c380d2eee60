"""Statistics over per-item records: Wilson intervals, intervals on a mean, paired differences of two methods on
the same items and their text, agreement. Plain Python, no torch: evaluation summaries and model cards use them."""

from __future__ import annotations

import math
import random
import statistics


def wilson(correct: int, n: int, z: float = 1.96) -> list[float]:
    if n == 0:
        return [0.0, 0.0]
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [round(centre - half, 4), round(centre + half, 4)]


def mean_interval(values: list[float], z: float = 1.96) -> list[float] | None:
    """A 95% interval on the mean of per-item values (normal approximation; None under two values)."""
    if len(values) < 2:
        return None
    mean, half = statistics.fmean(values), z * statistics.stdev(values) / math.sqrt(len(values))
    return [round(mean - half, 4), round(mean + half, 4)]


def paired_difference(records: list[dict], baseline: list[dict], key: str = "correct") -> dict:
    """Difference of two methods' per-item ``key`` (accuracy; F1 or the generation score for free text) on the
    same items, with a 95% interval from the per-item differences (normal approximation): the communication gain
    when the baseline is c2c-shuffled."""
    by_id = {r["id"]: r[key] for r in baseline}
    differences = [float(r[key]) - float(by_id[r["id"]]) for r in records if r["id"] in by_id]
    n = len(differences)
    if n < 2:
        return {"n": n, "difference": None, "ci95": None}
    return {"n": n, "difference": round(statistics.fmean(differences), 4), "ci95": mean_interval(differences)}


def paired_text(result: dict) -> str:
    """A ``paired_difference`` in points with its 95% interval: ``+2.2 [+0.3, +4.1]``."""
    lo, hi = result["ci95"]
    return f"{100 * result['difference']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"


def agreement(records: list[dict], reference: list[dict]) -> dict:
    """How often a method picks what ``reference`` picks on the same items (items either left unanswered are
    left out), with a Wilson 95% interval."""
    picks = {r["id"]: r["prediction"] for r in reference if r["prediction"] is not None}
    same = [r["prediction"] == picks[r["id"]] for r in records if r["id"] in picks and r["prediction"] is not None]
    return {"n": len(same), "agreement": round(sum(same) / len(same), 4) if same else None,
            "ci95": wilson(sum(same), len(same))}


def gap_closed(floor: dict, ceiling: dict, channel: dict, draws: int = 2000) -> dict:
    """The share of the gap from ``floor`` to ``ceiling`` that ``channel`` closes, (channel - floor) / (ceiling -
    floor), from per-item scores (id -> score) on the items all three have, with a 95% interval resampling the items
    (seeded; resamples without a gap left out). ``gap_closed`` is None where there is no gap to close; the three
    means are in points."""
    ids = sorted(set(floor) & set(ceiling) & set(channel))
    if not ids:
        return {"n": 0}
    rows = [(floor[i], ceiling[i], channel[i]) for i in ids]

    def share(sample):
        gap = sum(c - f for f, c, _ in sample)
        return sum(t - f for f, _, t in sample) / gap if gap else None

    rng = random.Random(0)
    values = sorted(v for v in (share([rng.choice(rows) for _ in rows]) for _ in range(draws)) if v is not None)
    closed = share(rows)
    mean = lambda k: round(100 * sum(row[k] for row in rows) / len(rows), 1)  # noqa: E731
    return {"n": len(ids), "floor": mean(0), "ceiling": mean(1), "channel": mean(2),
            "gap_closed": None if closed is None else round(closed, 4),
            "ci95": [round(values[int(0.025 * len(values))], 4), round(values[int(0.975 * len(values)) - 1], 4)]
            if closed is not None and values else None}
