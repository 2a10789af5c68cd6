"""The offramp's step features, and the estimator interface the agent scores them with.

numpy and rapidfuzz only: the torch estimator (:mod:`pasu.device.confidence`) and the
exported one on onnxruntime (:mod:`pasu.device.onnx_confidence`) read the same
vectors, so both runtimes decide on the same numbers.

Features are defined per *step* — each pilot, then the final pass — from what
that step has: its n-best (per-scorer scores per token, margin), how it agrees
with the previous step, how much audio was heard.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
from rapidfuzz.distance import Levenshtein

from pasu.streaming.commit import common_prefix

if TYPE_CHECKING:
    from pasu.decoding.backend import NBestEntry
    from pasu.streaming.session import FinalResult, PilotRecord

#: One step's features, in the order of the vector. Final-only features are 0 at pilots.
FEATURES: tuple[str, ...] = (
    "score_per_token",
    "decoder_per_token",
    "ctc_per_token",
    "nbest_margin",
    "n_tokens",
    "audio_s",
    "tokens_per_s",
    "agreement_prev",  # 1 - edit distance to the previous step's best / length
    "stability_prev",  # common prefix with the previous step's best / length
    "mean_agreement",  # agreement_prev averaged over the steps so far
    "n_pilots",
    "is_final",
    "ctc_attention_agreement",  # final only: CTC greedy vs the attention best
)
#: The features that mean the same on sentences unlike the training ones: the
#: decoder's and CTC's scores per token and the n-best margin. Length and pilot
#: counts (n_tokens, audio_s, tokens_per_s, n_pilots) and agreement between
#: pilots follow the sentence's shape, which held-out templates change: an
#: estimator that leans on them is confident in the wrong places (docs/experiments).
SCORE_FEATURES: tuple[str, ...] = ("score_per_token", "decoder_per_token", "ctc_per_token", "nbest_margin", "is_final")
SEQ_LEN = 8  # steps the CNN sees (most recent last; zero-padded in front)
MARGIN_CAP = 10.0  # a single hypothesis has an "infinite" margin: capped
FORMAT = "pasu-confidence/1"
#: The estimator trained for a model ships in the model's dir under this name.
SHIPPED_NAME = "confidence.pt"
#: The untrained default (a logistic regression on raw features): high per-token scores,
#: stable pilots and a clear n-best margin mean confident. Unnamed features weigh 0.
PRIOR_WEIGHTS: dict[str, float] = {
    "score_per_token": 4.0,
    "agreement_prev": 1.0,
    "nbest_margin": 0.15,
    "ctc_attention_agreement": 1.0,
}
PRIOR_BIAS = -0.7


class Estimator(Protocol):
    """What the agent asks of a confidence estimator, whatever runs it."""

    @property
    def rejection_threshold(self) -> float | None: ...

    def score(self, tracker: FeatureTracker) -> float:
        """P(the final answer is right) at the tracker's latest step."""
        ...


def nothing_lost(device_right: bool, cloud_right: bool) -> bool:
    """What an estimator trained with ``--label cloud`` predicts: keeping the device's
    answer loses nothing unless the cloud is right where the device is wrong."""
    return device_right or not cloud_right


def feature_set(spec: str | Sequence[str]) -> tuple[str, ...]:
    """The features an estimator uses, as named: ``all``, ``scores``
    (:data:`SCORE_FEATURES`), a comma-separated string or a sequence of names."""
    if isinstance(spec, str):
        spec = {"all": FEATURES, "scores": SCORE_FEATURES}.get(spec) or [f.strip() for f in spec.split(",")]
    uses = [f for f in spec if f]
    unknown = sorted(set(uses) - set(FEATURES))
    if unknown or not uses:
        raise ValueError(
            f"features to use: unknown features {unknown}; use all, scores or some of {', '.join(FEATURES)}"
        )
    return tuple(uses)


def step_features(
    nbest: Sequence[NBestEntry],
    audio_s: float,
    previous: Sequence[list[int]],
    n_pilots: int,
    final: bool = False,
    ctc_attention_agreement: float = 0.0,
) -> np.ndarray:
    """One step's feature vector (``FEATURES`` order); ``previous`` are earlier steps' best token ids."""
    best = nbest[0] if nbest else None
    n = max(1, len(best.token_ids)) if best else 1
    ids = best.token_ids if best else []

    def agreement(a: list[int], b: list[int]) -> float:
        return 1.0 - min(1.0, Levenshtein.distance(a, b) / max(len(a), len(b), 1))

    agree = agreement(previous[-1], ids) if previous else 0.0
    history = [agreement(previous[i - 1], previous[i]) for i in range(1, len(previous))] + ([agree] if previous else [])
    f = {
        "score_per_token": best.score / n if best else -10.0,
        "decoder_per_token": best.scores.get("decoder", 0.0) / n if best else -10.0,
        "ctc_per_token": best.scores.get("ctc", 0.0) / n if best else -10.0,
        "nbest_margin": min(MARGIN_CAP, best.score - nbest[1].score) if best and len(nbest) > 1 else MARGIN_CAP,
        "n_tokens": float(len(ids)),
        "audio_s": float(audio_s),
        "tokens_per_s": len(ids) / max(audio_s, 0.1),
        "agreement_prev": agree,
        "stability_prev": len(common_prefix([previous[-1], ids])) / n if previous else 0.0,
        "mean_agreement": float(np.mean(history)) if history else 0.0,
        "n_pilots": float(n_pilots),
        "is_final": 1.0 if final else 0.0,
        "ctc_attention_agreement": float(ctc_attention_agreement) if final else 0.0,
    }
    v = np.array([f[k] for k in FEATURES], dtype=np.float32)
    return np.nan_to_num(v, nan=0.0, posinf=MARGIN_CAP, neginf=-10.0 * MARGIN_CAP)


class FeatureTracker:
    """Step features of one segment as its pilots come in, then its final pass."""

    def __init__(self) -> None:
        self.steps: list[np.ndarray] = []
        self._bests: list[list[int]] = []
        self._pilots = 0

    def pilot(self, record: PilotRecord) -> np.ndarray:
        v = step_features(record.nbest, record.audio_s, self._bests, self._pilots + 1)
        self._add(v, record.nbest)
        self._pilots += 1
        return v

    def final(self, result: FinalResult) -> np.ndarray:
        v = step_features(
            result.nbest,
            result.features.get("audio_s", 0.0),
            self._bests,
            self._pilots,
            final=True,
            ctc_attention_agreement=result.features.get("ctc_attention_agreement", 0.0),
        )
        self._add(v, result.nbest)
        return v

    def _add(self, v: np.ndarray, nbest: Sequence[NBestEntry]) -> None:
        self.steps.append(v)
        if nbest:
            self._bests.append(list(nbest[0].token_ids))

    def sequence(self) -> np.ndarray:
        """The last ``SEQ_LEN`` steps (SEQ_LEN, F), zero-padded in front."""
        return pad_sequence(self.steps)


def pad_sequence(steps: Sequence[np.ndarray]) -> np.ndarray:
    out = np.zeros((SEQ_LEN, len(FEATURES)), dtype=np.float32)
    recent = list(steps)[-SEQ_LEN:]
    if recent:
        out[SEQ_LEN - len(recent) :] = np.stack(recent)
    return out


def meta_path(path: Path) -> Path:
    """An estimator's metadata file: ``path`` + ``.json``."""
    return path.with_name(path.name + ".json")
