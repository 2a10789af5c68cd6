"""Dynamic batching: one thread turns concurrent requests into batched beam searches.

The beam search already runs several utterances at once at about the cost of
the longest, so throughput under load comes from grouping whatever requests
are waiting. Requests enter a bounded queue (full → :class:`QueueFull`, which
the service answers with RESOURCE_EXHAUSTED at once rather than letting
latency grow without bound). The batching thread takes the oldest request,
waits at most ``max_batch_wait_ms`` for up to ``max_batch_size - 1`` more with
the *same* decoding options (the search runs one set of options), drops the
ones nobody waits for any more, encodes each utterance alone (so batching never
changes a result), and runs one search over the rest.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from espnet2.legacy.nets.pytorch_backend.transformer.subsampling import TooShortUttError

from pasu.audio import AudioError, min_encodable_samples
from pasu.cloud import reuse as reuse_mod
from pasu.cloud.audio_input import InvalidRequest
from pasu.cloud.config import WorkerConfig
from pasu.cloud.jobs import Job, JobDropped, Outcome
from pasu.cloud.metrics import WorkerMetrics
from pasu.decoding.options import DecodingOptions
from pasu.decoding.recognizer import Recognizer
from pasu.decoding.scorers import EncoderBatch
from pasu.models import LoadedModel
from pasu.streaming.commit import too_long

log = logging.getLogger(__name__)
_NO_AUDIO = np.zeros(0, dtype=np.float32)
#: What encoding raises for audio the model cannot take: the client's to fix (INVALID_ARGUMENT).
#: Anything else (out of memory, a bug) is the server's: INTERNAL, logged with its traceback.
INPUT_ERRORS: tuple[type[Exception], ...] = (InvalidRequest, AudioError, TooShortUttError)


def check_encodable(samples: np.ndarray, model: LoadedModel) -> None:
    """InvalidRequest for audio too short for the model's STFT (where torch fails with a RuntimeError)."""
    min_samples = min_encodable_samples(model.model)
    if samples.ndim != 1 or samples.size < min_samples:
        raise InvalidRequest(f"{samples.size} samples of shape {samples.shape}; the STFT needs {min_samples} or more")


def pad(encoded: list[EncoderBatch]) -> EncoderBatch:
    """Single-utterance encoder outputs as one padded batch (frames beyond a length are ignored)."""
    lengths = torch.cat([e.lengths for e in encoded])
    frames = [e.enc[0, : int(e.lengths[0])] for e in encoded]
    return EncoderBatch(enc=torch.nn.utils.rnn.pad_sequence(frames, batch_first=True), lengths=lengths)


class QueueFull(Exception):
    """The batcher's queue holds ``max_queue`` requests already."""


class Batcher:
    """A bounded queue and the one thread that decodes it; start() before submit()."""

    def __init__(self, model: LoadedModel, config: WorkerConfig, metrics: WorkerMetrics) -> None:
        self.model = model
        self.config = config
        self.metrics = metrics
        self._recognizers: dict[DecodingOptions, Recognizer] = {}
        self._queue: deque[Job] = deque()
        self._cond = threading.Condition()
        self._held = 0
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.batches = 0  # batched searches run (for tests and the benchmark)
        self.searched = 0  # utterances that went through a beam search
        self.busy_s = 0.0  # time the thread spent computing (encode + search + rescoring)
        self.busy_cpu_s = 0.0  # the same in the thread's CPU time (robust to a loaded machine)
        self.decode_busy_s = 0.0  # of which beam search and rescoring: what decoder reuse saves

    # -- public ----------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="pasu-batcher", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        """Queue ``job`` or raise :class:`QueueFull`; never blocks."""
        with self._cond:
            if self._stopping:
                raise JobDropped("shutdown")
            if len(self._queue) >= self.config.max_queue:
                self.metrics.rejected.inc()
                raise QueueFull(f"the server's queue is full ({self.config.max_queue} requests waiting)")
            job.enqueued = time.monotonic()
            self._queue.append(job)
            self.metrics.queue_depth.set(len(self._queue))
            self._cond.notify_all()

    @property
    def depth(self) -> int:
        return len(self._queue)

    @contextmanager
    def held(self) -> Iterator[None]:
        """Keep the batching thread from starting new batches (tests, maintenance)."""
        with self._cond:
            self._held += 1
        try:
            yield
        finally:
            with self._cond:
                self._held -= 1
                self._cond.notify_all()

    def stop(self, timeout: float | None = None) -> None:
        """Finish the batch in progress, then fail whatever is still queued."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
        with self._cond:
            left = list(self._queue)
            self._queue.clear()
            self.metrics.queue_depth.set(0)
        for job in left:
            self._drop(job, "shutdown")

    def recognizer(self, options: DecodingOptions) -> Recognizer:
        rec = self._recognizers.get(options)
        if rec is None:
            rec = self._recognizers[options] = Recognizer(self.model, options)
        return rec

    # -- the batching thread ---------------------------------------------
    def _run(self) -> None:
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            t, c = time.monotonic(), time.thread_time()
            try:
                self._process(batch)
            except Exception as e:  # a bug or a torch error: fail the batch, keep serving
                log.exception("batch of %d failed", len(batch))
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(e)
            self.busy_s += time.monotonic() - t
            self.busy_cpu_s += time.thread_time() - c

    def _take_batch(self) -> list[Job] | None:
        cfg = self.config
        with self._cond:
            while not self._stopping and (self._held or not self._queue):
                self._cond.wait(0.5)
            if self._stopping:
                return None
            first = self._queue.popleft()
            group = [first]
            until = time.monotonic() + cfg.max_batch_wait_ms / 1000.0
            while len(group) < cfg.max_batch_size:
                for job in [j for j in self._queue if j.options == first.options]:
                    if len(group) >= cfg.max_batch_size:
                        break
                    self._queue.remove(job)
                    group.append(job)
                left = until - time.monotonic()
                if len(group) >= cfg.max_batch_size or left <= 0 or self._stopping:
                    break
                self._cond.wait(left)
            self.metrics.queue_depth.set(len(self._queue))
            return group

    def _drop(self, job: Job, reason: str) -> None:
        self.metrics.dropped.labels(reason).inc()
        log.info("dropped before decoding", extra={"request_id": job.request_id, "rpc": job.rpc, "reason": reason})
        if not job.future.done():
            job.future.set_exception(JobDropped(reason))

    def _live(self, jobs: list[Job]) -> list[Job]:
        now = time.monotonic()
        out = []
        for job in jobs:
            reason = job.drop_reason(now)
            if reason is None:
                out.append(job)
            else:
                self._drop(job, reason)
        return out

    def _encode(self, rec: Recognizer, job: Job) -> EncoderBatch | None:
        """One job's encoder output; on failure, fail this job only and return None."""
        extra = {"request_id": job.request_id, "rpc": job.rpc}
        try:
            check_encodable(job.samples, rec.model)
            return rec.encode([job.samples])
        except INPUT_ERRORS as e:  # e.g. shorter than the encoder's subsampling
            log.info("cannot encode", extra={**extra, "error": str(e)})
            error: Exception = InvalidRequest(
                f"audio too short or malformed for the model ({job.samples.size} samples at "
                f"{rec.model.sample_rate} Hz): {e}"
            )
        except Exception as e:  # out of memory, a bug: the service answers INTERNAL
            log.exception("encoding failed", extra=extra)
            error = e
        if not job.future.done():
            job.future.set_exception(error)
        return None

    @torch.inference_mode()
    def _process(self, batch: list[Job]) -> None:
        start = time.monotonic()
        jobs = self._live(batch)
        if not jobs:
            return
        rec = self.recognizer(jobs[0].options)
        outcomes: dict[int, Outcome] = {}
        encoded: dict[int, EncoderBatch] = {}
        for job in jobs:
            t = time.monotonic()
            enc = self._encode(rec, job)
            if enc is None:
                continue
            encoded[id(job)] = enc
            outcomes[id(job)] = Outcome(
                nbest=[], options=job.options, queue_s=start - job.enqueued, encode_s=time.monotonic() - t
            )
            job.samples = _NO_AUDIO  # the audio is no longer needed: do not keep it alive
        jobs = self._live([j for j in jobs if id(j) in encoded])
        search: list[Job] = []
        reusable: list[Job] = []
        for job in jobs:
            if job.device_seqs is None:
                search.append(job)
            elif job.device_seqs and self.config.reuse == "rescore" and job.device_complete:
                reusable.append(job)
            elif (
                job.device_seqs
                and self.config.reuse == "seed"
                and len(jobs) == 1  # a seed's CTC state covers one utterance: never break up a batch
                and self._seeded(rec, job, encoded, outcomes)
            ):
                continue
            else:
                outcomes[id(job)].reuse = reuse_mod.FULL_DECODE
                self.metrics.reuse.labels("full_decode").inc()
                search.append(job)
        if reusable:
            t = time.monotonic()
            decisions = reuse_mod.decide(
                rec,
                pad([encoded[id(j)] for j in reusable]),
                [j.device_seqs or [] for j in reusable],
                self.config.reuse_margin,
                rec.options.nbest,
            )
            rescore_s = time.monotonic() - t
            self.decode_busy_s += rescore_s
            for job, d in zip(reusable, decisions, strict=True):
                out = outcomes[id(job)]
                out.decode_s, out.reuse = rescore_s, d.outcome
                self.metrics.reuse.labels(reuse_mod.OUTCOME_NAMES[d.outcome]).inc()
                if d.outcome == reuse_mod.FULL_DECODE:
                    search.append(job)
                else:
                    out.nbest, out.batch_size = d.nbest, len(reusable)
                    self._resolve(job, out)
        if not search:
            return
        enc = pad([encoded[id(j)] for j in search])
        t = time.monotonic()
        results = rec.decode(enc)
        decode_s = time.monotonic() - t
        self.decode_busy_s += decode_s
        self.batches += 1
        self.searched += len(search)
        self.metrics.batch_size.observe(len(search))
        self.metrics.decoded.inc(len(search))
        for job, nbest in zip(search, results, strict=True):
            out = outcomes[id(job)]
            out.nbest, out.batch_size = nbest, len(search)
            out.decode_s += decode_s
            self._resolve(job, out)

    def _seeded(
        self, rec: Recognizer, job: Job, encoded: dict[int, EncoderBatch], outcomes: dict[int, Outcome]
    ) -> bool:
        """Search ``job`` from the prefix of its device hypothesis that this model confirms;
        False: nothing confirmed."""
        enc, out = encoded[id(job)], outcomes[id(job)]
        t = time.monotonic()
        seed = reuse_mod.seed(rec, enc, job.device_seqs or [], tolerance=self.config.reuse_tolerance)
        if seed is None or too_long(seed.prefix, rec.options.max_output_length(int(enc.lengths[0]))):
            out.decode_s = time.monotonic() - t
            self.decode_busy_s += out.decode_s
            return False
        out.nbest = rec.decode(enc, prefixes=[seed.prefix], prime_hints=seed.prime_hints())[0]
        out.decode_s, out.reuse, out.seed_tokens = time.monotonic() - t, reuse_mod.SEEDED, len(seed.prefix)
        self.decode_busy_s += out.decode_s
        self.searched += 1
        self.batches += 1
        self.metrics.reuse.labels("seeded").inc()
        self.metrics.decoded.inc()
        self._resolve(job, out)
        return True

    def _resolve(self, job: Job, out: Outcome) -> None:
        for stage, s in (("queue", out.queue_s), ("encode", out.encode_s), ("decode", out.decode_s)):
            self.metrics.observe_stage(stage, s)
        if not job.future.done():
            job.future.set_result(out)
