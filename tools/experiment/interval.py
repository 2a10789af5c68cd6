"""How sure the headline is: a bootstrap over utterances.

The headline — the offload rate each policy needs to reach the cloud-only
accuracy minus 0.5 points — is read where a flat curve crosses a line a few
utterances below its end, so a handful of utterances move it: on 600 of
test_hard one utterance is 0.17 points, and the target sits 3 utterances under
the cloud. Researchers comparing runs (or pairs) need to know how far a figure
could move on another draw of the same kind of data. Each resample draws the
utterances with replacement and recomputes, on the *same* thresholds, every
curve, the target and both rates; the interval is the resamples' percentile
interval.

Vectorised: a policy's operating points are a matrix of per-utterance
correctness (thresholds x utterances); a resample is a vector of counts per
utterance, so every curve on every resample is one matrix product.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pasu.tools.experiment.report import TARGET_MARGIN
from pasu.tools.experiment.sweep import Point

TARGET_RATIO = 2.0  # the paper's figure, the target


@dataclass(frozen=True)
class IntervalOptions:
    resamples: int = 1000
    seed: int = 0
    target_margin: float = TARGET_MARGIN  # the headline's


def _curve(points: list[Point], policy: str) -> tuple[np.ndarray, np.ndarray]:
    """(correct, offloaded): float matrices, one row per operating point of ``policy``."""
    ps = [p for p in points if p.policy == policy]
    return (np.array([p.correct for p in ps], dtype=np.float64), np.array([p.offloaded for p in ps], dtype=np.float64))


def rates_needed(
    points: list[Point], network: str, counts: np.ndarray, margin: float = TARGET_MARGIN
) -> tuple[np.ndarray, np.ndarray]:
    """Offload rates the baseline and pasu need on each resample (rows of ``counts``: how often
    each utterance is drawn); NaN where no operating point reaches the target.

    With ``counts`` all ones (the utterances as they are) this is the headline's own figure.
    """
    at = [p for p in points if p.network == network]
    counts = np.atleast_2d(np.asarray(counts, dtype=np.float64))
    n = counts.sum(axis=1)  # [B]
    cloud_ok, _ = _curve(at, "cloud")
    target = (cloud_ok @ counts.T)[0] / n - margin  # [B]
    base, pasu = (least_rate(*_curve(at, policy), counts, target) for policy in ("baseline_eou", "pasu_offramp"))
    return base, pasu


def least_rate(
    correct: np.ndarray,
    offloaded: np.ndarray,
    counts: np.ndarray,
    target: np.ndarray,
    on_time: np.ndarray | None = None,
    min_on_time: float = 0.0,
) -> np.ndarray:
    """Per resample (rows of ``counts``), the least offload rate over the operating points
    (rows of the matrices) whose accuracy reaches ``target`` (and whose on-time rate reaches
    ``min_on_time``, where ``on_time`` is given); NaN where none does."""
    n = counts.sum(axis=1)
    acc = (correct @ counts.T) / n  # [T, B]
    rate = (offloaded @ counts.T) / n
    reach = acc >= target - 1e-12
    if on_time is not None:
        reach &= (on_time @ counts.T) / n >= min_on_time - 1e-12
    best = np.where(reach, rate, np.inf).min(axis=0)
    return np.where(np.isfinite(best), best, np.nan)


def percentile_interval(x: np.ndarray) -> list[float | None] | None:
    """The 95% percentile interval of the finite-or-inf values (NaN: no figure on that resample)."""
    x = x[~np.isnan(x)]
    if not len(x):
        return None
    lo, hi = np.quantile(x, [0.025, 0.975], method="nearest")
    return [float(v) if np.isfinite(v) else None for v in (lo, hi)]  # None: unbounded (JSON has no inf)


def ratio_of(base: np.ndarray, pasu: np.ndarray) -> np.ndarray:
    """baseline / pasu; inf where pasu needs no offloading and the baseline does, NaN where neither does."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(pasu > 0, base / np.where(pasu > 0, pasu, 1.0), np.where(base > 0, np.inf, np.nan))


def headline_interval(points: list[Point], network: str, options: IntervalOptions = IntervalOptions()) -> dict:
    """Percentile intervals of both offload rates and their ratio; how often the ratio reaches 2x,
    and how often pasu needs less offloading than the baseline at all."""
    n = len(next(p for p in points if p.network == network).correct)
    rng = np.random.default_rng(options.seed)
    counts = rng.multinomial(n, np.full(n, 1.0 / n), size=options.resamples)
    base, pasu = rates_needed(points, network, counts, options.target_margin)
    ratio = ratio_of(base, pasu)

    interval = percentile_interval
    ok = ratio[~np.isnan(ratio)]
    both = ~np.isnan(base) & ~np.isnan(pasu)
    return {
        "offload_rate_baseline_ci95": interval(base),
        "offload_rate_pasu_ci95": interval(pasu),
        "offload_ratio_ci95": interval(ratio),
        "offload_ratio_share_reaching_2x": float(np.mean(ok >= TARGET_RATIO)) if len(ok) else None,
        # the paired question: does pasu need less offloading than the baseline on this kind of data?
        "pasu_below_baseline_share": float(np.mean(pasu[both] < base[both])) if both.any() else None,
        "bootstrap_resamples": options.resamples,
    }
