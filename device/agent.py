"""The device agent: VAD segments → pilot sessions → offramp decisions → local or cloud answer.

Audio goes in as chunks (files, stdin, a microphone). Each VAD segment gets a
:class:`~pasu.streaming.StreamingSession`; after each pilot the confidence
estimator scores it and the policy may offload right then — an
:class:`~pasu.device.offload.OffloadCall` starts streaming the audio so far
and keeps streaming the rest as it arrives. At the end of the segment the
local final pass runs in any case (it is the fallback, and it costs little
after the pilots); a segment not offloaded yet gets one last decision. One
finisher thread answers segments in order, so ingestion never waits for it.

Every segment that starts gets exactly one answer: a cloud that is slow, down
or wrong leaves the device's own result, marked ``fallback``. An answer is
*understood* only if it passes :func:`pasu.slu.rejection_reason` (an intent,
words after it, confidence at the rejection threshold); otherwise the record
says ``understood: false`` and keeps the best guess. A segment whose final
device hypothesis has no words is judged non-speech and is not offloaded.

The model runs on either runtime (:data:`pasu.device.config.RUNTIMES`): ``torch`` (an ESPnet model
directory, :meth:`DeviceAgent.from_path`) or ``onnx`` (a ``pasu export`` directory on
onnxruntime, :meth:`DeviceAgent.from_export`), which imports neither torch nor ESPnet:
the agent only needs a :class:`~pasu.decoding.backend.RecognizerBackend`.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pasu.decoding.backend import RecognizerBackend
from pasu.device.config import AgentConfig
from pasu.device.features import Estimator, FeatureTracker
from pasu.device.offload import CloudClient, OffloadCall, OffloadError, device_result, new_request_id, offload_config
from pasu.device.output import SegmentOutcome, interim_record, segment_record
from pasu.device.policy import DecisionContext, OffloadPolicy
from pasu.device.vad import VadSegmenter, not_speech_reason, to_int16
from pasu.slu import rejection_reason, split_intent
from pasu.streaming.session import FinalResult, StreamingSession

if TYPE_CHECKING:
    from pasu.models import LoadedModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelIdentity:
    """The device model as the cloud is told of it, and where its files are."""

    name: str
    version: str
    token_list: list[str] | None  # None: the cloud re-tokenizes the text
    root: Path | None = None  # the model's directory (a shipped estimator lives there)


def _is_backend(model: object) -> bool:
    return callable(getattr(model, "encode_audio", None)) and callable(getattr(model, "decode", None))


class DeviceAgent:
    """Segments a stream and answers each segment, locally or through the cloud."""

    def __init__(
        self,
        config: AgentConfig,
        model: LoadedModel | RecognizerBackend,
        estimator: Estimator | None = None,
        client: CloudClient | None = None,
        identity: ModelIdentity | None = None,
    ) -> None:
        """``model``: a loaded ESPnet model (run by the torch :class:`Recognizer` with
        ``config.decoding``), or any recognizer backend with its ``identity``."""
        self.config = config
        if _is_backend(model):
            if identity is None:
                raise ValueError("a recognizer backend needs the model's identity (ModelIdentity)")
            self.recognizer: RecognizerBackend = model  # type: ignore[assignment]
        else:
            from pasu.decoding.recognizer import Recognizer

            loaded: LoadedModel = model  # type: ignore[assignment]
            self.recognizer = Recognizer(loaded, config.decoding)
            if identity is None:
                identity = ModelIdentity(loaded.name, loaded.version, list(loaded.token_list), loaded.files.root)
        self.identity = identity
        self.rate = self.recognizer.sample_rate
        if self.rate != config.vad.sample_rate:
            raise ValueError(f"the model runs at {self.rate} Hz, the agent at {config.vad.sample_rate} Hz")
        self.estimator: Estimator = estimator or _torch_estimator(identity.root, config.confidence)
        self.reject_below = self._rejection_threshold()
        chunk_bytes = 2 * int(self.rate * config.cloud.chunk_ms / 1000)
        self.policy = OffloadPolicy(config.policy, tail_bytes=chunk_bytes)
        self._own_client = False
        if client is None and config.cloud.target and config.policy.kind != "never":
            client = CloudClient(config.cloud, max_segment_s=config.vad.max_segment_s)
            self._own_client = True
        if client is None and config.policy.kind != "never":
            log.warning("policy %r without a cloud (--cloud): every segment stays local", config.policy.kind)
        self.client = client
        self._finisher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pasu-finish")

    def _rejection_threshold(self) -> float:
        """The configured threshold, else the one calibrated for the estimator, else 0:
        a threshold belongs to one estimator's scale, so it travels in its metadata."""
        if self.config.rejection_threshold is not None:
            return self.config.rejection_threshold
        t = self.estimator.rejection_threshold
        if t is None:
            log.warning(
                "the confidence estimator has no calibrated rejection threshold; only answers "
                "without words are rejected (set AgentConfig.rejection_threshold)"
            )
            return 0.0
        return t

    @classmethod
    def from_path(cls, config: AgentConfig, model_path, **kw) -> DeviceAgent:
        """The torch runtime on an ESPnet model directory."""
        from pasu.models import load_model

        return cls(config, load_model(model_path, config.device), **kw)

    @classmethod
    def from_export(cls, config: AgentConfig, export_dir: str | Path, **kw) -> DeviceAgent:
        """The onnx runtime on a ``pasu export`` directory: its graphs, its confidence
        estimator (unless ``config.confidence`` names a torch one) and its VAD model."""
        from pasu.device.onnx_confidence import export_estimator
        from pasu.lite.model import LiteModel
        from pasu.lite.recognizer import LiteRecognizer

        if config.device != "cpu":
            raise ValueError(f"the onnx runtime runs on the CPU (onnxruntime); --device {config.device} is for torch")
        lite = LiteModel(export_dir)
        m = lite.manifest
        vad = m.get("vad")
        if vad and config.vad.silero_model is None:
            config = config.with_(vad=replace(config.vad, silero_model=lite.root / vad["file"]))
        if "estimator" not in kw:
            kw["estimator"] = _torch_estimator(None, config.confidence) if config.confidence else export_estimator(lite)
        identity = ModelIdentity(str(m["model"]["name"]), str(m["model"]["version"]), list(m["tokens"]), lite.root)
        return cls(config, LiteRecognizer(lite, config.decoding), identity=identity, **kw)

    def close(self) -> None:
        self._finisher.shutdown(wait=True)
        if self._own_client and self.client is not None:
            self.client.close()

    def __enter__(self) -> DeviceAgent:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- a stream ----------------------------------------------------------
    def process(self, chunks: Iterable[np.ndarray], name: str = "-") -> Iterator[dict]:
        """Records (JSON-ready dicts) for a stream of 16 kHz chunks: interim ones as pilots
        run (if configured), one per segment as segments are answered, in order."""
        vad = VadSegmenter(self.config.vad)
        runs: dict[int, _SegmentRun] = {}
        pending: deque[Future] = deque()
        out: list[dict] = []

        def handle(events) -> None:
            for ev in events:
                if ev.kind == "start":
                    runs[ev.segment] = _SegmentRun(self, name, ev.segment, ev.at / self.rate)
                elif ev.kind == "audio":
                    out.extend(runs[ev.segment].feed(ev.audio))
                else:
                    run = runs.pop(ev.segment)
                    run.end(ev.at / self.rate, ev.cut, ev.speech_s)
                    pending.append(self._finisher.submit(run.finish))

        failure: Exception | None = None
        try:
            for chunk in chunks:
                handle(vad.push(to_int16(chunk)))
                yield from out
                out.clear()
                while pending and pending[0].done():
                    yield pending.popleft().result()
            handle(vad.flush())
        except Exception as e:  # the input failed mid-stream: still answer what was heard
            log.error("input %s failed: %s", name, e)
            failure = e
        for run in runs.values():
            run.end(vad.pos / self.rate, cut=True)
            pending.append(self._finisher.submit(run.finish))
        runs.clear()
        yield from out
        while pending:
            yield pending.popleft().result()
        if failure is not None:
            raise failure


class _SegmentRun:
    """One segment from its VAD start to its answer."""

    def __init__(self, agent: DeviceAgent, name: str, index: int, start_s: float) -> None:
        self.a = agent
        self.name = name
        self.index = index
        self.start_s = start_s
        self.end_s: float | None = None
        self.cut = False
        self.speech_s: float | None = None  # the VAD's speech in the segment, once it ended
        self.not_speech: str | None = None  # the VAD's verdict on the segment's audio (at the end)
        cfg = agent.config
        self.session = StreamingSession(agent.recognizer, cfg.streaming, background=cfg.background)
        self.tracker = FeatureTracker()
        self._pcm: list[bytes] = []
        self._seen_pilots = 0
        self.samples = 0
        self.call: OffloadCall | None = None
        self.reason: str | None = None
        self.stage: str | None = None
        self.confidence = 0.0
        self.t_end: float | None = None
        self.breakdown: dict[str, float] = {}
        self._decide(DecisionContext("start", None, 0.0, 0))

    # -- ingestion thread ----------------------------------------------------
    def feed(self, audio: np.ndarray) -> list[dict]:
        self.session.feed(audio)
        pcm = audio.astype("<i2").tobytes()
        self._pcm.append(pcm)
        self.samples += audio.size
        if self.call is not None:
            self.call.push(pcm)
        out = self._new_pilots(decide=True)
        if self.call is None:  # the slo policy's capacity check (the others stay here)
            self._decide(DecisionContext("chunk", None, self.samples / self.a.rate, self._seen_pilots))
        return out

    def _new_pilots(self, decide: bool) -> list[dict]:
        out = []
        pilots = self.session.pilots
        while self._seen_pilots < len(pilots):
            rec = pilots[self._seen_pilots]
            self._seen_pilots += 1
            self.tracker.pilot(rec)
            conf = self.a.estimator.score(self.tracker)
            self.confidence = conf
            if self.a.config.interim and rec.nbest:
                out.append(interim_record(self.name, self.index, self.start_s, rec.audio_s, rec.nbest[0].text, conf))
            if decide and self.call is None:
                self._decide(DecisionContext("pilot", conf, rec.audio_s, self._seen_pilots), rec.nbest)
            elif self.call is not None and rec.nbest:  # offloaded: the cloud may continue this pilot's
                m = self.a.identity
                self.call.update(device_result(rec.nbest, m.name, m.version, m.token_list, conf, complete=False))
        return out

    def end(self, end_s: float, cut: bool, speech_s: float | None = None) -> None:
        self.end_s, self.cut, self.speech_s = end_s, cut, speech_s
        self.t_end = time.perf_counter()
        if self.call is not None:
            self.call.finish()
        else:  # end of speech, before the final pass: the slo policy's last capacity check
            self._decide(DecisionContext("end", None, self.samples / self.a.rate, self._seen_pilots))

    def _decide(self, ctx: DecisionContext, nbest=None, final: FinalResult | None = None) -> None:
        d = self.a.policy.decide(ctx)
        if not d.offload or self.a.client is None:
            return
        self.reason, self.stage = d.reason, ctx.stage
        m = self.a.identity
        dev = None
        hyps = final.nbest if final is not None else nbest
        if hyps:
            dev = device_result(
                hyps, m.name, m.version, m.token_list, ctx.confidence or 0.0, complete=final is not None
            )
        cfg = offload_config(
            new_request_id(), d.reason or "", dev, self.start_s, self.end_s, self.a.rate, self.a.config.cloud.nbest
        )
        t0 = time.perf_counter()
        self.call = self.a.client.open(cfg, self.a.rate)
        backlog = b"".join(self._pcm)
        self.call.push(backlog)
        if self.end_s is not None:
            self.call.finish()
        log.debug(
            "offloading",
            extra={
                "request_id": cfg.request_id,
                "stage": ctx.stage,
                "reason": d.reason,
                "confidence": ctx.confidence,
                "heard_s": ctx.audio_s,
            },
        )
        self.breakdown["offload_open_ms"] = 1000 * (time.perf_counter() - t0)

    # -- finisher thread -----------------------------------------------------
    def finish(self) -> dict:
        """Local final pass, last decision, cloud answer or fallback: always one record."""
        try:
            return segment_record(self._finish())
        except BaseException as e:  # the last line of defence: never lose a segment
            log.exception("segment %d of %s failed", self.index, self.name)
            return segment_record(self._outcome("", 0.0, error=f"internal error: {e!r}", reject_reason="error"))

    def _finish(self) -> SegmentOutcome:
        t0 = time.perf_counter()
        final: FinalResult | None = None
        error = None
        try:
            final = self.session.finalize()
        except Exception as e:  # e.g. too short for the encoder
            error = f"local decode failed: {e}"
            log.warning("segment %d of %s: %s", self.index, self.name, error)
        local_s = time.perf_counter() - t0
        self.breakdown["local_final_ms"] = 1000 * local_s
        self._new_pilots(decide=False)  # pilots a background worker ran after the last feed
        if final is not None:
            self.tracker.final(final)
            self.confidence = self.a.estimator.score(self.tracker)
            self.a.policy.link.observe_local(local_s, self.samples / self.a.rate)
        else:
            self.confidence = 0.0
        self.breakdown["confidence_ms"] = 1000 * (time.perf_counter() - t0) - self.breakdown["local_final_ms"]
        if self.speech_s is not None:  # the segment ended (not cut off by a failing input)
            self.not_speech = not_speech_reason(self.speech_s, np.frombuffer(b"".join(self._pcm), dtype="<i2"))
        best = final.best if final is not None else None
        text = best.text if best else ""
        if self.call is None:
            heard = self.samples / self.a.rate
            # no words, or audio the VAD judged no command: never the cloud's to answer
            words = bool(split_intent(text)[1].strip()) and self.not_speech is None
            self._decide(DecisionContext("final", self.confidence, heard, self._seen_pilots, words=words), final=final)
        local_reject = rejection_reason(text, self.confidence, self.a.reject_below, self.not_speech)
        if self.call is None:
            self.a.policy.segment_done(False)
            return self._outcome(text, self.confidence, error=error, reject_reason=local_reject)
        t1 = time.perf_counter()
        try:
            ans = self.call.wait()
        except OffloadError as e:
            self.breakdown["cloud_wait_ms"] = 1000 * (time.perf_counter() - t1)
            log.warning("segment %d of %s: cloud failed (%s); answering locally", self.index, self.name, e)
            self.a.policy.segment_done(True)
            err = f"cloud: {e}" + (f"; {error}" if error else "")
            return self._outcome(
                text,
                self.confidence,
                fallback=True,
                error=err,
                cloud={"attempts": e.attempts, "code": e.code},
                reject_reason=local_reject,
            )
        self.breakdown["cloud_wait_ms"] = 1000 * (time.perf_counter() - t1)
        self.breakdown["cloud_server_ms"] = 1000 * ans.server_s
        self.a.policy.link.observe_call(ans.wait_s, ans.server_s, self.call.tail_bytes)
        self.a.policy.segment_done(True)
        top = ans.nbest[0]
        # The cloud applies the same rule with its own threshold and says so in the result's
        # `understood`; the words part needs no threshold and is checked here too.
        cloud_reject = rejection_reason(top.text, top.confidence, 0.0, self.not_speech)
        if cloud_reject is None and getattr(ans, "understood", None) is False:
            cloud_reject = "low_confidence"
        return self._outcome(
            top.text,
            top.confidence,
            source="cloud",
            error=None,
            reject_reason=cloud_reject,
            cloud={
                "model": ans.model,
                "attempts": ans.attempts,
                "decoder_reuse": ans.decoder_reuse,
                "timing": {k: round(v * 1000, 1) for k, v in ans.timing.items()},
            },
        )

    def _outcome(
        self,
        text: str,
        confidence: float,
        source: str = "device",
        fallback: bool = False,
        error: str | None = None,
        cloud: dict | None = None,
        reject_reason: str | None = None,
    ) -> SegmentOutcome:
        now = time.perf_counter()
        latency = 1000 * (now - self.t_end) if self.t_end is not None else 0.0
        return SegmentOutcome(
            file=self.name,
            index=self.index,
            start_s=self.start_s,
            end_s=self.end_s or self.start_s,
            text=text,
            confidence=confidence,
            device_confidence=self.confidence,
            source=source,
            offloaded=self.call is not None,
            offload_reason=self.reason,
            offload_stage=self.stage,
            latency_ms=latency,
            breakdown=dict(self.breakdown),
            fallback=fallback,
            cut=self.cut,
            error=error,
            request_id=self.call.request_id if self.call is not None else None,
            cloud=cloud,
            reject_reason=reject_reason,
        )


def _torch_estimator(model_root: Path | None, path: Path | None) -> Estimator:
    """A torch estimator: ``path``, else the one shipped beside the model, else the prior."""
    from pasu.device.confidence import estimator_for, load_estimator

    return estimator_for(model_root, path) if model_root is not None else load_estimator(path)
