"""The per-model forward lock, apart from model loading so the encoders can take it without a circle."""

from __future__ import annotations

import threading

import torch

_LOCKS_GUARD = threading.Lock()


def forward_lock(module: torch.nn.Module) -> threading.RLock:
    """The lock that serialises forward passes through one model's modules.

    ESPnet's attention layers keep per-call state on the module (``self.attn``
    is written, then read back), so two threads running the same model at once
    can mix their tensors: a pilot in the streaming session's background thread
    and the final pass on the caller's thread hit exactly that ("Expected size
    ... [4, 44] but got [4, 16]"). Every pasu forward through an encoder's
    attention or a decoder holds this lock; it is re-entrant, so a search that
    encodes and then decodes just nests.
    """
    lock = getattr(module, "_pasu_forward_lock", None)
    if lock is None:
        with _LOCKS_GUARD:
            lock = getattr(module, "_pasu_forward_lock", None)
            if lock is None:
                lock = threading.RLock()
                object.__setattr__(module, "_pasu_forward_lock", lock)
    return lock
