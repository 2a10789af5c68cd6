"""Where the cloud's gain lies: what any confidence-ranked offload policy can achieve.

Offloading pays only on utterances the cloud gets right and the device gets
wrong; it loses on the reverse and is wasted where both are wrong (or both
right). Two figures say how much room a policy has before its curve is drawn:

* the **oracle** offload rate: offload exactly the utterances the cloud fixes,
  as few as reach the target accuracy — the floor for every policy;
* the **net gain per confidence bin** for each policy's signal: utterances
  sorted by the signal (least confident first) and cut into equal bins, each
  with the cloud's wins minus its losses. A signal whose gain sits in its first
  bins reaches the target with little offloading; gain spread evenly over the
  bins means the signal cannot tell fixable failures from hopeless ones.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import numpy as np

from pasu.device.calibration import auroc
from pasu.device.confidence import nothing_lost

BINS = 6


def oracle_offload_rate(
    local_right: Mapping[str, bool], cloud_right: Mapping[str, bool], target: float
) -> float | None:
    """The least offload rate that reaches ``target`` accuracy, offloading only the cloud's wins
    (None: even all of them fall short)."""
    n = len(local_right)
    if n == 0:
        return None
    need = max(0, math.ceil(target * n - 1e-9) - sum(local_right.values()))
    wins = sum(1 for u in local_right if cloud_right[u] and not local_right[u])
    return need / n if need <= wins else None


def gain_by_bins(
    signal: Mapping[str, float], local_right: Mapping[str, bool], cloud_right: Mapping[str, bool], bins: int = BINS
) -> list[dict]:
    """Utterances sorted by ``signal`` (lowest first) in ``bins`` equal bins: per bin the count,
    the local and cloud accuracy and the cloud's net gain (wins minus losses, utterances)."""
    utts = sorted(signal, key=lambda u: signal[u])
    out = []
    for k, part in enumerate(np.array_split(np.array(utts, dtype=object), bins)):
        part = list(part)
        if not part:
            continue
        loc = sum(local_right[u] for u in part)
        cld = sum(cloud_right[u] for u in part)
        out.append(
            {
                "bin": k + 1,
                "n": len(part),
                "local_accuracy": loc / len(part),
                "cloud_accuracy": cld / len(part),
                "net_gain": int(cld - loc),
            }
        )
    return out


def gain_report(
    records: Mapping[str, dict],
    correct: Callable[[str, str], bool],
    confidences: Mapping[str, list[tuple[float, float, int]]],
    target: float,
    min_pilots: int,
    bins: int = BINS,
) -> dict:
    """The oracle rate and the gain per bin of the baseline's signal (the stock decode's score
    per token), pasu's final-pass confidence and pasu's least confident pilot (from ``min_pilots``
    on; the final pass where there is none). ``confidences``: ``sweep.pilot_confidences``."""

    def text(nbest: list[dict]) -> str:
        return nbest[0]["text"] if nbest else ""

    pasu_right = {u: correct(u, text(r["device"]["final"]["nbest"])) for u, r in records.items()}
    stock_right = {u: correct(u, r["stock"]["text"]) for u, r in records.items()}
    cloud_right = {u: correct(u, r["cloud"]["text"]) for u, r in records.items()}
    final = {u: next(c for _, c, k in steps if k == 0) for u, steps in confidences.items()}
    pilot = {u: min([c for _, c, k in steps if k >= min_pilots] or [final[u]]) for u, steps in confidences.items()}
    stock = {u: r["stock"]["score_per_token"] for u, r in records.items()}
    signals = {  # name -> (signal, what the device answers when it keeps the utterance)
        "baseline_eou (stock score per token)": (stock, stock_right),
        "pasu final confidence": (final, pasu_right),
        "pasu least confident pilot": (pilot, pasu_right),
    }
    return {
        "oracle_offload_rate": oracle_offload_rate(pasu_right, cloud_right, target),
        "cloud_wins": sum(1 for u in records if cloud_right[u] and not pasu_right[u]),
        "cloud_losses": sum(1 for u in records if pasu_right[u] and not cloud_right[u]),
        "gain_by_bin": {name: gain_by_bins(sig, right, cloud_right, bins) for name, (sig, right) in signals.items()},
        # how well each signal ranks the device's own failures (0.5: not at all)
        "auroc": {
            name: auroc(np.array([sig[u] for u in records]), np.array([right[u] for u in records]))
            for name, (sig, right) in signals.items()
        },
        # ... and the cloud's wins, the only failures offloading fixes (what --label cloud trains for)
        "auroc_cloud_wins": {
            name: auroc(
                np.array([sig[u] for u in records]), np.array([nothing_lost(right[u], cloud_right[u]) for u in records])
            )
            for name, (sig, right) in signals.items()
        },
    }
