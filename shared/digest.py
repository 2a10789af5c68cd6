"""SHA-256 digests: of a file (one definition for every place that keys, checks or records a file
by its contents: model caches, export manifests, checkpoints shipped in parts) and of a token list.

Imports nothing heavier than hashlib, so the torch-free runtime (:mod:`pasu.lite`) uses it too.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of the file's bytes, read in blocks (a model file need not fit in memory twice)."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def token_list_id(token_list: Sequence[str]) -> str:
    """SHA-256 of the tokens, one a line: two models with the same id mean the same token ids.

    Device and cloud exchange token ids only when their ids match (``ModelInfo.token_list_id``)."""
    return hashlib.sha256("".join(f"{t}\n" for t in token_list).encode("utf-8")).hexdigest()
