"""An exported device model (``pasu export``): its manifest and one onnxruntime session per graph.

Imports numpy and onnxruntime only, never torch or ESPnet: this is what a phone-sized
install runs.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from pasu.digest import file_sha256

log = logging.getLogger(__name__)

FORMAT = "pasu-onnx/1"


class LiteModelError(ValueError):
    """An export directory that is missing, of another format, or whose files do not match."""


@dataclass(frozen=True)
class LiteOptions:
    """How to run the graphs.

    Attributes:
        threads: onnxruntime intra-op threads per session.
        prefer_ort: load the ORT-format copies (``*.ort``) where the export has them.
        verify: check every graph file's SHA-256 against the manifest on load.
    """

    threads: int = 1
    prefer_ort: bool = False
    verify: bool = True


class LiteModel:
    """The manifest plus lazily created sessions; ``run(name, **inputs)`` returns the graph's outputs."""

    def __init__(self, path: str | Path, options: LiteOptions = LiteOptions()) -> None:
        self.root = Path(path)
        manifest = self.root / "manifest.json"
        if not manifest.is_file():
            raise LiteModelError(f"{self.root}: no manifest.json (make one with `pasu export`)")
        self.manifest: dict[str, Any] = json.loads(manifest.read_text())
        if self.manifest.get("format") != FORMAT:
            raise LiteModelError(f"{manifest}: not a {FORMAT} export (format={self.manifest.get('format')!r})")
        self.options = options
        self._sessions: dict[str, ort.InferenceSession] = {}
        self._lock = threading.Lock()  # sessions are created once, even when threads race for one
        if options.verify:
            for name, digest in self.manifest["sha256"].items():
                if file_sha256(self.root / name) != digest:
                    raise LiteModelError(f"{self.root / name}: checksum differs from the manifest")

    @property
    def tokens(self) -> list[str]:
        return self.manifest["tokens"]

    def has(self, graph: str) -> bool:
        return graph in self.manifest["graphs"]

    def session(self, graph: str) -> ort.InferenceSession:
        if graph in self._sessions:
            return self._sessions[graph]
        with self._lock:
            return self._create(graph)

    def _create(self, graph: str) -> ort.InferenceSession:
        if graph not in self._sessions:
            if not self.has(graph):
                raise LiteModelError(f"{self.root}: the export has no {graph} graph")
            entry = self.manifest["graphs"][graph]
            file = entry.get("ort") if self.options.prefer_ort and entry.get("ort") else entry["file"]
            so = ort.SessionOptions()
            so.intra_op_num_threads = self.options.threads
            so.inter_op_num_threads = 1
            self._sessions[graph] = ort.InferenceSession(
                str(self.root / file), sess_options=so, providers=["CPUExecutionProvider"]
            )
        return self._sessions[graph]

    def run(self, graph: str, **inputs: np.ndarray) -> list[np.ndarray]:
        return self.session(graph).run(None, inputs)  # type: ignore[return-value]
