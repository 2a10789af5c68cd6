"""One attention-decoder step on onnxruntime, its key/value cache held by the caller.

``begin(enc)`` projects the encoder output once per utterance; ``step`` scores the
next token of N hypotheses and returns their grown caches. A search keeps the rows
it selects with ``reorder`` (the parent index of each surviving hypothesis).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pasu.lite.model import LiteModel


@dataclass
class DecoderState:
    """Per-utterance source keys/values and the running hypotheses' self-attention cache."""

    src_k: np.ndarray  # (layers, 1, heads, T, d_k)
    src_v: np.ndarray
    k: np.ndarray  # (layers, N, heads, L, d_k)
    v: np.ndarray

    def reorder(self, parents: np.ndarray) -> DecoderState:
        """Keep (and duplicate) cache rows: row i of the result is row ``parents[i]``."""
        return DecoderState(self.src_k, self.src_v, self.k[:, parents], self.v[:, parents])


class LiteDecoder:
    def __init__(self, model: LiteModel) -> None:
        self.model = model
        d = model.manifest["decoder"]
        self.layers, self.heads, self.d_k = int(d["layers"]), int(d["heads"]), int(d["d_k"])
        self.sos, self.eos = int(model.manifest["sos"]), int(model.manifest["eos"])

    def begin(self, enc: np.ndarray, rows: int = 1) -> DecoderState:
        """State for ``rows`` empty hypotheses over encoder output ``enc`` (T, D)."""
        src_k, src_v = self.model.run("decoder_source", enc=np.ascontiguousarray(enc[None], dtype=np.float32))
        empty = np.zeros((self.layers, rows, self.heads, 0, self.d_k), dtype=np.float32)
        return DecoderState(src_k, src_v, empty, empty.copy())

    def step(self, state: DecoderState, tokens: np.ndarray, position: int) -> tuple[np.ndarray, DecoderState]:
        """Log-probs (N, V) of the token after ``tokens`` (N,), the newest token at ``position``."""
        if position < 0:
            raise ValueError(f"position {position} < 0")
        logp, k, v = self.model.run(
            "decoder_step",
            token=np.asarray(tokens, dtype=np.int64).reshape(-1),
            position=np.array([position], dtype=np.int64),
            k=state.k,
            v=state.v,
            src_k=state.src_k,
            src_v=state.src_v,
        )
        return logp, DecoderState(state.src_k, state.src_v, k, v)
