"""Offload policies: given the device's confidence (at a pilot or at the end), offload or not.

A policy is asked at the start of a segment (``always`` decides there, so the
upload covers the whole segment), at each pilot from ``min_pilots`` on (the
offramp: the upload starts while the user still talks), and once at the end.
The budget policy's controller and the latency policy's link estimates learn
from every segment, through :meth:`OffloadPolicy.segment_done` and
:class:`LinkEstimator`.

The ``slo`` policy answers within a response budget: :func:`slo_decision` is
the one implementation of its rule, called by the agent here and by the
offline replay (``pasu experiment offload --slo-ms``), so that what the replay
measures is what the agent does. It is asked at every chunk too (``chunk``)
and once at the end of speech before the local final pass (``end``): a
capacity check needs no confidence, and waiting for the final pass to learn
that the device is too slow would already spend the budget.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Literal

from pasu.device.config import PolicyConfig

Reason = Literal["low_confidence", "policy_always", "latency"]
Stage = Literal["start", "chunk", "pilot", "end", "final"]


@dataclass(frozen=True)
class Decision:
    offload: bool
    reason: Reason | None = None


STAY = Decision(False)


@dataclass(frozen=True)
class DecisionContext:
    stage: Stage
    confidence: float | None  # None at "start" (nothing decoded yet)
    audio_s: float  # audio heard so far in the segment
    pilots: int  # pilots run so far
    words: bool = True  # the hypothesis has words after its intent label (False: judged non-speech)
    backlog_s: float = 0.0  # how far the device's compute is behind the audio (seconds)


def expected_local_finish_s(audio_s: float, rate: float, backlog_s: float = 0.0) -> float:
    """When the local answer would come, in seconds after the end of speech: the backlog
    plus the final pass at ``rate`` seconds of compute per second of audio. Before the
    end it is a lower bound (more audio only adds), so exceeding the budget is certain."""
    return backlog_s + rate * audio_s


def slo_decision(
    ctx: DecisionContext, threshold: float, rate: float, slo_s: float, min_pilots: int = 1, early: bool = True
) -> Decision:
    """The response-budget rule (one implementation: the agent and the replay call it).

    Capacity first, at every chunk, pilot and the end of speech: offload as soon as
    the expected local finish would miss ``slo_s`` (reason ``latency``). Then
    confidence, as the offramp does: below ``threshold`` at a pilot from
    ``min_pilots`` on, or at the final pass (reason ``low_confidence``).
    """
    if ctx.stage == "start":
        return STAY
    if ctx.stage in ("chunk", "pilot", "end") and expected_local_finish_s(ctx.audio_s, rate, ctx.backlog_s) > slo_s:
        return Decision(True, "latency")
    if ctx.stage in ("chunk", "end") or ctx.confidence is None:
        return STAY
    if ctx.stage == "final" and not ctx.words:
        return STAY
    if ctx.stage == "pilot" and (not early or ctx.pilots < min_pilots):
        return STAY
    return Decision(True, "low_confidence") if ctx.confidence < threshold else STAY


class LinkEstimator:
    """Running estimates (EWMA) of what an offload costs, and of what local decoding costs.

    Starts from the policy's priors; each finished cloud call and each local
    final pass replaces a share ``alpha`` of the estimate. Thread-safe: the
    sender threads report while the agent reads.
    """

    def __init__(self, config: PolicyConfig, alpha: float = 0.3) -> None:
        self.alpha = alpha
        self.rtt_s = config.prior_rtt_s
        self.bandwidth_bps = config.prior_bandwidth_bps
        self.cloud_s = config.prior_cloud_s
        self.local_rtf = config.local_rtf if config.local_rtf is not None else config.prior_local_rtf
        self._fixed_rtf = config.local_rtf is not None  # a profiled rate: not re-estimated
        self._lock = threading.Lock()

    def _mix(self, old: float, new: float) -> float:
        return (1 - self.alpha) * old + self.alpha * new

    def observe_call(self, wait_s: float, server_s: float, tail_bytes: int) -> None:
        """A call answered ``wait_s`` after its stream was closed; the server says it spent ``server_s``.

        What is left after the server's own time is the round trip plus the
        upload of the tail still in flight at close; both share it, split by
        the current bandwidth estimate.
        """
        with self._lock:
            net = max(0.0, wait_s - server_s)
            upload = min(net, tail_bytes / self.bandwidth_bps)
            self.rtt_s = self._mix(self.rtt_s, net - upload)
            if upload > 1e-3 and tail_bytes > 0:
                self.bandwidth_bps = self._mix(self.bandwidth_bps, tail_bytes / upload)
            self.cloud_s = self._mix(self.cloud_s, server_s)

    def observe_upload(self, n_bytes: int, seconds: float) -> None:
        """A measured burst upload (e.g. the audio so far, sent at once on an early offload)."""
        if n_bytes > 16 * 1024 and seconds > 1e-3:
            with self._lock:
                self.bandwidth_bps = self._mix(self.bandwidth_bps, n_bytes / seconds)

    def observe_local(self, final_s: float, audio_s: float) -> None:
        if audio_s > 0 and not self._fixed_rtf:
            with self._lock:
                self.local_rtf = self._mix(self.local_rtf, final_s / audio_s)

    def cloud_after_end_s(self, tail_bytes: int) -> float:
        """Expected wait for the cloud once the segment ends, if the upload kept up until then."""
        return self.rtt_s + tail_bytes / self.bandwidth_bps + self.cloud_s

    def local_after_end_s(self, audio_s: float) -> float:
        return self.local_rtf * audio_s


class OffloadPolicy:
    """One policy instance per agent (it keeps the budget controller's state)."""

    def __init__(self, config: PolicyConfig, link: LinkEstimator | None = None, tail_bytes: int = 3200) -> None:
        self.config = config
        self.link = link or LinkEstimator(config)
        self.threshold = config.threshold  # the budget policy moves it
        self.tail_bytes = tail_bytes
        self.segments = 0
        self.offloaded = 0
        self._lock = threading.Lock()

    def decide(self, ctx: DecisionContext) -> Decision:
        c = self.config
        if c.kind == "never":
            return STAY
        if c.kind == "always":
            return Decision(True, "policy_always")
        if c.kind == "slo":
            return slo_decision(ctx, self.threshold, self.link.local_rtf, c.slo_ms / 1000, c.min_pilots, c.early)
        if ctx.stage in ("chunk", "end"):  # only the slo policy decides there
            return STAY
        if ctx.stage == "start" or ctx.confidence is None:
            return STAY
        if ctx.stage == "final" and not ctx.words:  # non-speech: nothing for the cloud to understand
            return STAY
        if ctx.stage == "pilot" and (not c.early or ctx.pilots < c.min_pilots):
            return STAY
        low = ctx.confidence < self.threshold
        if c.kind in ("threshold", "budget"):
            return Decision(True, "low_confidence") if low else STAY
        # latency: only worth it when the cloud is expected to answer first
        faster = self.link.cloud_after_end_s(self.tail_bytes) < self.link.local_after_end_s(ctx.audio_s)
        return Decision(True, "latency") if low and faster else STAY

    def segment_done(self, offloaded: bool) -> None:
        """Update the offload-rate controller (budget) and the counts."""
        with self._lock:
            self.segments += 1
            self.offloaded += int(offloaded)
            if self.config.kind == "budget":
                step = self.config.budget_gain * (self.config.target_rate - float(offloaded))
                self.threshold = min(1.0, max(0.0, self.threshold + step))

    @property
    def offload_rate(self) -> float:
        return self.offloaded / self.segments if self.segments else 0.0
