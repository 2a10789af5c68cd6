"""Stream one utterance through a session on a simulated clock: the one definition of
end-of-speech latency that `pasu bench latency` and `pasu bench runtime` report.

Chunks arrive every ``chunk_s``; each ``feed`` takes the compute ``clock`` measures, and a
pilot that would start while the previous one still runs is skipped (``may_pilot``). The
latency is from the end of the audio to the final result, counting any work still queued
then. Imports neither torch nor ESPnet, so the torch-free runtime's processes use it too.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from pasu.decoding.backend import RecognizerBackend
from pasu.streaming.options import StreamingOptions
from pasu.streaming.session import FinalResult, StreamingSession


@dataclass
class SimulatedRun:
    result: FinalResult
    latency_s: float  # end of speech -> final result
    during_s: float  # compute while the audio arrived
    after_s: float  # compute of finalize()


def simulate_stream(
    backend: RecognizerBackend,
    options: StreamingOptions,
    audio: np.ndarray,
    chunk_s: float,
    clock: Callable[[], float] = time.perf_counter,
) -> SimulatedRun:
    step = max(1, int(chunk_s * backend.sample_rate))
    chunks = [audio[i : i + step] for i in range(0, len(audio), step)]
    session = StreamingSession(backend, options, background=False)
    busy_until = during = 0.0
    for i, chunk in enumerate(chunks):
        arrival = (i + 1) * chunk_s
        start = max(arrival, busy_until)
        t0 = clock()
        session.feed(chunk, may_pilot=busy_until <= arrival)
        dt = clock() - t0
        during += dt
        busy_until = start + dt
    end_of_speech = len(chunks) * chunk_s
    start = max(end_of_speech, busy_until)
    t0 = clock()
    result = session.finalize()
    dt = clock() - t0
    return SimulatedRun(result, latency_s=start + dt - end_of_speech, during_s=during, after_s=dt)
