"""Every knob of the cloud worker in one frozen, typed place.

The CLI, the benchmark and the tests all build a :class:`WorkerConfig`; nothing
else in ``pasu.cloud`` reads flags or the environment, so a setting has exactly
one name, one default and one validation.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from pasu.decoding.options import DecodingOptions

ReusePolicy = Literal["off", "rescore", "seed"]
REUSE_POLICIES: tuple[str, ...] = ("off", "rescore", "seed")


@dataclass(frozen=True)
class WorkerConfig:
    """Settings of one cloud worker process (`pasu cloud serve`)."""

    host: str = "127.0.0.1"  # loopback unless the operator says otherwise
    port: int = 50051  # 0: any free port (tests)
    metrics_port: int | None = None  # Prometheus /metrics; None: no HTTP endpoint
    device: str = "cpu"  # torch device of the model

    # dynamic batching
    max_batch_size: int = 8
    max_batch_wait_ms: float = 10.0  # how long the first request of a batch waits for company
    max_queue: int = 64  # requests waiting for the batcher; more → RESOURCE_EXHAUSTED

    # request limits (each violation is INVALID_ARGUMENT with a precise message)
    max_message_bytes: int = 4 * 1024 * 1024
    max_audio_seconds: float = 60.0
    allowed_sample_rates: tuple[int, ...] = (8000, 11025, 16000, 22050, 24000, 32000, 44100, 48000)

    # decoding: request values above the max are clamped, unset ones get the default
    default_beam_size: int = 10
    max_beam_size: int = 20
    default_nbest: int = 1
    max_nbest: int = 10
    ctc_weight: float = DecodingOptions().ctc_weight
    penalty: float = 0.0
    lm_weight: float = 0.0  # shallow fusion with the model's own LM (its lm/ folder); 0: none
    interim_beam_size: int = 1  # pilot inference for StreamingRecognize interim results
    interim_interval_s: float = 1.0  # audio between two interim results

    # decoder reuse (Offload): "rescore" the device's complete n-best instead of searching,
    # "seed" the search with the device's latest hypothesis as far as this model confirms it
    # (pasu.cloud.reuse), or "off"; the default and why: docs/cloud.md, "Decoder reuse"
    reuse: ReusePolicy = "seed"
    # answer the (cloud-re-ranked) best device hypothesis only if its CTC
    # log-probability trails the CTC best path by at most this many nats
    reuse_margin: float = 5.0
    # "seed": a device token may trail this model's own pick by this many nats and still seed
    # the search (pasu.streaming.commit.confirm's tolerance, as the device's final search)
    reuse_tolerance: float = 0.0

    # "not understood" (issue 28): below this answer score (pasu.slu.answer_score) a result says
    # understood=false; None: the threshold calibrated beside the model (rejection.json), else 0
    # (only answers without words are rejected)
    rejection_threshold: float | None = None

    # idempotent retries
    idempotency_window_s: float = 600.0
    idempotency_cache_size: int = 10000

    # security
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None  # given → mutual TLS (client certificates required)
    bearer_tokens: tuple[str, ...] = field(default=(), repr=False)  # never printed

    # lifecycle
    grace_s: float = 10.0  # in-flight calls get this long to finish on shutdown
    drain_s: float = 0.0  # NOT_SERVING this long before refusing new calls (load balancers)
    max_workers: int = 64  # gRPC handler threads (each blocks while its request is decoded)

    def __post_init__(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ValueError(msg)

        need(0 <= self.port <= 65535, f"port must be in [0, 65535], got {self.port}")
        need(self.max_batch_size >= 1, f"max_batch_size must be >= 1, got {self.max_batch_size}")
        need(self.max_batch_wait_ms >= 0, f"max_batch_wait_ms must be >= 0, got {self.max_batch_wait_ms}")
        need(self.max_queue >= 1, f"max_queue must be >= 1, got {self.max_queue}")
        need(self.max_message_bytes >= 1024, f"max_message_bytes must be >= 1024, got {self.max_message_bytes}")
        need(self.max_audio_seconds > 0, f"max_audio_seconds must be > 0, got {self.max_audio_seconds}")
        need(
            bool(self.allowed_sample_rates) and all(r > 0 for r in self.allowed_sample_rates),
            "allowed_sample_rates must be positive rates",
        )
        need(
            1 <= self.default_beam_size <= self.max_beam_size,
            f"need 1 <= default_beam_size <= max_beam_size, got {self.default_beam_size}, {self.max_beam_size}",
        )
        need(
            1 <= self.default_nbest <= self.max_nbest,
            f"need 1 <= default_nbest <= max_nbest, got {self.default_nbest}, {self.max_nbest}",
        )
        need(self.interim_beam_size >= 1, "interim_beam_size must be >= 1")
        need(self.reuse in REUSE_POLICIES, f"reuse must be one of {REUSE_POLICIES}, got {self.reuse!r}")
        need(self.reuse_tolerance >= 0, f"reuse_tolerance must be >= 0, got {self.reuse_tolerance}")
        need(
            self.rejection_threshold is None or 0.0 <= self.rejection_threshold <= 1.0,
            f"rejection_threshold must be in [0, 1], got {self.rejection_threshold}",
        )
        need(self.idempotency_window_s >= 0, "idempotency_window_s must be >= 0")
        need(self.idempotency_cache_size >= 0, "idempotency_cache_size must be >= 0")
        need((self.tls_cert is None) == (self.tls_key is None), "tls_cert and tls_key go together")
        need(self.tls_client_ca is None or self.tls_cert is not None, "tls_client_ca needs tls_cert and tls_key")
        need(all(t and t.strip() == t for t in self.bearer_tokens), "bearer tokens must be non-empty, no spaces")
        need(self.grace_s >= 0 and self.drain_s >= 0, "grace_s and drain_s must be >= 0")

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    @property
    def grpc_receive_limit(self) -> int:
        """gRPC's own hard cap, above ours, so an oversized message still reaches the
        service and gets a precise INVALID_ARGUMENT rather than gRPC's RESOURCE_EXHAUSTED
        (which clients are told to retry)."""
        return 2 * self.max_message_bytes + 64 * 1024

    def with_(self, **changes) -> WorkerConfig:
        return replace(self, **changes)
