"""The offramp's estimator on the torch-free runtime: the export's ``confidence`` graph.

``pasu export`` writes the trained estimator (normalization, feature mask and sigmoid
included) as one graph, ``features (B, F) [, sequence (B, SEQ_LEN, F)] -> P(right) (B,)``,
and its settings under the manifest's ``confidence`` key. The step features are the
torch runtime's own (:mod:`pasu.device.features`), so both runtimes score the same
vectors. An export without an estimator gets the same uncalibrated prior as the torch path.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from pasu.device.features import FEATURES, MARGIN_CAP, PRIOR_BIAS, PRIOR_WEIGHTS, SEQ_LEN, FeatureTracker

if TYPE_CHECKING:
    from pasu.lite.model import LiteModel

log = logging.getLogger(__name__)

GRAPH = "confidence"


class OnnxConfidence:
    """A trained estimator exported with the model; ``score`` runs its graph on the latest step."""

    def __init__(self, model: LiteModel) -> None:
        meta: dict[str, Any] | None = model.manifest.get(GRAPH)
        if meta is None or not model.has(GRAPH):
            raise ValueError(f"{model.root}: the export has no confidence estimator")
        if list(meta.get("features", [])) != list(FEATURES):
            raise ValueError(
                f"{model.root}: its estimator reads {meta.get('features')}, this pasu computes {list(FEATURES)}"
            )
        if int(meta.get("seq_len", SEQ_LEN)) != SEQ_LEN or float(meta.get("margin_cap", MARGIN_CAP)) != MARGIN_CAP:
            raise ValueError(f"{model.root}: its estimator was exported with other feature settings")
        self.model = model
        self.kind = str(meta["kind"])
        self.meta = meta
        inputs = {i["name"] for i in model.manifest["graphs"][GRAPH]["inputs"]}
        self._wants_sequence = "sequence" in inputs

    @property
    def rejection_threshold(self) -> float | None:
        t = self.meta.get("rejection_threshold")
        return None if t is None else float(t)

    def predict(self, features: np.ndarray, sequence: np.ndarray | None = None) -> float:
        """P(right) for one step's feature vector (and the recent steps, for a cnn)."""
        inputs = {"features": np.asarray(features, dtype=np.float32).reshape(1, -1)}
        if self._wants_sequence:
            if sequence is None:
                raise ValueError("the cnn estimator needs the step sequence")
            inputs["sequence"] = np.asarray(sequence, dtype=np.float32)[None]
        return float(np.asarray(self.model.run(GRAPH, **inputs)[0]).reshape(-1)[0])

    def score(self, tracker: FeatureTracker) -> float:
        if not tracker.steps:
            return 0.0
        return self.predict(tracker.steps[-1], tracker.sequence() if self._wants_sequence else None)


class PriorConfidence:
    """The built-in untrained prior (:data:`pasu.device.features.PRIOR_WEIGHTS`) in numpy."""

    rejection_threshold: float | None = None

    def __init__(self) -> None:
        self._w = np.array([PRIOR_WEIGHTS.get(f, 0.0) for f in FEATURES], dtype=np.float64)

    def score(self, tracker: FeatureTracker) -> float:
        if not tracker.steps:
            return 0.0
        z = float(self._w @ tracker.steps[-1].astype(np.float64)) + PRIOR_BIAS
        return float(1.0 / (1.0 + np.exp(-z)))


def export_estimator(model: LiteModel) -> OnnxConfidence | PriorConfidence:
    """The estimator exported with the model, else the prior (with a warning, as the torch path)."""
    if model.has(GRAPH) and model.manifest.get(GRAPH):
        log.info("confidence estimator: %s (%s)", model.root / model.manifest["graphs"][GRAPH]["file"], GRAPH)
        return OnnxConfidence(model)
    log.warning("the export has no confidence estimator; using the uncalibrated built-in prior")
    return PriorConfidence()
