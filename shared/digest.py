"""The SHA-256 of a file: one definition for every place that keys, checks or records a file
by its contents (model caches, export manifests, checkpoints shipped in parts).

Imports nothing heavier than hashlib, so the torch-free runtime (:mod:`pasu.lite`) uses it too.
"""

from __future__ import annotations

import hashlib
from pathlib import Path


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of the file's bytes, read in blocks (a model file need not fit in memory twice)."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()
