"""The late-context encoder on onnxruntime: local blocks per chunk as audio arrives, attention when asked.

The same streaming schedule as :class:`pasu.encoders.IncrementalEncoder`: ``feed``
runs the front end, the subsampling and the local blocks on the new audio only;
``encode`` finishes the few not-yet-final tail frames as if the audio ended now
(their state is thrown away) and runs the attention blocks over everything.
"""

from __future__ import annotations

import numpy as np

from pasu.lite.frames import FrameStage
from pasu.lite.model import LiteModel


class LiteEncoder:
    """Feed 16 kHz float32 chunks; ``encode()`` -> encoder output (T, D) of all audio so far."""

    def __init__(self, model: LiteModel) -> None:
        self.model = model
        m = model.manifest
        fe, enc = m["frontend"], m["encoder"]
        self.n_mels = int(fe["n_mels"])
        self.d_model = int(enc["d_model"])
        self.blocks = int(enc["local_blocks"])
        self.delay = self.blocks * int(enc["right_context"])  # frames the local stack holds back
        self.kernel = int(enc["kernel"])
        self.residual_frames = int(enc["residual_frames"])
        self.receptive_field = int(enc["subsampling"]["receptive_field"])
        self.stride = int(enc["subsampling"]["stride"])
        self._frames = FrameStage(int(fe["n_fft"]), int(fe["hop_length"]), bool(fe["center"]))
        self.reset()

    def reset(self) -> None:
        """Start a new utterance."""
        self._frames.reset()
        self._feats = np.zeros((0, self.n_mels), dtype=np.float32)  # features not yet subsampled
        self._local: list[np.ndarray] = []  # final local-block output frames
        self._offset = 0  # frames fed to the local blocks so far
        self._gates = np.zeros((self.blocks, 1, self.kernel - 1, self.d_model), dtype=np.float32)
        self._residual = np.zeros((self.blocks, 1, self.residual_frames, self.d_model), dtype=np.float32)
        self._cached: np.ndarray | None = None
        self.samples = 0

    # -- the graphs --------------------------------------------------------
    def features(self, windows: np.ndarray) -> np.ndarray:
        if windows.shape[0] == 0:
            return np.zeros((0, self.n_mels), dtype=np.float32)
        return self.model.run("frontend", frames=windows)[0]

    def _subsample(self, feats: np.ndarray) -> tuple[np.ndarray, int]:
        """(frames out, features consumed)."""
        if feats.shape[0] < self.receptive_field:
            return np.zeros((0, self.d_model), dtype=np.float32), 0
        x = self.model.run("subsampling", feats=feats[None])[0][0]
        return x, x.shape[0] * self.stride

    def _local_blocks(self, x: np.ndarray, limit: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        y, gates, residual = self.model.run(
            "local_blocks",
            x=x[None],
            offset=np.array([self._offset], dtype=np.int64),
            limit=np.array([limit], dtype=np.int64),
            gates=self._gates,
            residual=self._residual,
        )
        return y[0], gates, residual

    # -- streaming ---------------------------------------------------------
    def feed(self, chunk: np.ndarray) -> None:
        """Add 16 kHz float32 mono samples (any length)."""
        chunk = np.asarray(chunk, dtype=np.float32).reshape(-1)
        self.samples += chunk.size
        if chunk.size == 0:
            return
        self._cached = None
        self._feats = np.concatenate([self._feats, self.features(self._frames.push(chunk))])
        x, used = self._subsample(self._feats)
        self._feats = self._feats[used:]
        if x.shape[0] == 0:
            return
        y, self._gates, self._residual = self._local_blocks(x, limit=np.iinfo(np.int64).max)
        first = max(0, self.delay - self._offset)  # outputs before utterance frame 0 are not real
        self._offset += x.shape[0]
        if first < y.shape[0]:
            self._local.append(y[first:])

    def local_output(self) -> np.ndarray:
        """The local blocks' output (T, D) of all audio so far, the tail finished as if it ended now."""
        feats = np.concatenate([self._feats, self.features(self._frames.peek())])
        tail, _ = self._subsample(feats)
        total = self._offset + tail.shape[0]
        x = np.concatenate([tail, np.zeros((self.delay, self.d_model), dtype=np.float32)])
        if x.shape[0] > 0:
            y, _, _ = self._local_blocks(x, limit=total)  # a peek: the state is not kept
            first = max(0, self.delay - self._offset)
            y = y[first : first + total - max(0, self._offset - self.delay)]
        else:
            y = np.zeros((0, self.d_model), dtype=np.float32)
        if len(self._local) > 1:
            self._local = [np.concatenate(self._local)]
        return np.concatenate([*self._local, y]) if self._local else y

    def encode(self) -> np.ndarray:
        """Encoder output (T, D) of all audio so far (T = 0 while too short)."""
        if self._cached is not None:
            return self._cached
        local = self.local_output()
        if local.shape[0] == 0:
            out = np.zeros((0, self.d_model), dtype=np.float32)
        else:
            out = self.model.run("attention", x=local[None])[0][0]
        self._cached = out
        return out

    def ctc_log_probs(self, enc: np.ndarray) -> np.ndarray:
        """(T, V) CTC log-posteriors of an encoder output."""
        if enc.shape[0] == 0:
            return np.zeros((0, len(self.model.tokens)), dtype=np.float32)
        return self.model.run("ctc", enc=enc[None])[0][0]


def greedy_ctc(logp: np.ndarray, blank: int = 0) -> list[int]:
    """Best path: argmax per frame, repeats merged, blanks dropped."""
    best = logp.argmax(-1) if logp.size else np.zeros(0, dtype=np.int64)
    out: list[int] = []
    prev = -1
    for t in best.tolist():
        if t != prev and t != blank:
            out.append(int(t))
        prev = t
    return out
