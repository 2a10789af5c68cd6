#!/usr/bin/env python3
"""Which confidence estimator ranks the cloud's wins? K-fold cross-validation by utterance.

For every training label (intent, cloud), feature set (scores, all) and kind
(logistic, mlp), fits on K-1 folds of the pooled calibration dirs and scores the
held-out fold on the *cloud* label (0 = the cloud gets the intent right and the
device does not: what an offload gains), as AUROC of the final step and of the
least confident pilot from the second on (what pasu's offramps act on); then,
fitted on everything, the same on a test dir. Decodes come from
``pasu device train-confidence --cache`` (the same cache dir), so a run after
one such call takes seconds per configuration.

Usage: .venv/bin/python scripts/estimator_cv.py --data data/synth/calib --data data/synth_novel/calib \
           --test data/synth/test_hard --cache exp/confcache [--cloud DIR] [--device DIR] [--folds 4]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from pasu.device.calibration import auroc
from pasu.device.confidence import FEATURES, SCORE_FEATURES
from pasu.model_store import resolve_model
from pasu.models import load_model
from pasu.tools.train.confidence import Examples, TrainOptions, collect_cached, fit, label, read_data_dir


def per_utterance(ex: Examples, p: np.ndarray, how: str) -> tuple[np.ndarray, np.ndarray]:
    """(signal, cloud label) per utterance: the final step's, or the least confident pilot's from the 2nd on."""
    sig, y = [], []
    for u in np.unique(ex.utt):
        m = ex.utt == u
        steps = p[m]
        sig.append(steps[-1] if how == "final" else (steps[1:-1].min() if steps.size > 2 else steps[-1]))
        y.append(ex.y[m][0])
    return np.array(sig), np.array(y)


def aurocs(est, ex: Examples) -> dict[str, float]:
    p = est.predict_many(ex.X, ex.seqs if est.net.kind == "cnn" else None)
    return {how: round(auroc(*per_utterance(ex, p, how)), 3) for how in ("final", "pilot")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", action="append", required=True)
    ap.add_argument("--test", required=True)
    ap.add_argument("--cache", required=True)
    ap.add_argument("--device", default=None)
    ap.add_argument("--cloud", default=None)
    ap.add_argument("--folds", type=int, default=4)
    args = ap.parse_args()
    device = load_model(resolve_model(args.device, "device"))
    cloud = load_model(resolve_model(args.cloud, "cloud"))
    base = TrainOptions(label="cloud")
    pooled = Examples.concat(
        [collect_cached(device, read_data_dir(d), base, Path(args.cache), cloud=cloud) for d in args.data]
    )
    test = collect_cached(device, read_data_dir(args.test), base, Path(args.cache), cloud=cloud)
    fold = np.random.default_rng(0).permutation(len(pooled.utt_ids)) % args.folds
    print(
        f"cloud wins: {int((pooled.y[pooled.final] == 0).sum())} of {len(pooled.utt_ids)} pooled, "
        f"{int((test.y[test.final] == 0).sum())} of {len(test.utt_ids)} in {args.test}"
    )
    for lab in ("intent", "cloud"):
        train_on = label(pooled, lab) if lab == "intent" else pooled
        for feats, uses in (("scores", SCORE_FEATURES), ("all", FEATURES)):
            for kind in ("logistic", "mlp"):
                opts = replace(base, label=lab, kind=kind, features=uses)
                cv = [
                    aurocs(fit(train_on.take(fold[train_on.utt] != k), opts), pooled.take(fold[pooled.utt] == k))
                    for k in range(args.folds)
                ]
                row = {
                    "label": lab,
                    "features": feats,
                    "kind": kind,
                    **{f"cv_{h}": round(float(np.mean([c[h] for c in cv])), 3) for h in ("final", "pilot")},
                    **{f"test_{h}": v for h, v in aurocs(fit(train_on, opts), test).items()},
                }
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
