"""What the two load benchmarks share (`pasu bench cloud`, `pasu bench soak`): the clips as
the wire carries them, one request of either kind, and the percentile both report — so
their p50/p99 figures are computed the same way and send the same messages."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the CLI imports this module to register its commands: no numpy at start-up
    import numpy as np


def pct(xs: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) by nearest rank, an observed latency; NaN for none."""
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, int(round(q * (len(s) - 1)))))]


def load_clips(paths: Sequence[str | Path]) -> list[np.ndarray]:
    """The audio files as LINEAR16 carries them, so a device n-best made from a clip is
    made from exactly what the cloud receives."""
    from pasu.audio import float_to_pcm16, pcm16_to_float, read_audio

    return [pcm16_to_float(float_to_pcm16(read_audio(p))) for p in paths]


def send(
    stub,
    rpc: str,
    request_id: str,
    clip: np.ndarray,
    device,
    beam_size: int | None,
    timeout: float,
    metadata: tuple = (),
):
    """One ``Offload`` (with the device n-best ``device``, or none; a pair is the n-best of the
    config and a later update) or ``Recognize`` call; its response. gRPC errors propagate."""
    from pasu.cloud import client as C

    if rpc == "offload":
        first, update = device if isinstance(device, tuple) else (device, None)
        requests = C.offload_requests(request_id, clip, first, beam_size=beam_size, update=update)
        return stub.Offload(requests, timeout=timeout, metadata=metadata)
    request = C.recognize_request(request_id, clip, beam_size=beam_size)
    return stub.Recognize(request, timeout=timeout, metadata=metadata)
