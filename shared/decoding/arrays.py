"""The handful of array operations the beam search needs, for torch and for numpy.

One search (:mod:`pasu.decoding.beam_search`) serves the torch runtime and the
torch-free one (:mod:`pasu.lite`, numpy + onnxruntime). Everything it does to
arrays beyond arithmetic and indexing, which both libraries spell alike, goes
through an :class:`ArrayOps`; :func:`ops_for` picks one by the type of an array,
importing torch only when handed a tensor. Index arrays (parents, tokens,
utterance of each row) live on the host; scores live where the encoder output
is (``like``).
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np


class ArrayOps(Protocol):
    """What the search asks of an array library."""

    def index(self, values: Any, like: Any = None) -> Any:
        """An int64 array of ``values`` (on ``like``'s device when given, else the host)."""

    def arange(self, n: int) -> Any:
        """0..n-1, int64, on the host."""

    def zeros(self, shape: Any, like: Any, dtype: str | None = None) -> Any:
        """Zeros with ``like``'s dtype (or ``dtype``) and device."""

    def full(self, shape: Any, value: float, like: Any) -> Any:
        """``value`` everywhere, with ``like``'s dtype and device."""

    def topk(self, x: Any, k: int) -> Any:
        """Indices of the ``k`` largest entries of each row of ``x`` (last axis), largest first."""

    def bincount(self, x: Any, minlength: int) -> Any: ...

    def cumsum(self, x: Any) -> Any: ...

    def cat(self, xs: list[Any], axis: int) -> Any: ...

    def to(self, x: Any, like: Any) -> Any:
        """``x`` (an array of this library) on ``like``'s device."""

    def cast(self, x: Any, like: Any) -> Any:
        """``x`` with ``like``'s dtype, on its device."""

    def to_host(self, x: Any) -> Any: ...

    def take_along_rows(self, x: Any, idx: Any) -> Any:
        """``x[i, idx[i]]`` for every row i."""

    # -- what the CTC prefix session adds (pasu.decoding.ctc_prefix) ----------------------
    def logsumexp(self, x: Any, axis: int) -> Any:
        """log(sum(exp(x))) along ``axis``, shifted by the maximum (torch's formula)."""

    def logaddexp(self, a: Any, b: Any) -> Any: ...

    def logcumsumexp(self, x: Any) -> Any:
        """The running log-sum-exp along the first axis."""

    def where(self, cond: Any, a: Any, b: Any) -> Any: ...

    def stack(self, xs: list[Any], axis: int) -> Any: ...

    def permute(self, x: Any, dims: tuple[int, ...]) -> Any: ...

    def contiguous(self, x: Any) -> Any: ...

    def broadcast_to(self, x: Any, shape: tuple[int, ...]) -> Any: ...

    def float64(self, x: Any) -> Any: ...

    def put_along_rows(self, x: Any, idx: Any, values: Any) -> None:
        """``x[i, idx[i, k]] = values[i, k]``, in place."""


class NumpyOps:
    def index(self, values: Any, like: Any = None) -> np.ndarray:
        return np.asarray(values, dtype=np.int64)

    def arange(self, n: int) -> np.ndarray:
        return np.arange(n, dtype=np.int64)

    def zeros(self, shape: Any, like: Any, dtype: str | None = None) -> np.ndarray:
        return np.zeros(shape, dtype=dtype or like.dtype)

    def full(self, shape: Any, value: float, like: Any) -> np.ndarray:
        return np.full(shape, value, dtype=like.dtype)

    def topk(self, x: np.ndarray, k: int) -> np.ndarray:
        if k >= x.shape[-1]:
            idx = np.broadcast_to(np.arange(x.shape[-1]), x.shape).copy()
        else:
            idx = np.argpartition(-x, k - 1, axis=-1)[..., :k]
        order = np.argsort(-np.take_along_axis(x, idx, axis=-1), axis=-1, kind="stable")
        return np.take_along_axis(idx, order, axis=-1)

    def bincount(self, x: np.ndarray, minlength: int) -> np.ndarray:
        return np.bincount(x, minlength=minlength).astype(np.int64)

    def cumsum(self, x: np.ndarray) -> np.ndarray:
        return np.cumsum(x, axis=0)

    def cat(self, xs: list[np.ndarray], axis: int) -> np.ndarray:
        return np.concatenate(xs, axis=axis)

    def to(self, x: Any, like: Any) -> np.ndarray:
        return np.asarray(x)

    def cast(self, x: Any, like: Any) -> np.ndarray:
        return np.asarray(x).astype(like.dtype, copy=False)

    def to_host(self, x: Any) -> np.ndarray:
        return np.asarray(x)

    def take_along_rows(self, x: np.ndarray, idx: np.ndarray) -> np.ndarray:
        return x[np.arange(x.shape[0]), idx]

    def logsumexp(self, x: np.ndarray, axis: int) -> np.ndarray:
        m = x.max(axis=axis, keepdims=True)  # x is finite (LOG_ZERO, not -inf)
        return np.squeeze(m + np.log(np.exp(x - m).sum(axis=axis, keepdims=True)), axis=axis)

    def logaddexp(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.logaddexp(a, b)

    def logcumsumexp(self, x: np.ndarray) -> np.ndarray:
        return np.logaddexp.accumulate(x, axis=0)

    def where(self, cond: Any, a: Any, b: Any) -> np.ndarray:
        return np.where(cond, a, b)

    def stack(self, xs: list[np.ndarray], axis: int) -> np.ndarray:
        return np.stack(xs, axis=axis)

    def permute(self, x: np.ndarray, dims: tuple[int, ...]) -> np.ndarray:
        return x.transpose(dims)

    def contiguous(self, x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(x)

    def broadcast_to(self, x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        return np.broadcast_to(x, shape)

    def float64(self, x: np.ndarray) -> np.ndarray:
        return x.astype(np.float64)

    def put_along_rows(self, x: np.ndarray, idx: np.ndarray, values: np.ndarray) -> None:
        np.put_along_axis(x, idx, values, axis=1)


class TorchOps:
    def __init__(self) -> None:
        import torch

        self.torch = torch

    def index(self, values: Any, like: Any = None) -> Any:
        t = self.torch.as_tensor(values, dtype=self.torch.long)
        return t if like is None else t.to(like.device)

    def arange(self, n: int) -> Any:
        return self.torch.arange(n)

    def zeros(self, shape: Any, like: Any, dtype: str | None = None) -> Any:
        dt = getattr(self.torch, dtype) if dtype else like.dtype
        return self.torch.zeros(shape, dtype=dt, device=like.device)

    def full(self, shape: Any, value: float, like: Any) -> Any:
        return self.torch.full(shape, value, dtype=like.dtype, device=like.device)

    def topk(self, x: Any, k: int) -> Any:
        return self.torch.topk(x, k, dim=-1)[1]

    def bincount(self, x: Any, minlength: int) -> Any:
        return self.torch.bincount(x, minlength=minlength)

    def cumsum(self, x: Any) -> Any:
        return self.torch.cumsum(x, 0)

    def cat(self, xs: list[Any], axis: int) -> Any:
        return self.torch.cat(xs, dim=axis)

    def to(self, x: Any, like: Any) -> Any:
        return x.to(like.device)

    def cast(self, x: Any, like: Any) -> Any:
        return self.torch.as_tensor(x).to(dtype=like.dtype, device=like.device)

    def to_host(self, x: Any) -> Any:
        return x.cpu()

    def take_along_rows(self, x: Any, idx: Any) -> Any:
        return x.gather(1, idx.to(x.device).unsqueeze(1)).squeeze(1)

    def logsumexp(self, x: Any, axis: int) -> Any:
        return self.torch.logsumexp(x, axis)

    def logaddexp(self, a: Any, b: Any) -> Any:
        return self.torch.logaddexp(a, b)

    def logcumsumexp(self, x: Any) -> Any:
        return self.torch.logcumsumexp(x, 0)

    def where(self, cond: Any, a: Any, b: Any) -> Any:
        return self.torch.where(cond, a, b)

    def stack(self, xs: list[Any], axis: int) -> Any:
        return self.torch.stack(xs, dim=axis)

    def permute(self, x: Any, dims: tuple[int, ...]) -> Any:
        return x.permute(*dims)

    def contiguous(self, x: Any) -> Any:
        return x.contiguous()

    def broadcast_to(self, x: Any, shape: tuple[int, ...]) -> Any:
        return x.expand(*shape)

    def float64(self, x: Any) -> Any:
        return x.to(self.torch.float64)

    def put_along_rows(self, x: Any, idx: Any, values: Any) -> None:
        x.scatter_(1, idx, values)


_NUMPY = NumpyOps()
_TORCH: TorchOps | None = None


def ops_for(x: Any) -> ArrayOps:
    """The ops for ``x``'s library: numpy for an ndarray, torch (imported now) otherwise."""
    global _TORCH
    if isinstance(x, np.ndarray):
        return _NUMPY
    if _TORCH is None:
        _TORCH = TorchOps()
    return _TORCH
