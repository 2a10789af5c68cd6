"""The ``pasu.v1.SpeechService`` servicer: validate, queue, wait, answer.

Handlers only check requests and translate: the work happens in the
:class:`~pasu.cloud.batcher.Batcher` thread, the retry bookkeeping in the
:class:`~pasu.cloud.idempotency.IdempotencyCache`. Every exception a client can
cause maps to one status code here, in :func:`status_for`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import grpc

from pasu.cloud import reuse as reuse_mod
from pasu.cloud.audio_input import AudioAssembler, InvalidRequest
from pasu.cloud.batcher import Batcher, QueueFull
from pasu.cloud.config import WorkerConfig
from pasu.cloud.idempotency import IdempotencyCache
from pasu.cloud.jobs import Job, JobDropped, Outcome
from pasu.cloud.metrics import WorkerMetrics
from pasu.cloud.wire import Undecodable
from pasu.decoding.options import DecodingOptions
from pasu.models import LoadedModel
from pasu.slu import answer_score, model_rejection_threshold, rejection_reason, split_intent
from pasu.v1 import hypothesis_pb2, recognition_pb2, speech_service_pb2, speech_service_pb2_grpc
from pasu.wire import duration as _duration
from pasu.wire import scorer_scores

log = logging.getLogger(__name__)

SERVICE_NAME = speech_service_pb2.DESCRIPTOR.services_by_name["SpeechService"].full_name
_POLL_S = 0.05  # how often a waiting handler checks that its caller is still there


class NotReady(Exception):
    """The model is still loading, or the worker is shutting down."""


class CallGone(Exception):
    """The caller cancelled or its deadline passed while we waited."""

    def __init__(self, code: grpc.StatusCode) -> None:
        super().__init__(code.name)
        self.code = code


def status_for(e: BaseException) -> tuple[grpc.StatusCode, str]:
    """The gRPC status a client gets for an exception raised while serving it."""
    if isinstance(e, InvalidRequest):
        return grpc.StatusCode.INVALID_ARGUMENT, str(e)
    if isinstance(e, QueueFull):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, f"{e}; retry later with the same request_id"
    if isinstance(e, NotReady):
        return grpc.StatusCode.UNAVAILABLE, str(e)
    if isinstance(e, CallGone):
        return e.code, "the call ended before its result was ready"
    if isinstance(e, JobDropped):
        if e.reason == "deadline":
            return grpc.StatusCode.DEADLINE_EXCEEDED, "the deadline passed before decoding started"
        if e.reason == "shutdown":
            return grpc.StatusCode.UNAVAILABLE, "the server is shutting down; retry with the same request_id"
        return grpc.StatusCode.CANCELLED, "cancelled before decoding started"
    return grpc.StatusCode.INTERNAL, "internal error"


@dataclass
class _Call:
    rpc: str
    request_id: str = ""
    code: str = "OK"
    outcome: Outcome | None = None
    start: float = field(default_factory=time.monotonic)


@dataclass
class WorkerState:
    """What the servicer needs once the model is loaded (None until then)."""

    model: LoadedModel
    batcher: Batcher
    model_info: hypothesis_pb2.ModelInfo
    token_list_id: str


class SpeechService(speech_service_pb2_grpc.SpeechServiceServicer):
    """Handlers for Offload, Recognize and StreamingRecognize."""

    def __init__(self, config: WorkerConfig, metrics: WorkerMetrics) -> None:
        self.config = config
        self.metrics = metrics
        self.cache = IdempotencyCache(config.idempotency_window_s, config.idempotency_cache_size)
        self.state: WorkerState | None = None  # set by the server once the model is loaded
        self._reject_below: float | None = None  # resolved once the model is known

    # -- plumbing --------------------------------------------------------
    def _ready(self) -> WorkerState:
        if self.state is None:
            raise NotReady("the model is still loading; retry shortly")
        return self.state

    @contextmanager
    def _call(self, rpc: str, context: grpc.ServicerContext) -> Iterator[_Call]:
        """Map exceptions to statuses, and count, time and log every call once."""
        call = _Call(rpc)
        try:
            yield call
        except GeneratorExit:  # a streaming client went away
            call.code = "CANCELLED"
            raise
        except Exception as e:
            code, msg = status_for(e)
            call.code = code.name
            if code == grpc.StatusCode.INTERNAL:
                log.exception("internal error", extra={"request_id": call.request_id, "rpc": rpc})
            context.abort(code, msg)
        finally:
            total = time.monotonic() - call.start
            self.metrics.requests.labels(rpc, call.code).inc()
            self.metrics.observe_stage("total", total)
            o = call.outcome
            extra = {"request_id": call.request_id, "rpc": rpc, "status": call.code, "total_s": round(total, 4)}
            if o is not None:
                extra.update(
                    queue_s=round(o.queue_s, 4),
                    encode_s=round(o.encode_s, 4),
                    decode_s=round(o.decode_s, 4),
                    batch_size=o.batch_size,
                )
                if o.reuse is not None:
                    extra["reuse"] = reuse_mod.OUTCOME_NAMES.get(o.reuse, str(o.reuse))
                if o.seed_tokens:
                    extra["seed_tokens"] = o.seed_tokens
            log.info("request", extra=extra)

    def _check_size(self, msg, where: str) -> None:
        if isinstance(msg, Undecodable):
            raise InvalidRequest(f"{where} is not a valid {msg.type_name} message ({msg.error})")
        n = msg.ByteSize()
        if n > self.config.max_message_bytes:
            raise InvalidRequest(f"{where} is {n} bytes, more than max_message_bytes={self.config.max_message_bytes}")

    @staticmethod
    def _check_id(request_id: str, where: str) -> None:
        if not request_id:
            raise InvalidRequest(f"{where}.request_id is empty; send a unique id (e.g. a UUID)")

    def options(self, opts: recognition_pb2.DecodingOptions | None) -> DecodingOptions:
        """Request options after defaults and clamping; values below 1 are refused."""
        cfg = self.config
        beam, nbest = cfg.default_beam_size, cfg.default_nbest
        if opts is not None and opts.HasField("beam_size"):
            if opts.beam_size < 1:
                raise InvalidRequest(f"decoding_options.beam_size must be >= 1, got {opts.beam_size}")
            beam = min(opts.beam_size, cfg.max_beam_size)
        if opts is not None and opts.HasField("nbest"):
            if opts.nbest < 1:
                raise InvalidRequest(f"decoding_options.nbest must be >= 1, got {opts.nbest}")
            nbest = min(opts.nbest, cfg.max_nbest)
        return DecodingOptions(
            beam_size=beam,
            nbest=min(nbest, beam),
            ctc_weight=cfg.ctc_weight,
            penalty=cfg.penalty,
            lm_weight=cfg.lm_weight,
        )

    def _wait(self, job: Job, context: grpc.ServicerContext) -> Outcome:
        """Block until ``job`` is done, or the caller has gone (then let the batcher drop it)."""
        remaining = context.time_remaining()
        deadline = None if remaining is None else time.monotonic() + remaining
        job.attach(deadline)
        try:
            while True:
                try:
                    return job.future.result(timeout=_POLL_S)
                except TimeoutError:
                    pass
                if deadline is not None and time.monotonic() >= deadline:
                    raise CallGone(grpc.StatusCode.DEADLINE_EXCEEDED)
                if not context.is_active():
                    raise CallGone(grpc.StatusCode.CANCELLED)
        finally:
            job.detach()

    def _decode(
        self,
        state: WorkerState,
        call: _Call,
        samples,
        options: DecodingOptions,
        context: grpc.ServicerContext,
        device_seqs: list[list[int]] | None = None,
        device_complete: bool = False,
    ) -> Outcome:
        """Decode once per request_id: join an attempt in flight, or queue a new job."""
        key = (call.rpc, call.request_id)

        def submit() -> Job:
            job = Job(
                samples=samples,
                options=options,
                request_id=call.request_id,
                rpc=call.rpc,
                device_seqs=device_seqs,
                device_complete=device_complete,
            )
            state.batcher.submit(job)
            return job

        job, joined = self.cache.join_or_submit(key, submit)
        if joined:
            self.metrics.idempotent.labels("done" if job.future.done() else "in_flight").inc()
        return self._wait(job, context)

    def _cached(self, call: _Call) -> Outcome | None:
        out = self.cache.lookup((call.rpc, call.request_id))
        if out is not None:
            self.metrics.idempotent.labels("done").inc()
        return out

    def result(self, state: WorkerState, out: Outcome, call: _Call) -> recognition_pb2.RecognitionResult:
        call.outcome = out
        conf = reuse_mod.confidences([e.score for e in out.nbest])
        hyps = [_hypothesis(e, c) for e, c in zip(out.nbest, conf, strict=True)]
        return recognition_pb2.RecognitionResult(
            hypotheses=hyps,
            understood=bool(out.nbest)
            and rejection_reason(out.nbest[0].text, answer_score(out.nbest[0]), self.rejection_threshold(state))
            is None,
            model=state.model_info,
            timing=recognition_pb2.Timing(
                queue_duration=_duration(out.queue_s),
                encode_duration=_duration(out.encode_s),
                decode_duration=_duration(out.decode_s),
                total_duration=_duration(time.monotonic() - call.start),
            ),
            decoding_options=recognition_pb2.DecodingOptions(beam_size=out.options.beam_size, nbest=out.options.nbest),
        )

    def rejection_threshold(self, state: WorkerState) -> float:
        """The configured threshold, else the one calibrated beside the model, else 0 (the
        same rule as the device's, on this model's own score: pasu.slu.rejection_reason)."""
        if self.config.rejection_threshold is not None:
            return self.config.rejection_threshold
        if self._reject_below is None:
            files = getattr(state.model, "files", None)
            found = model_rejection_threshold(files.root if files is not None else None)
            self._reject_below = 0.0 if found is None else found
        return self._reject_below

    def _first_config(self, requests, what: str):
        """The config of a stream's first message, or INVALID_ARGUMENT."""
        first = next(requests, None)
        if first is None:
            raise InvalidRequest(f"the {what} stream is empty; its first message must carry `config`")
        self._check_size(first, "message 1")
        if first.WhichOneof("request") != "config":
            raise InvalidRequest(f"audio before config: the first message of a {what} stream must carry `config`")
        return first.config

    def _open_stream(self, request_iterator, call: _Call, what: str):
        """A client stream's first message: (the rest of the stream, its config, the worker, the
        decoding options), the request id checked and recorded for the log."""
        requests = iter(request_iterator)
        cfg = self._first_config(requests, what)
        call.request_id = cfg.request_id
        self._check_id(cfg.request_id, f"{what}Config")
        state = self._ready()
        return requests, cfg, state, self.options(cfg.decoding_options if cfg.HasField("decoding_options") else None)

    def _read_audio(self, requests, asm: AudioAssembler, what: str, updates: list | None = None) -> Iterator[None]:
        """Feed the rest of a stream into ``asm``, yielding after each chunk (for interim results);
        an Offload stream's latest ``device_update`` is kept in ``updates`` (the rest are dropped)."""
        for n, msg in enumerate(requests, start=2):
            self._check_size(msg, f"message {n}")
            kind = msg.WhichOneof("request")
            if kind == "config":
                raise InvalidRequest(
                    f"second config in the {what} stream (message {n}); only the first message may carry `config`"
                )
            if kind == "device_update" and updates is not None:
                updates[:] = [msg.device_update]
                self.metrics.device_updates.inc()
                continue
            if kind != "audio":
                raise InvalidRequest(f"message {n} of the {what} stream carries neither config nor audio")
            asm.add(msg.audio)
            yield

    # -- RPCs ------------------------------------------------------------
    def Recognize(self, request, context):
        with self._call("Recognize", context) as call:
            call.request_id = request.request_id
            self._check_size(request, "RecognizeRequest")
            self._check_id(request.request_id, "RecognizeRequest")
            state = self._ready()
            options = self.options(request.decoding_options if request.HasField("decoding_options") else None)
            out = self._cached(call)
            if out is None:
                asm = AudioAssembler(request.audio_format, self.config, state.model.sample_rate)
                asm.add(request.audio)
                out = self._decode(state, call, asm.samples(), options, context)
            return speech_service_pb2.RecognizeResponse(
                request_id=call.request_id, result=self.result(state, out, call)
            )

    def Offload(self, request_iterator, context):
        with self._call("Offload", context) as call:
            requests, cfg, state, options = self._open_stream(request_iterator, call, "Offload")
            out = self._cached(call)  # a retry of a finished segment: answer before its audio
            if out is None:
                asm = AudioAssembler(cfg.audio_format, self.config, state.model.sample_rate)
                updates: list[speech_service_pb2.DeviceResult] = []
                for _ in self._read_audio(requests, asm, "Offload", updates):
                    pass
                samples = asm.samples()
                device = updates[-1] if updates else cfg.device_result  # the latest the device sent
                for d in (cfg.device_result, *updates):
                    _check_device_result(d, samples.size / state.model.sample_rate)
                seqs, how = reuse_mod.device_token_ids(device, state.model, state.token_list_id)
                log.debug("device hypotheses via %s", how, extra={"request_id": call.request_id})
                out = self._decode(
                    state, call, samples, options, context, device_seqs=seqs, device_complete=device.complete
                )
            return speech_service_pb2.OffloadResponse(
                request_id=call.request_id,
                result=self.result(state, out, call),
                decoder_reuse=out.reuse or reuse_mod.FULL_DECODE,
            )

    def StreamingRecognize(self, request_iterator, context):
        with self._call("StreamingRecognize", context) as call:
            requests, cfg, state, options = self._open_stream(request_iterator, call, "StreamingRecognize")
            out = self._cached(call)
            if out is None:
                asm = AudioAssembler(cfg.audio_format, self.config, state.model.sample_rate)
                last = 0.0
                for _ in self._read_audio(requests, asm, "StreamingRecognize"):
                    if cfg.interim_results and asm.seconds_received - last >= self.config.interim_interval_s:
                        last = asm.seconds_received
                        interim = self._interim(state, asm, options, call, context)
                        if interim is not None:
                            yield speech_service_pb2.StreamingRecognizeResponse(
                                request_id=call.request_id, interim_result=interim
                            )
                out = self._decode(state, call, asm.samples(), options, context)
            yield speech_service_pb2.StreamingRecognizeResponse(
                request_id=call.request_id, final_result=self.result(state, out, call)
            )

    def _interim(
        self, state: WorkerState, asm: AudioAssembler, options: DecodingOptions, call: _Call, context
    ) -> recognition_pb2.InterimResult | None:
        """Pilot inference on the audio so far with a small beam; skipped, not failed, under load."""
        try:
            samples = asm.samples(partial=True)
        except InvalidRequest:  # e.g. a FLAC stream cut mid-frame: wait for more audio
            return None
        beam = min(self.config.interim_beam_size, options.beam_size)
        job = Job(
            samples=samples,
            options=options.with_(beam_size=beam, nbest=1),
            request_id=call.request_id,
            rpc="StreamingRecognize/interim",
        )
        try:
            state.batcher.submit(job)
        except QueueFull:
            return None
        out = self._wait(job, context)
        conf = reuse_mod.confidences([e.score for e in out.nbest])
        return recognition_pb2.InterimResult(
            hypotheses=[_hypothesis(e, c) for e, c in zip(out.nbest, conf, strict=True)],
            audio_end_offset=_duration(samples.size / state.model.sample_rate),
        )


def _hypothesis(e, confidence: float) -> hypothesis_pb2.Hypothesis:
    """The wire form: the intent label apart from the transcript (as the proto documents)."""
    intent, transcript = split_intent(e.text)
    return hypothesis_pb2.Hypothesis(
        text=transcript,
        intent=intent or "",
        token_ids=e.token_ids,
        scores=scorer_scores(e),
        confidence=confidence,
    )


MAX_DEVICE_HYPOTHESES = 16
MAX_TOKENS_PER_SECOND = 50  # far above any speech rate: a longer "hypothesis" is not one


def _check_device_result(device: speech_service_pb2.DeviceResult, seconds: float) -> None:
    """Bound what a device may ask the worker to rescore (one batching thread serves everyone)."""
    if len(device.hypotheses) > MAX_DEVICE_HYPOTHESES:
        raise InvalidRequest(
            f"device_result has {len(device.hypotheses)} hypotheses; at most {MAX_DEVICE_HYPOTHESES} are accepted"
        )
    limit = int(MAX_TOKENS_PER_SECOND * max(seconds, 1.0))
    for i, h in enumerate(device.hypotheses):
        if len(h.token_ids) > limit:
            raise InvalidRequest(
                f"device_result.hypotheses[{i}] has {len(h.token_ids)} token ids, more than "
                f"{limit} for {seconds:.2f} s of audio"
            )
