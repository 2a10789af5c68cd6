"""The autoregression offramp: P(the device's final answer is right), from pilots on.

Features are defined per *step* — each pilot, then the final pass — from what
that step has: its n-best (per-scorer scores per token, margin), how it agrees
with the previous step, how much audio was heard. So the same estimator scores
pilot k (the early decision, before the user has finished) and the final
hypothesis (the last check), and it is trained on both, always against the
label of the *final* answer: the early question is "will the device get this
right?".

The model is small on purpose: logistic regression, a tiny MLP, or (``cnn``,
as in the PASU paper) a 1-D CNN over the sequence of recent step features plus
the current step. Weights are saved as a plain state dict (``torch.save``,
loaded with ``weights_only=True``) beside a JSON file with everything else.

This is the torch half; the features (:mod:`pasu.device.features`) are numpy-only, and
an exported estimator runs on onnxruntime (:mod:`pasu.device.onnx_confidence`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

# The features are numpy-only (the torch-free runtime computes them too); re-exported here,
# where the estimator's trainers and the exporter have always found them.
from pasu.device.features import FEATURES as FEATURES
from pasu.device.features import FORMAT as FORMAT
from pasu.device.features import MARGIN_CAP as MARGIN_CAP
from pasu.device.features import PRIOR_BIAS, PRIOR_WEIGHTS
from pasu.device.features import SCORE_FEATURES as SCORE_FEATURES
from pasu.device.features import SEQ_LEN as SEQ_LEN
from pasu.device.features import SHIPPED_NAME as SHIPPED_NAME
from pasu.device.features import FeatureTracker as FeatureTracker
from pasu.device.features import feature_set as feature_set
from pasu.device.features import meta_path as meta_path
from pasu.device.features import nothing_lost as nothing_lost
from pasu.device.features import pad_sequence as pad_sequence
from pasu.device.features import step_features as step_features

log = logging.getLogger(__name__)

Kind = Literal["logistic", "mlp", "cnn"]
KINDS: tuple[str, ...] = ("logistic", "mlp", "cnn")


class ConfidenceNet(nn.Module):
    """Normalized features → logit. ``cnn`` adds a 1-D CNN over the recent steps."""

    mean: torch.Tensor  # buffers, registered in __init__
    std: torch.Tensor
    mask: torch.Tensor

    def __init__(self, kind: Kind = "mlp", hidden: int = 16, channels: int = 8, uses: Sequence[str] = FEATURES) -> None:
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        F = len(FEATURES)
        self.kind = kind
        chosen = feature_set(uses)
        self.uses = tuple(f for f in FEATURES if f in chosen)
        self.register_buffer("mean", torch.zeros(F))
        self.register_buffer("std", torch.ones(F))
        # the feature vector stays FEATURES-wide; the features not used read as 0
        self.register_buffer("mask", torch.tensor([1.0 if f in self.uses else 0.0 for f in FEATURES]))
        extra = channels if kind == "cnn" else 0
        if kind == "logistic":
            self.head = nn.Linear(F, 1)
        else:
            self.head = nn.Sequential(nn.Linear(F + extra, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        if kind == "cnn":
            self.conv = nn.Sequential(nn.Conv1d(F, channels, kernel_size=3, padding=1), nn.ReLU())

    def forward(self, x: torch.Tensor, seq: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, F), seq (B, SEQ_LEN, F) → logits (B,)."""
        xn = (x - self.mean) / self.std * self.mask
        if self.kind == "cnn":
            if seq is None:
                raise ValueError("the cnn estimator needs the step sequence")
            present = (seq.abs().sum(-1, keepdim=True) > 0).float()  # padding stays 0 after normalizing
            sn = ((seq - self.mean) / self.std * self.mask * present).transpose(1, 2)
            pooled = self.conv(sn).amax(dim=2)
            xn = torch.cat([xn, pooled], dim=1)
        return self.head(xn).squeeze(-1)


@dataclass
class ConfidenceEstimator:
    """A trained (or hand-set) confidence model plus what it was trained on."""

    net: ConfidenceNet
    meta: dict = field(default_factory=dict)

    @torch.inference_mode()
    def predict(self, features: np.ndarray, sequence: np.ndarray | None = None) -> float:
        """P(right) for one step (``features`` from :func:`step_features`)."""
        x = torch.as_tensor(features, dtype=torch.float32).reshape(1, -1)
        s = torch.as_tensor(sequence, dtype=torch.float32).unsqueeze(0) if sequence is not None else None
        return float(torch.sigmoid(self.net.eval()(x, s))[0])

    @torch.inference_mode()
    def predict_many(self, X: np.ndarray, seqs: np.ndarray | None = None) -> np.ndarray:
        x = torch.as_tensor(X, dtype=torch.float32)
        s = torch.as_tensor(seqs, dtype=torch.float32) if seqs is not None else None
        return torch.sigmoid(self.net.eval()(x, s)).numpy()

    @property
    def rejection_threshold(self) -> float | None:
        """The final confidence below which an answer is "not understood", as calibrated
        for this estimator on held-out in-domain commands (``rejection`` in its metadata,
        written by ``pasu eval --rejection --calibrate``); None if it was never calibrated."""
        r = self.meta.get("rejection")
        return float(r["threshold"]) if isinstance(r, dict) and "threshold" in r else None

    def score(self, tracker: FeatureTracker) -> float:
        """P(right) at the tracker's latest step."""
        if not tracker.steps:
            return 0.0
        return self.predict(tracker.steps[-1], tracker.sequence() if self.net.kind == "cnn" else None)

    # -- construction ------------------------------------------------------
    @classmethod
    def from_weights(cls, weights: dict[str, float], bias: float, name: str = "fixed") -> ConfidenceEstimator:
        """Logistic regression on raw features with hand-set weights (unnamed features weigh 0)."""
        unknown = set(weights) - set(FEATURES)
        if unknown:
            raise ValueError(f"unknown features {sorted(unknown)}; known: {FEATURES}")
        net = ConfidenceNet("logistic")
        head = net.head
        assert isinstance(head, nn.Linear)  # a logistic net's head is one linear layer
        with torch.no_grad():
            head.weight.zero_()
            for k, w in weights.items():
                head.weight[0, FEATURES.index(k)] = float(w)
            head.bias.fill_(float(bias))
        return cls(net, {"format": FORMAT, "kind": "logistic", "name": name, "features": list(FEATURES)})

    @classmethod
    def prior(cls) -> ConfidenceEstimator:
        """An untrained, uncalibrated default: high per-token scores, stable pilots and a
        clear n-best margin mean confident. Train one for real decisions."""
        return cls.from_weights(PRIOR_WEIGHTS, bias=PRIOR_BIAS, name="prior")

    # -- files -------------------------------------------------------------
    def save(self, path: str | Path) -> tuple[Path, Path]:
        """``path`` (state dict) and ``path.json`` (metadata)."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        torch.save(self.net.state_dict(), p)
        meta = dict(
            self.meta,
            format=FORMAT,
            kind=self.net.kind,
            features=list(FEATURES),
            uses=list(self.net.uses),
            hidden=_hidden(self.net),
            channels=_channels(self.net),
        )
        j = meta_path(p)
        j.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        return p, j

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> ConfidenceEstimator:
        p = Path(path)
        j = meta_path(p)
        if not p.is_file() or not j.is_file():
            raise FileNotFoundError(f"a confidence estimator is {p} plus {j}; one is missing")
        meta = json.loads(j.read_text())
        if meta.get("format") != FORMAT:
            raise ValueError(f"{j}: not a {FORMAT} file (format={meta.get('format')!r})")
        if list(meta.get("features", [])) != list(FEATURES):
            raise ValueError(f"{j}: trained on features {meta.get('features')}, this pasu computes {list(FEATURES)}")
        net = ConfidenceNet(
            meta["kind"],
            hidden=meta.get("hidden") or 16,
            channels=meta.get("channels") or 8,
            uses=meta.get("uses") or FEATURES,
        )
        state = torch.load(p, map_location=device, weights_only=True)
        state.setdefault("mask", net.mask)  # estimators saved before feature selection use them all
        net.load_state_dict(state)
        return cls(net.eval(), meta)


def _hidden(net: ConfidenceNet) -> int | None:
    first = net.head[0] if isinstance(net.head, nn.Sequential) else None
    return first.out_features if isinstance(first, nn.Linear) else None


def _channels(net: ConfidenceNet) -> int | None:
    conv = net.conv[0] if net.kind == "cnn" else None
    return conv.out_channels if isinstance(conv, nn.Conv1d) else None


def estimator_for(model_root: str | Path, path: str | Path | None = None) -> ConfidenceEstimator:
    """``path`` if given, else the estimator shipped beside the model, else the prior.

    An estimator is calibrated for one model's answers, so the default follows
    the model: the shipped device model brings its own ``confidence.pt``.
    """
    if path is None and (Path(model_root) / SHIPPED_NAME).is_file():
        path = Path(model_root) / SHIPPED_NAME
        log.info("confidence estimator: %s", path)
    return load_estimator(path)


def load_estimator(path: str | Path | None) -> ConfidenceEstimator:
    """A trained estimator, or the built-in prior (with a warning) when ``path`` is None."""
    if path is None:
        log.warning("no confidence estimator given (--confidence); using the uncalibrated built-in prior")
        return ConfidenceEstimator.prior()
    return ConfidenceEstimator.load(path)
