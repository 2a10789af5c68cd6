"""How good a confidence estimator is: ECE, AUROC, Brier score, reliability diagram."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np


def ece(probs: np.ndarray, labels: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error: bin-size-weighted |accuracy − mean confidence| over equal-width bins."""
    p, y = np.asarray(probs, float), np.asarray(labels, float)
    if p.size == 0:
        return float("nan")
    idx = np.minimum((p * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            total += m.sum() / p.size * abs(y[m].mean() - p[m].mean())
    return float(total)


def auroc(probs: np.ndarray, labels: np.ndarray) -> float | None:
    """Area under the ROC curve (Mann–Whitney, ties counted half); None with a single class."""
    p, y = np.asarray(probs, float), np.asarray(labels).astype(bool)
    pos, neg = p[y], p[~y]
    if pos.size == 0 or neg.size == 0:
        return None
    order = np.argsort(np.concatenate([pos, neg]), kind="mergesort")
    values = np.concatenate([pos, neg])[order]
    ranks = np.empty(values.size)
    i = 0
    while i < values.size:  # average ranks of ties
        j = i
        while j + 1 < values.size and values[j + 1] == values[i]:
            j += 1
        ranks[i : j + 1] = (i + j) / 2 + 1
        i = j + 1
    r = np.empty(values.size)
    r[order] = ranks
    u = r[: pos.size].sum() - pos.size * (pos.size + 1) / 2
    return float(u / (pos.size * neg.size))


def brier(probs: np.ndarray, labels: np.ndarray) -> float:
    p, y = np.asarray(probs, float), np.asarray(labels, float)
    return float(np.mean((p - y) ** 2)) if p.size else float("nan")


def report(probs: np.ndarray, labels: np.ndarray, bins: int = 10) -> dict:
    a = auroc(probs, labels)
    e = ece(probs, labels, bins)
    return {
        "n": int(np.asarray(probs).size),
        "positives": int(np.asarray(labels).sum()),
        "ece": None if math.isnan(e) else round(e, 4),
        "auroc": None if a is None else round(a, 4),
        "brier": round(brier(probs, labels), 4) if np.asarray(probs).size else None,
        "accuracy_at_0.5": round(float(np.mean((np.asarray(probs) >= 0.5) == np.asarray(labels).astype(bool))), 4)
        if np.asarray(probs).size
        else None,
    }


def reliability_diagram(
    probs: np.ndarray, labels: np.ndarray, path: str | Path, bins: int = 10, title: str = "confidence estimator"
) -> Path:
    """Accuracy per confidence bin against the diagonal, with the bin counts below (PNG)."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display (servers, CI)
    import matplotlib.pyplot as plt

    p, y = np.asarray(probs, float), np.asarray(labels, float)
    edges = np.linspace(0, 1, bins + 1)
    idx = np.minimum((p * bins).astype(int), bins - 1)
    acc = [y[idx == b].mean() if (idx == b).any() else np.nan for b in range(bins)]
    conf = [p[idx == b].mean() if (idx == b).any() else np.nan for b in range(bins)]
    counts = [int((idx == b).sum()) for b in range(bins)]
    fig, (ax, axc) = plt.subplots(2, 1, figsize=(4.5, 5.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    centers = (edges[:-1] + edges[1:]) / 2
    ax.bar(centers, np.nan_to_num(acc), width=1 / bins, edgecolor="black", alpha=0.7, label="accuracy")
    ax.plot(conf, acc, "o", color="tab:red", label="mean confidence")
    ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    ax.set_ylim(0, 1)
    ax.set_ylabel("fraction right")
    ax.set_title(f"{title} (ECE {ece(p, y, bins):.3f})")
    ax.legend(loc="upper left", fontsize=8)
    axc.bar(centers, counts, width=1 / bins, edgecolor="black", color="tab:gray")
    axc.set_xlabel("predicted P(right)")
    axc.set_ylabel("count")
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
