"""Device speed profiles: this machine's measured compute, replayed as a slower device would run it.

A profile is one constant factor on every compute time in the cache (seconds
of CPU on the device per second here). The factors and their sources are in
docs/experiments/README.md ("Device profiles"); a constant factor ignores
memory bandwidth, thermal throttling and big.LITTLE scheduling (said there).

The streaming session is re-simulated chunk by chunk on the slower clock: a
chunk's work starts at the later of its arrival and the end of earlier work,
and a pilot that comes due while the device is behind is skipped, as the
session does (its chunk is charged the utterance's median pilot-free chunk).
What a skipped pilot would change later (a shorter committed prefix, a longer
final pass) is not modelled: the final pass keeps its measured time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    factor: float  # device compute time / this machine's
    cpu: str
    basis: str  # how the factor was derived (details and sources: docs/experiments/README.md)


# One table. Sysbench-based factors: the published single-thread `sysbench cpu` rate of
# the target (or of its core at another clock, scaled by clock) against this machine's,
# measured here in CPU time (docs/experiments/slo_profiles.json). GEMM-based: peak fp32
# SIMD throughput per core against this machine's measured single-thread sgemm.
PROFILES: dict[str, DeviceProfile] = {
    p.name: p
    for p in (
        DeviceProfile("host", 1.0, "this machine (AMD EPYC, Zen 4)", "as measured"),
        DeviceProfile("rpi5", 1.59, "Raspberry Pi 5: Cortex-A76 @ 2.4 GHz", "sysbench cpu, published"),
        DeviceProfile("xavier", 1.69, "Jetson AGX Xavier: Carmel @ 2.26 GHz", "sysbench, A76 per clock"),
        DeviceProfile("phone", 1.73, "mid-range phone big core: Cortex-A76 @ 2.2 GHz", "sysbench, A76 per clock"),
        DeviceProfile("xavier-gemm", 3.25, "Jetson AGX Xavier: Carmel, 2x128-bit NEON FMA", "peak fp32 SIMD"),
    )
}


def device_profile(spec: str) -> DeviceProfile:
    """A named profile, or a bare factor (``"2.5"``)."""
    if spec in PROFILES:
        return PROFILES[spec]
    try:
        factor = float(spec)
    except ValueError:
        raise ValueError(f"device profile must be one of {sorted(PROFILES)} or a factor, got {spec!r}") from None
    if not factor > 0:
        raise ValueError(f"device profile factor must be > 0, got {factor}")
    return DeviceProfile(f"x{factor:g}", factor, f"{factor:g}x this machine's compute", "given")


@dataclass
class Timeline:
    """A pipeline's streaming run on the profile's clock (seconds after speech start)."""

    done_s: list[float]  # when each chunk's work finished
    behind_s: list[float]  # how far behind the audio the device was then (>= 0)
    pilot_ran: list[bool]  # per chunk: whether its pilots ran (False: skipped, or none due)
    eos_s: float
    latency_s: float  # end of speech -> local answer


def replay_stream(chunks: list[list[float]], final_s: float, chunk_s: float, factor: float) -> Timeline:
    """``chunks``: [compute s, pilots run] per chunk as measured here; ``final_s``: the final pass."""
    plain = [dt for dt, n in chunks if not n]
    plain_s = float(np.median(plain)) if plain else 0.0
    busy = 0.0
    done, behind, ran = [], [], []
    for i, (dt, n) in enumerate(chunks):
        arrival = (i + 1) * chunk_s
        late = busy > arrival
        start = max(arrival, busy)
        run = bool(n) and not late
        busy = start + factor * (dt if (run or not n) else min(dt, plain_s))
        done.append(busy)
        behind.append(max(0.0, busy - arrival))
        ran.append(run)
    eos = len(chunks) * chunk_s
    return Timeline(done, behind, ran, eos, max(eos, busy) + factor * final_s - eos)
