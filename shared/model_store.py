"""Where models come from: the shipped defaults, a path, or a tiny model built on demand.

No model is ever downloaded. The default device and cloud models are files in
``pasu/resources/models/{device,cloud}`` once the training recipe has produced
them; until then, commands that need *a* model say so, and the demo and the
benchmark fall back to a tiny model built from a config (clearly labelled).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from pasu.resources import MODELS

log = logging.getLogger(__name__)

ROLES = ("device", "cloud")


def cache_dir() -> Path:
    return Path(os.environ.get("PASU_CACHE", Path.home() / ".cache" / "pasu"))


def default_model_dir(role: str) -> Path | None:
    """The shipped model for ``role``, or None if this checkout has none yet."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    d = MODELS / role
    return d if (d / "config.yaml").is_file() else None


def tiny_model_dir(kind: str = "conformer", seed: int = 0) -> Path:
    """A tiny model with seeded random weights, built once into the cache."""
    from pasu.tools.tiny import TinyModelOptions, build_tiny_model

    d = cache_dir() / "models" / f"tiny-{kind}-seed{seed}"
    if not (d / "model.pth").is_file():
        build_tiny_model(d, TinyModelOptions(kind=kind, seed=seed))
    return d


def resolve_model(spec: str | None, role: str = "device") -> Path:
    """``--model`` as users give it: a path, ``tiny`` / ``tiny:branchformer``, or None (default)."""
    if spec is None:
        d = default_model_dir(role)
        if d is None:
            log.warning("no default %s model shipped in this checkout; using a tiny untrained model", role)
            return tiny_model_dir()
        return d
    if spec == "tiny" or spec.startswith("tiny:"):
        return tiny_model_dir(spec.partition(":")[2] or "conformer")
    return Path(spec)
