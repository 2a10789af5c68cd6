"""Every knob of the device agent in one frozen, typed place.

The CLI, the tests and any embedding application build an :class:`AgentConfig`;
nothing else in ``pasu.device`` reads flags or the environment, so a setting has
one name, one default and one validation.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from pasu.decoding.options import DecodingOptions
from pasu.streaming.options import StreamingOptions

PolicyKind = Literal["never", "always", "threshold", "budget", "latency", "slo"]
POLICY_KINDS: tuple[str, ...] = ("never", "always", "threshold", "budget", "latency", "slo")
#: What runs the device model: torch + ESPnet (a model dir), or a `pasu export` on onnxruntime.
RUNTIMES: tuple[str, ...] = ("torch", "onnx")
VadBackend = Literal["silero", "webrtc"]
VAD_BACKENDS: tuple[str, ...] = ("silero", "webrtc")


def _need(ok: bool, msg: str) -> None:
    if not ok:
        raise ValueError(msg)


@dataclass(frozen=True)
class VadOptions:
    """How a continuous stream is cut into segments (16 kHz).

    ``backend`` classifies each frame as speech or not: ``silero`` (default), the
    trained Silero VAD that ships inside its PyPI package (32 ms frames, speech
    when its probability is >= ``speech_threshold``), or ``webrtcvad`` (10/20/30 ms
    frames, ``aggressiveness``). Why silero: webrtcvad calls the first frames of
    any stream speech while it adapts and calls loud stationary noise speech
    throughout, so noise alone opened segments the device then "understood";
    on the recipe's noise-only set silero opens none (docs/device.md, VAD).

    A segment opens when ``start_ms`` of the last ``start_window_ms`` are voiced
    (the minimum speech: a click or a burst shorter than a word never opens
    one), closes after ``min_silence_ms`` of unvoiced frames, and is cut at
    ``max_segment_s`` so one long stretch of speech never holds unbounded memory.
    ``padding_ms`` of audio is kept on both sides (onsets and fricatives that the
    VAD calls silence).
    """

    backend: VadBackend = "silero"
    aggressiveness: int = 2  # webrtcvad mode 0 (permissive) .. 3 (aggressive)
    frame_ms: int | None = None  # None: the backend's (silero 32, webrtcvad 30); webrtcvad: 10, 20 or 30
    speech_threshold: float = 0.5  # silero: speech probability that makes a frame voiced
    padding_ms: int = 200
    start_window_ms: int = 300
    start_ms: int = 200
    min_silence_ms: int = 500
    max_segment_s: float = 15.0
    # Frames quieter than this are silence whatever the backend says (webrtcvad calls
    # the first frames of a stream speech while it adapts). None: no floor.
    energy_floor_dbfs: float | None = -50.0
    sample_rate: int = 16000
    # silero's ONNX file where the silero-vad package is not installed (an export carries one)
    silero_model: Path | None = None

    def __post_init__(self) -> None:
        _need(self.backend in VAD_BACKENDS, f"backend must be one of {VAD_BACKENDS}, got {self.backend!r}")
        _need(self.aggressiveness in (0, 1, 2, 3), f"aggressiveness must be 0..3, got {self.aggressiveness}")
        if self.backend == "webrtc":
            _need(self.frame_ms in (None, 10, 20, 30), f"webrtcvad: frame_ms must be 10, 20 or 30, got {self.frame_ms}")
            _need(
                self.sample_rate in (8000, 16000, 32000, 48000),
                f"webrtcvad needs 8/16/32/48 kHz, got {self.sample_rate}",
            )
        else:
            _need(self.frame_ms in (None, 32), f"silero: frame_ms must be 32 (512 samples), got {self.frame_ms}")
            _need(self.sample_rate == 16000, f"silero runs at 16 kHz here, got {self.sample_rate}")
        _need(0.0 < self.speech_threshold < 1.0, f"speech_threshold must be in (0, 1), got {self.speech_threshold}")
        _need(self.padding_ms >= 0, "padding_ms must be >= 0")
        _need(0 < self.start_ms <= self.start_window_ms, "need 0 < start_ms <= start_window_ms")
        _need(self.min_silence_ms >= self.frame_length_ms, "min_silence_ms must be at least one frame")
        _need(
            self.max_segment_s * 1000 > 2 * self.padding_ms + self.start_window_ms,
            "max_segment_s is too short for the padding",
        )

    @property
    def frame_length_ms(self) -> int:
        """The frame length in use: ``frame_ms``, or the backend's own."""
        if self.frame_ms is not None:
            return self.frame_ms
        return 32 if self.backend == "silero" else 30

    @property
    def frame_samples(self) -> int:
        return self.sample_rate * self.frame_length_ms // 1000

    def frames(self, ms: float) -> int:
        """``ms`` as a whole number of frames (at least one)."""
        return max(1, round(ms / self.frame_length_ms))


@dataclass(frozen=True)
class PolicyConfig:
    """When a segment goes to the cloud.

    * ``never`` / ``always``: local only / every segment (evaluation, cloud-only).
    * ``threshold``: confidence < ``threshold``.
    * ``budget``: keep the offload rate near ``target_rate`` — the threshold is
      moved after every segment by ``budget_gain`` × (target − offloaded), an
      integral controller, so the long-run rate follows the target whatever the
      confidence distribution is.
    * ``latency``: confidence < ``threshold`` *and* the cloud is expected to
      answer sooner than the device would (measured RTT, bandwidth, cloud time).
    * ``slo``: answer within ``slo_ms`` after the end of speech: offload as soon
      as the expected local finish (audio so far x the device's compute rate,
      ``local_rtf`` or its running estimate) would miss it, else as ``threshold``
      (``pasu.device.policy.slo_decision``; docs/experiments/README.md).

    Decisions are taken at pilots from ``min_pilots`` on (the offramp), and once
    more at the end of the segment.
    """

    kind: PolicyKind = "never"
    threshold: float = 0.5
    target_rate: float = 0.3
    budget_gain: float = 0.05
    min_pilots: int = 4  # the estimator needs some pilot history before it is trusted
    early: bool = True  # decide at pilots (False: only at the end of the segment)
    # priors for the latency policy, replaced by measurements as calls complete
    prior_rtt_s: float = 0.05
    prior_bandwidth_bps: float = 1e6  # bytes/s upstream
    prior_cloud_s: float = 0.2  # server-side time per segment
    prior_local_rtf: float = 0.3  # device final-pass seconds per second of audio
    slo_ms: float = 300.0  # slo: the response budget after the end of speech
    local_rtf: float | None = None  # slo/latency: a profiled compute rate, fixed; None: learned from finals (EWMA)

    def __post_init__(self) -> None:
        _need(self.kind in POLICY_KINDS, f"policy must be one of {POLICY_KINDS}, got {self.kind!r}")
        _need(0.0 <= self.threshold <= 1.0, f"threshold must be in [0, 1], got {self.threshold}")
        _need(0.0 <= self.target_rate <= 1.0, f"target_rate must be in [0, 1], got {self.target_rate}")
        _need(self.budget_gain > 0, "budget_gain must be > 0")
        _need(self.min_pilots >= 1, "min_pilots must be >= 1")
        _need(self.slo_ms > 0, f"slo_ms must be > 0, got {self.slo_ms}")
        _need(self.local_rtf is None or self.local_rtf >= 0, f"local_rtf must be >= 0, got {self.local_rtf}")
        _need(
            self.prior_bandwidth_bps > 0 and self.prior_rtt_s >= 0 and self.prior_cloud_s >= 0,
            "latency priors must be positive",
        )


@dataclass(frozen=True)
class CloudClientConfig:
    """How the device reaches the cloud's ``Offload`` RPC.

    ``deadline_s`` bounds each attempt, counted from the later of the attempt's
    start and the end of the segment (a call opened early stays open while the
    user speaks); ``total_deadline_s`` bounds all attempts after the end of the
    segment, so the device's answer is never later than that.
    """

    target: str | None = None  # host:port, dns:///host:port, ...; None: local only
    deadline_s: float = 2.0
    total_deadline_s: float = 3.0
    max_attempts: int = 3
    backoff_initial_s: float = 0.05
    backoff_multiplier: float = 2.0
    backoff_max_s: float = 1.0
    load_balancing: str | None = "round_robin"  # gRPC LB policy (matters for dns:/// targets)
    root_cert: Path | None = None  # given → TLS
    client_cert: Path | None = None  # with client_key → mutual TLS
    client_key: Path | None = None
    server_name: str | None = None  # TLS name override (tests, IP targets)
    bearer_token: str | None = field(default=None, repr=False)  # never printed
    chunk_ms: int = 100  # audio per OffloadRequest
    nbest: int | None = None  # ask the cloud for this many hypotheses

    def __post_init__(self) -> None:
        _need(self.deadline_s > 0 and self.total_deadline_s > 0, "deadlines must be > 0")
        _need(self.max_attempts >= 1, "max_attempts must be >= 1")
        _need(
            self.backoff_initial_s >= 0 and self.backoff_multiplier >= 1 and self.backoff_max_s >= 0,
            "backoff must be non-negative and growing",
        )
        _need((self.client_cert is None) == (self.client_key is None), "client_cert and client_key go together")
        _need(self.client_cert is None or self.root_cert is not None, "a client certificate needs root_cert (TLS)")
        _need(
            self.bearer_token is None or (self.bearer_token != "" and self.bearer_token.strip() == self.bearer_token),
            "bearer token must be non-empty, no spaces",
        )
        _need(self.chunk_ms > 0, "chunk_ms must be > 0")

    @property
    def tls(self) -> bool:
        return self.root_cert is not None


@dataclass(frozen=True)
class AgentConfig:
    """The whole device agent: segmentation, streaming, decoding, offramp and offload."""

    vad: VadOptions = VadOptions()
    streaming: StreamingOptions = StreamingOptions()
    decoding: DecodingOptions = DecodingOptions()
    policy: PolicyConfig = PolicyConfig()
    cloud: CloudClientConfig = CloudClientConfig()
    confidence: Path | None = None  # a trained estimator (train-confidence); None: the built-in prior
    # below this final confidence a segment is "not understood" (issue 28); None: the threshold
    # calibrated into the estimator's metadata (`rejection`), or 0 (only the no-words rule)
    rejection_threshold: float | None = None
    chunk_ms: int = 100  # how input is fed (files, stdin)
    realtime: bool = False  # feed files at real-time pace
    background: bool = False  # pilots on a worker thread (live input); False: inline, reproducible
    interim: bool = False  # report pilot hypotheses as interim results
    device: str = "cpu"  # torch device: cpu, cuda, mps

    def __post_init__(self) -> None:
        _need(self.chunk_ms > 0, "chunk_ms must be > 0")
        _need(
            self.rejection_threshold is None or 0.0 <= self.rejection_threshold <= 1.0,
            f"rejection_threshold must be in [0, 1], got {self.rejection_threshold}",
        )
        _need(
            self.device.split(":")[0] in ("cpu", "cuda", "mps"), f"device must be cpu, cuda or mps, got {self.device!r}"
        )
        if self.vad.sample_rate != 16000:
            raise ValueError("the agent runs at 16 kHz (models and VAD)")

    def with_(self, **changes) -> AgentConfig:
        return replace(self, **changes)
