"""Cut a sample stream into STFT windows as ESPnet's front end does, chunk by chunk.

The numpy twin of :class:`pasu.encoders.stages.StftFeatureStage`'s bookkeeping
(reflect padding at the start once ``pad + 1`` samples have arrived; a window is
final once all its samples are in; the windows over the end padding only at
``peek``). The windows go to the ``frontend`` graph, which computes the features.
"""

from __future__ import annotations

import numpy as np


def windows(segment: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    """(n, n_fft) windows of ``segment`` every ``hop`` samples (a copy, C-contiguous)."""
    if segment.size < n_fft:
        return np.zeros((0, n_fft), dtype=np.float32)
    view = np.lib.stride_tricks.sliding_window_view(segment, n_fft)[::hop]
    return np.ascontiguousarray(view, dtype=np.float32)


class FrameStage:
    """``push(samples)`` -> the windows that are final now; ``peek()`` -> the rest, as if input ended."""

    def __init__(self, n_fft: int, hop: int, center: bool) -> None:
        self.n_fft = n_fft
        self.hop = hop
        self.pad = n_fft // 2 if center else 0
        self.reset()

    def reset(self) -> None:
        self._head: list[np.ndarray] = []
        self._buf: np.ndarray | None = None  # padded stream from _buf_start
        self._buf_start = 0
        self._stream_len = 0
        self._next = 0  # next window to finalize

    def _empty(self) -> np.ndarray:
        return np.zeros((0, self.n_fft), dtype=np.float32)

    def _start(self, samples: np.ndarray) -> np.ndarray | None:
        self._head.append(samples)
        head = np.concatenate(self._head)
        if head.size <= self.pad:  # reflect padding needs pad + 1 samples
            return None
        self._head = []
        start_pad = head[1 : self.pad + 1][::-1]
        self._stream_len = start_pad.size + head.size
        return np.concatenate([start_pad, head])

    def push(self, samples: np.ndarray) -> np.ndarray:
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        if self._buf is None:
            self._buf = self._start(samples)
            if self._buf is None:
                return self._empty()
        else:
            self._buf = np.concatenate([self._buf, samples])
            self._stream_len += samples.size
        n_final = max((self._stream_len - self.n_fft) // self.hop + 1, 0)
        if n_final <= self._next:
            return self._empty()
        begin = self._next * self.hop - self._buf_start
        end = (n_final - 1) * self.hop + self.n_fft - self._buf_start
        out = windows(self._buf[begin:end], self.n_fft, self.hop)
        self._next = n_final
        keep_from = min(self._next * self.hop, self._stream_len - self.pad - 1)
        self._buf = self._buf[keep_from - self._buf_start :]
        self._buf_start = keep_from
        return out

    def peek(self) -> np.ndarray:
        buf = self._buf
        if buf is None:
            return self._empty()
        segment = buf[self._next * self.hop - self._buf_start :]
        if self.pad > 0:
            segment = np.concatenate([segment, buf[-self.pad - 1 : -1][::-1]])
        return windows(segment, self.n_fft, self.hop)
