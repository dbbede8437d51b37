"""Paired significance of per-user metrics: is model A better than model B on the same test users?

:func:`compare_paired` takes per-user values of two models (each seed-averaged per user, see
:func:`seed_average`) on the same users and returns the mean difference, its paired bootstrap 95%
confidence interval (users resampled with replacement), the Wilcoxon signed-rank p-value when
scipy is installed, and a verdict from the interval alone: ``better`` (the whole interval above 0),
``worse`` (below 0) or ``tie`` (it contains 0).
"""

from typing import Dict, Optional, Sequence

import numpy as np

BOOTSTRAP_SAMPLES = 10000
BOOTSTRAP_SEED = 0
CONFIDENCE = 0.95
EXACT_TIE = 1e-12  # per-user differences this small are float noise of seed averaging, counted as 0


def seed_average(per_seed: Sequence[dict], protocol: str) -> Optional[Dict[str, float]]:
    """``{user: mean over seeds}`` of the per-user values of several runs (``{"users": [...], protocol: [...]}``).

    Only users present in every run count (the same test users for every seed on the same data);
    None when no run has per-user values.
    """
    runs = [dict(zip(run["users"], run[protocol])) for run in per_seed if run and protocol in run]
    if not runs:
        return None
    users = set(runs[0]).intersection(*runs[1:])
    return {user: float(np.mean([run[user] for run in runs])) for user in sorted(users)}


def paired_arrays(a: Dict[str, float], b: Dict[str, float]):
    """The values of ``a`` and ``b`` on their common users, in one order."""
    users = sorted(set(a) & set(b))
    return np.array([a[user] for user in users], dtype=np.float64), np.array([b[user] for user in users], dtype=np.float64)


def bootstrap_ci(differences, samples: int = BOOTSTRAP_SAMPLES, confidence: float = CONFIDENCE, seed: int = BOOTSTRAP_SEED):
    """Percentile bootstrap interval of the mean of ``differences`` (resampling users)."""
    differences = np.asarray(differences, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = np.empty(samples)
    for start in range(0, samples, 1000):  # chunks keep memory flat for large user counts
        count = min(1000, samples - start)
        means[start:start + count] = differences[rng.integers(0, len(differences), size=(count, len(differences)))].mean(axis=1)
    tail = (1.0 - confidence) / 2.0
    return float(np.quantile(means, tail)), float(np.quantile(means, 1.0 - tail))


def wilcoxon_p(differences) -> Optional[float]:
    """Two-sided Wilcoxon signed-rank p-value (None without scipy; 1.0 when every difference is 0)."""
    differences = np.asarray(differences, dtype=np.float64)
    if not np.any(differences):
        return 1.0
    try:
        from scipy.stats import wilcoxon
    except ImportError:
        return None
    return float(wilcoxon(differences).pvalue)


def verdict(low: float, high: float) -> str:
    """``better`` / ``worse`` when the interval excludes 0, else ``tie``."""
    if low > 0:
        return "better"
    if high < 0:
        return "worse"
    return "tie"


# a better / worse claim needs this many seeds of each side (the benchmark's protocol); with fewer, a CI
# that excludes 0 is reported as a tie
MIN_CLAIM_SEEDS = 3


def seed_rule(result: Optional[dict], seeds: int) -> Optional[dict]:
    """``result`` (of :func:`compare_paired`) read under the seed rule: ``verdict`` becomes ``tie`` when the
    side with fewer seeds has fewer than :data:`MIN_CLAIM_SEEDS`; ``ci_verdict`` keeps the CI's own reading
    and ``seeds`` that smaller count. The CI does not see how far seeds spread, so two seeds cannot carry a claim."""
    if result is None:
        return None
    ruled = dict(result, ci_verdict=result["verdict"], seeds=seeds)
    if seeds < MIN_CLAIM_SEEDS:
        ruled["verdict"] = "tie"
    return ruled


def seeds_text(count: int) -> str:
    return f"{count} seed{'' if count == 1 else 's'}"


def verdict_text(result: dict) -> str:
    """The verdict for a table cell: ``tie (2 seeds)`` where the CI excludes 0 but the seed rule makes it a tie."""
    if result.get("ci_verdict", result["verdict"]) != result["verdict"]:
        return f"{result['verdict']} ({seeds_text(result['seeds'])})"
    return result["verdict"]


def compare_paired(a, b, samples: int = BOOTSTRAP_SAMPLES, seed: int = BOOTSTRAP_SEED) -> dict:
    """Model ``a`` against model ``b`` on paired per-user values (arrays of equal length).

    Returns ``{"users", "mean_a", "mean_b", "diff", "ci_low", "ci_high", "wilcoxon_p", "verdict"}``.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"paired per-user arrays must be 1-d, non-empty and of one length, got {a.shape} and {b.shape}")
    differences = a - b
    differences[np.abs(differences) < EXACT_TIE] = 0.0
    low, high = bootstrap_ci(differences, samples=samples, seed=seed)
    return {
        "users": int(len(a)),
        "mean_a": float(a.mean()),
        "mean_b": float(b.mean()),
        "diff": float(differences.mean()),
        "ci_low": low,
        "ci_high": high,
        "wilcoxon_p": wilcoxon_p(differences),
        "verdict": verdict(low, high),
    }
