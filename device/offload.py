"""gRPC client for ``SpeechService.Offload``: stream a segment while it is spoken, with retries.

An :class:`OffloadCall` is opened as soon as the policy decides (possibly at a
pilot, before the segment ends). A sender thread streams the config, the audio
so far, and then each new chunk as the agent pushes it; ``finish()`` marks the
end of the segment. Every attempt replays the whole segment under the *same*
``request_id``, so the server answers a retry of a finished segment from its
cache instead of decoding it twice. Only UNAVAILABLE, DEADLINE_EXCEEDED and
RESOURCE_EXHAUSTED are retried, with exponential backoff; everything is bounded
by the deadlines of :class:`~pasu.device.config.CloudClientConfig`, so the
caller always gets an answer or an :class:`OffloadError` in time to fall back.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import grpc

from pasu.device.config import CloudClientConfig
from pasu.slu import join_intent
from pasu.v1 import audio_pb2, recognition_pb2, speech_service_pb2, speech_service_pb2_grpc
from pasu.wire import device_result as device_result  # the agent's message; re-exported for it
from pasu.wire import duration as _duration

log = logging.getLogger(__name__)

RETRYABLE = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED}
)
REASONS = {
    "low_confidence": speech_service_pb2.OFFLOAD_REASON_LOW_CONFIDENCE,
    "policy_always": speech_service_pb2.OFFLOAD_REASON_POLICY_ALWAYS,
    "latency": speech_service_pb2.OFFLOAD_REASON_LATENCY,
    "budget": speech_service_pb2.OFFLOAD_REASON_BUDGET,
}
REUSE_NAMES = {
    v.number: v.name.removeprefix("DECODER_REUSE_").lower()
    for v in speech_service_pb2.DESCRIPTOR.enum_types_by_name["DecoderReuse"].values
}
_POLL_S = 0.02


def new_request_id() -> str:
    return uuid.uuid4().hex


class OffloadError(Exception):
    """The cloud did not answer usefully; ``code`` is the last gRPC status (or a local reason)."""

    def __init__(self, code: str, message: str, attempts: int) -> None:
        super().__init__(f"{code}: {message} (after {attempts} attempt{'s' if attempts != 1 else ''})")
        self.code = code
        self.attempts = attempts


@dataclass(frozen=True)
class CloudHypothesis:
    text: str  # as the model spells it: the intent label first, if any
    token_ids: list[int]
    score: float
    confidence: float


@dataclass(frozen=True)
class CloudAnswer:
    request_id: str
    nbest: list[CloudHypothesis]
    model: str
    server_s: float  # the server's total_duration
    timing: dict[str, float]
    decoder_reuse: str
    attempts: int
    wait_s: float  # from finish() (end of segment) to the answer
    understood: bool | None = None  # RecognitionResult.understood; None: an older server


def _seconds(d) -> float:
    return d.ToNanoseconds() / 1e9


def offload_config(
    request_id: str,
    reason: str,
    device: speech_service_pb2.DeviceResult | None,
    start_s: float,
    end_s: float | None,
    sample_rate: int = 16000,
    nbest: int | None = None,
) -> speech_service_pb2.OffloadConfig:
    cfg = speech_service_pb2.OffloadConfig(
        request_id=request_id,
        audio_format=audio_pb2.AudioFormat(encoding=audio_pb2.AUDIO_ENCODING_LINEAR16, sample_rate_hz=sample_rate),
        reason=REASONS.get(reason, speech_service_pb2.OFFLOAD_REASON_UNSPECIFIED),
    )
    if device is not None:
        cfg.device_result.CopyFrom(device)
    cfg.segment.start_offset.CopyFrom(_duration(start_s))
    if end_s is not None:
        cfg.segment.end_offset.CopyFrom(_duration(end_s))
    if nbest is not None:
        cfg.decoding_options.CopyFrom(recognition_pb2.DecodingOptions(nbest=nbest))
    return cfg


class CloudClient:
    """One channel to the cloud, shared by every segment's :class:`OffloadCall`."""

    def __init__(self, config: CloudClientConfig, max_segment_s: float = 20.0) -> None:
        if not config.target:
            raise ValueError("CloudClient needs a target (host:port)")
        self.config = config
        self.max_segment_s = max_segment_s
        self.channel = make_channel(config)
        self.stub = speech_service_pb2_grpc.SpeechServiceStub(self.channel)
        self.metadata: tuple[tuple[str, str], ...] = ()
        if config.bearer_token:
            if not config.tls:
                log.warning("sending a bearer token without TLS to %s", config.target)
            self.metadata = (("authorization", f"Bearer {config.bearer_token}"),)

    def open(self, config: speech_service_pb2.OffloadConfig, sample_rate: int = 16000) -> OffloadCall:
        """Start streaming one segment now; push audio into the returned call."""
        return OffloadCall(self, config, sample_rate)

    def close(self) -> None:
        self.channel.close()


def make_channel(config: CloudClientConfig) -> grpc.Channel:
    """Insecure or TLS (mTLS with a client cert); round-robin LB over every address a
    ``dns:///`` target resolves to."""
    options: list[tuple[str, object]] = [("grpc.enable_retries", 0)]  # retries are ours, with the same id
    if config.load_balancing:
        options.append(("grpc.lb_policy_name", config.load_balancing))
    if config.server_name:
        options.append(("grpc.ssl_target_name_override", config.server_name))
    if not config.target:
        raise ValueError("no cloud target (host:port)")
    if config.root_cert is None:  # not config.tls
        return grpc.insecure_channel(config.target, options=options)
    root = config.root_cert.read_bytes()
    key = config.client_key.read_bytes() if config.client_key else None
    chain = config.client_cert.read_bytes() if config.client_cert else None
    creds = grpc.ssl_channel_credentials(root_certificates=root, private_key=key, certificate_chain=chain)
    return grpc.secure_channel(config.target, creds, options=options)


@dataclass
class _Attempt:
    stop: threading.Event = field(default_factory=threading.Event)


class OffloadCall:
    """One offloaded segment: audio in with :meth:`push`, :meth:`finish`, then :meth:`wait`."""

    def __init__(self, client: CloudClient, config: speech_service_pb2.OffloadConfig, sample_rate: int) -> None:
        self.client = client
        self.cfg = client.config
        self.config = config
        self.request_id = config.request_id
        self.sample_rate = sample_rate
        self.chunk_bytes = max(2, 2 * int(sample_rate * self.cfg.chunk_ms / 1000))
        self.opened_at = time.monotonic()
        self.finished_at: float | None = None
        self.attempts = 0
        self.request_ids: list[str] = []  # one per attempt (they are all the same)
        self.tail_bytes = 0  # audio not yet sent when the segment ended
        self._buf = bytearray()
        self._sent = 0  # bytes the current attempt has yielded
        self._update: speech_service_pb2.DeviceResult | None = None  # the device's latest n-best
        self._updates = 0  # how many update() calls so far (each attempt sends the latest once)
        self._cond = threading.Condition()
        self._done = threading.Event()
        self._answer: CloudAnswer | None = None
        self._error: OffloadError | None = None
        self._cancelled = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"pasu-offload-{self.request_id[:8]}", daemon=True)
        self._thread.start()

    # -- the agent's side --------------------------------------------------
    def push(self, pcm16: bytes) -> None:
        if not pcm16:
            return
        with self._cond:
            if self.finished_at is not None:
                raise RuntimeError("push() after finish()")
            self._buf += pcm16
            self._cond.notify_all()

    def update(self, device: speech_service_pb2.DeviceResult) -> None:
        """A newer device n-best (a later pilot's): sent before the audio that follows, so the
        cloud can seed its search with the device's latest hypothesis (``reuse=seed``)."""
        with self._cond:
            if self.finished_at is not None:
                return  # the segment is over: the cloud may be decoding already
            self._update = device
            self._updates += 1
            self._cond.notify_all()

    def finish(self) -> None:
        """The segment ended: no more audio; from now on the deadlines run."""
        with self._cond:
            if self.finished_at is None:
                self.finished_at = time.monotonic()
                self.tail_bytes = max(0, len(self._buf) - self._sent)
            self._cond.notify_all()

    def deadline(self) -> float:
        """When the caller stops waiting, whatever happens (monotonic)."""
        if self.finished_at is None:
            return self.opened_at + self.client.max_segment_s + self.cfg.total_deadline_s
        return self.finished_at + self.cfg.total_deadline_s

    def wait(self) -> CloudAnswer:
        """The cloud's answer, or OffloadError — at the latest at :meth:`deadline`."""
        self.finish()
        while not self._done.is_set():
            left = self.deadline() - time.monotonic()
            if left <= 0:
                self.cancel()
                raise OffloadError("DEADLINE_EXCEEDED", "no answer within total_deadline_s", self.attempts)
            self._done.wait(min(left, 0.05))
        if self._error is not None:
            raise self._error
        assert self._answer is not None
        return self._answer

    def cancel(self) -> None:
        self._cancelled.set()
        with self._cond:
            self._cond.notify_all()

    # -- the sender thread -------------------------------------------------
    def _requests(self, attempt: _Attempt) -> Iterator[speech_service_pb2.OffloadRequest]:
        """Config, then the whole segment from its start (a retry replays it), as it arrives,
        with the device's latest n-best whenever it has a newer one."""
        yield speech_service_pb2.OffloadRequest(config=self.config)
        pos = sent_updates = 0
        while True:
            with self._cond:
                while (
                    pos >= len(self._buf)
                    and sent_updates == self._updates
                    and self.finished_at is None
                    and not attempt.stop.is_set()
                ):
                    self._cond.wait(0.05)
                if attempt.stop.is_set() or self._cancelled.is_set():
                    return
                update = self._update if sent_updates != self._updates else None
                sent_updates = self._updates
                if update is None and pos >= len(self._buf) and self.finished_at is not None:
                    return
                chunk = b""
                if update is None:
                    chunk = bytes(self._buf[pos : pos + self.chunk_bytes])
                    pos += len(chunk)
                    self._sent = max(self._sent, pos)
            if update is not None:
                yield speech_service_pb2.OffloadRequest(device_update=update)
            else:
                yield speech_service_pb2.OffloadRequest(audio=chunk)

    def _attempt_deadline(self, started: float) -> float:
        base = started if self.finished_at is None else max(started, self.finished_at)
        limit = base + self.cfg.deadline_s if self.finished_at is not None else float("inf")
        return min(limit, self.deadline())

    def _run(self) -> None:
        backoff = self.cfg.backoff_initial_s
        code, message = "UNAVAILABLE", "no attempt made"
        try:
            while self.attempts < self.cfg.max_attempts and not self._cancelled.is_set():
                self.attempts += 1
                self.request_ids.append(self.config.request_id)
                started = time.monotonic()
                remaining = self.deadline() - started
                if remaining <= 0:
                    code, message = "DEADLINE_EXCEEDED", "no time left for another attempt"
                    break
                attempt = _Attempt()
                future = self.client.stub.Offload.future(
                    self._requests(attempt), timeout=remaining, metadata=self.client.metadata
                )
                try:
                    response = self._await(future, started)
                    self._answer = self._parse(response)
                    return
                except grpc.RpcError as e:
                    status = e.code() if hasattr(e, "code") else grpc.StatusCode.UNKNOWN
                    code, message = status.name, (e.details() if hasattr(e, "details") else str(e)) or status.name
                    retry = status in RETRYABLE
                except _AttemptTimeout:
                    code, message, retry = (
                        "DEADLINE_EXCEEDED",
                        f"no answer within deadline_s={self.cfg.deadline_s}",
                        True,
                    )
                except _Cancelled:
                    code, message, retry = "CANCELLED", "the agent stopped waiting", False
                except ValueError as e:  # an answer we cannot use (e.g. empty n-best)
                    code, message, retry = "INVALID_ANSWER", str(e), False
                finally:
                    attempt.stop.set()
                    with self._cond:
                        self._cond.notify_all()
                log.info(
                    "offload attempt failed",
                    extra={"request_id": self.request_id, "attempt": self.attempts, "code": code, "detail": message},
                )
                if not retry or self.attempts >= self.cfg.max_attempts:
                    break
                pause = min(backoff, self.cfg.backoff_max_s) * (0.5 + random.random() / 2)
                if time.monotonic() + pause >= self.deadline() or self._cancelled.wait(pause):
                    code, message = code, f"{message}; no time left to retry"
                    break
                backoff *= self.cfg.backoff_multiplier
            self._error = OffloadError(code, message, self.attempts)
        except BaseException as e:  # never leave the caller waiting on a dead thread
            log.exception("offload sender failed")
            self._error = OffloadError("INTERNAL", repr(e), self.attempts)
        finally:
            self._done.set()

    def _await(self, future: grpc.Future, started: float):
        while True:
            try:
                return future.result(timeout=_POLL_S)
            except grpc.FutureTimeoutError:
                pass
            if self._cancelled.is_set():
                future.cancel()
                raise _Cancelled()
            if time.monotonic() >= self._attempt_deadline(started):
                future.cancel()
                raise _AttemptTimeout()

    def _parse(self, response: speech_service_pb2.OffloadResponse) -> CloudAnswer:
        r = response.result
        if response.request_id and response.request_id != self.request_id:
            raise ValueError(f"answer for request {response.request_id!r}, expected {self.request_id!r}")
        if not r.hypotheses:
            raise ValueError("the cloud answered with no hypotheses")
        nbest = [
            CloudHypothesis(
                text=join_intent(h.intent, h.text),
                token_ids=list(h.token_ids),
                score=h.scores.total,
                confidence=h.confidence,
            )
            for h in r.hypotheses
        ]
        t = r.timing
        timing = {
            "queue_s": _seconds(t.queue_duration),
            "encode_s": _seconds(t.encode_duration),
            "decode_s": _seconds(t.decode_duration),
            "total_s": _seconds(t.total_duration),
        }
        now = time.monotonic()
        wait = now - (self.finished_at or now)
        return CloudAnswer(
            self.request_id,
            nbest,
            r.model.name,
            timing["total_s"],
            timing,
            REUSE_NAMES.get(response.decoder_reuse, "unspecified"),
            self.attempts,
            wait,
            understood=r.understood if r.HasField("understood") else None,
        )


class _AttemptTimeout(Exception):
    pass


class _Cancelled(Exception):
    pass
