"""A streaming session: audio in as it arrives, answers at any time (PASU's pilot inference).

``feed`` takes chunks of any size; with ``background=True`` all model work
(incremental encoding, pilots) runs on one worker thread, so feeding never
blocks on a running pilot; with ``background=False`` it runs inline, which is
what the latency benchmark's simulated clock needs. ``finalize`` reuses what
the pilots learnt: the agreed prefix (beam collapse), its CTC forward variables
(CTC leap) and the expected length (beam termination).

The session drives any :class:`pasu.decoding.backend.RecognizerBackend`: the
torch :class:`pasu.decoding.Recognizer` or the torch-free
:class:`pasu.lite.recognizer.LiteRecognizer`; it imports neither torch nor ESPnet.
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from rapidfuzz.distance import Levenshtein

from pasu.audio import check_samples
from pasu.decoding.backend import IncrementalEncoding, NBestEntry, RecognizerBackend
from pasu.decoding.beam_search import Hypothesis
from pasu.decoding.interface import EncoderBatch
from pasu.streaming.commit import PrefixCommitter, Seed, label_position, rescore_label
from pasu.streaming.options import StreamingOptions
from pasu.streaming.termination import BeamTermination

log = logging.getLogger(__name__)


@dataclass
class PilotRecord:
    """One pilot: what it heard, what it said, what it cost."""

    audio_s: float
    frames: int
    nbest: list[NBestEntry]
    prefix_len: int  # tokens it was seeded with (beam collapse): 0 for a search from scratch
    seconds: float


@dataclass
class FinalResult:
    nbest: list[NBestEntry]
    features: dict[str, float]  # signals for the confidence estimator (offramps)
    pilots: list[PilotRecord]
    prefix_len: int  # tokens the final search was seeded with
    beam_size: int
    encode_s: float
    decode_s: float  # the final search: decoder and CTC work after the end of speech
    stops: dict[str, int] = field(default_factory=dict)
    #: how often each technique fired in this utterance (see StreamingSession.fired)
    fired: dict[str, int] = field(default_factory=dict)
    #: why beam collapse declined, per search (pasu.streaming.commit.REFUSALS)
    refused: dict[str, int] = field(default_factory=dict)

    @property
    def best(self) -> NBestEntry | None:
        return self.nbest[0] if self.nbest else None


class StreamingSession:
    """One utterance (segment), fed incrementally. Not reusable after ``finalize``."""

    def __init__(
        self, recognizer: RecognizerBackend, options: StreamingOptions = StreamingOptions(), background: bool = False
    ) -> None:
        self.rec = recognizer
        self.o = options
        self.rate = recognizer.sample_rate
        self._encoder: IncrementalEncoding | None = None
        #: how often each technique did its work in this utterance: late_context (1 when
        #: the encoder really runs incrementally), pilots, pilot_continuations (pilots
        #: that started from the agreed prefix), beam_collapse and ctc_leap (the final
        #: search seeded / its CTC forward variables extended), termination_exact and
        #: termination_predicted (the final search stopped early by either rule),
        #: label_rescore and label_changed (the intent label rescored / replaced)
        self.fired: dict[str, int] = dict.fromkeys(FIRED, 0)
        if options.late_context:
            self._encoder = recognizer.incremental_encoder()
            if self._encoder is not None and self._encoder.incremental:
                self.fired["late_context"] = 1
            else:
                _warn_once(
                    f"late_context is on but {recognizer.name} re-encodes everything at each "
                    "pilot (its encoder has no local blocks)"
                )
        self._commit = PrefixCommitter(options, recognizer.options.ctc_weight)
        self._audio: list[np.ndarray] = []
        self.samples = 0
        self._samples_at_pilot = 0
        self.pilots: list[PilotRecord] = []
        self._finalized = False
        self._error: BaseException | None = None
        self._queue: queue.Queue | None = None
        self._worker: threading.Thread | None = None
        if background:
            self._queue = queue.Queue()
            self._worker = threading.Thread(target=self._work, name="pasu-pilot", daemon=True)
            self._worker.start()

    # -- input ---------------------------------------------------------------
    def feed(self, chunk: np.ndarray, may_pilot: bool = True) -> None:
        """Add 16 kHz mono audio (float32 in [-1, 1] or int16). Never waits for a pilot.

        ``may_pilot=False`` skips a pilot that would be due now (the benchmark's
        simulated clock says the previous one has not finished).
        """
        if self._finalized:
            raise RuntimeError("feed() after finalize()")
        a = np.asarray(chunk)
        if a.size == 0:
            return
        a = check_samples(a, "chunk")
        if self._queue is not None:
            self._queue.put((a, may_pilot))
            return
        self._ingest(a, may_pilot)

    def _work(self) -> None:
        assert self._queue is not None
        while True:
            item = self._queue.get()
            if item is None:
                return
            if self._error is not None:
                continue
            try:
                # Drain what is queued first: a pilot on stale audio is wasted work.
                chunks = [item]
                while not self._queue.empty():
                    nxt = self._queue.get()
                    if nxt is None:
                        self._ingest_many(chunks)
                        return
                    chunks.append(nxt)
                self._ingest_many(chunks)
            except BaseException as e:  # reported by finalize()
                log.exception("streaming worker failed")
                self._error = e

    def _ingest_many(self, chunks: list[tuple[np.ndarray, bool]]) -> None:
        for a, _ in chunks[:-1]:
            self._push(a)
        self._ingest(*chunks[-1])

    def _push(self, a: np.ndarray) -> None:
        if self._encoder is not None:
            self._encoder.feed(a)
        else:
            self._audio.append(a)
        self.samples += len(a)

    def _ingest(self, a: np.ndarray, may_pilot: bool) -> None:
        self._push(a)
        due = self.samples - self._samples_at_pilot >= self.o.pilot_period_s * self.rate
        if self.o.pilots and may_pilot and due:
            self._samples_at_pilot = self.samples
            self._run_pilot()

    # -- encoding ------------------------------------------------------------
    def _encode(self, final: bool = False) -> EncoderBatch | None:
        if self._encoder is not None:
            return self._encoder.encode(final=final)
        if not self._audio:
            return None
        audio = np.concatenate(self._audio)
        self._audio = [audio]
        return self.rec.encode_audio(audio)

    # -- pilots --------------------------------------------------------------
    def _ctc_log_probs(self, batch: EncoderBatch) -> Callable[[], np.ndarray]:
        """The batch's CTC log-posteriors, computed on first use and then kept: the seed's
        confirmation and label rescoring of one search read the same matrix."""
        return functools.cache(lambda: self.rec.ctc_log_probs(batch))

    def _seed(
        self,
        batch: EncoderBatch,
        ctc_logp: Callable[[], np.ndarray],
        ctc_path: list[int] | None = None,
        final: bool = False,
    ) -> Seed | None:
        """The agreed prefix of the pilots so far (beam collapse), with its CTC state (leap)."""
        if not self.o.beam_collapse or self._commit is None:
            return None
        return self._commit.seed(
            [p.nbest for p in self.pilots],
            self.rec.options.max_output_length(int(batch.lengths[0])),
            ctc_logp,
            lambda prefix: self.rec.prefix_pass(batch, prefix),
            ctc_path=ctc_path,
            final=final,
        )

    def _search(self, batch: EncoderBatch, seed: Seed | None, beam: int, nbest: int, stop) -> list[NBestEntry]:
        return self.rec.decode(
            batch,
            prefixes=[seed.prefix] if seed else None,
            beam_size=beam,
            nbest=nbest,
            stop=stop,
            prime_hints=seed.prime_hints() if seed else None,
        )[0]

    def _run_pilot(self) -> None:
        t0 = time.perf_counter()
        batch = self._encode()
        if batch is None:
            return
        ctc_logp = self._ctc_log_probs(batch)
        seed = self._seed(batch, ctc_logp)
        stop = BeamTermination(self.o.pilot_nbest, self.rec.options.penalty) if self.o.beam_termination else None
        beam = min(self.o.pilot_beam_size, self.rec.options.beam_size)
        nbest = self._search(batch, seed, beam, self.o.pilot_nbest, stop)
        if self.o.label_rescore > 0 and self.o.label_rescore_pilots and seed is not None and nbest:
            nbest = self._rescore_label(batch, ctc_logp(), seed, nbest)
        self.fired["pilots"] += 1
        self.fired["pilot_continuations"] += seed is not None
        self.pilots.append(
            PilotRecord(
                self.samples / self.rate,
                int(batch.lengths[0]),
                nbest,
                len(seed.prefix) if seed else 0,
                time.perf_counter() - t0,
            )
        )

    def pilot(self) -> list[NBestEntry]:
        """The latest pilot's n-best (running one now if none has run and audio allows)."""
        if not self.pilots and self._queue is None and self.samples:
            self._run_pilot()
        return list(self.pilots[-1].nbest) if self.pilots else []

    # -- the end ---------------------------------------------------------------
    def finalize(self) -> FinalResult:
        """The final n-best, reusing the pilots; frees the per-utterance state."""
        if self._finalized:
            raise RuntimeError("finalize() called twice")
        self._finalized = True
        if self._worker is not None and self._queue is not None:
            self._queue.put(None)
            self._worker.join()
        if self._error is not None:
            raise RuntimeError(f"streaming worker failed: {self._error}") from self._error
        t0 = time.perf_counter()
        batch = self._encode(final=True)
        if batch is None:
            raise ValueError(f"segment too short to decode ({self.samples} samples)")
        encode_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        o, d = self.o, self.rec.options
        greedy = self.rec.ctc_greedy(batch)
        ctc_logp = self._ctc_log_probs(batch)
        seed = self._seed(batch, ctc_logp, greedy, final=True)
        stop = None
        if o.beam_termination:
            last = self.pilots[-1].nbest if self.pilots else []
            predicted = max(len(greedy), len(last[0].token_ids) if last else 0)
            stop = BeamTermination(
                d.nbest,
                d.penalty,
                predicted_length=predicted,
                slack=o.termination_slack,
                normalize_length=d.normalize_length,
                max_len=d.max_output_length(int(batch.lengths[0])),
            )
        beam = o.collapse_beam_size if seed else d.beam_size
        nbest = self._search(batch, seed, beam, d.nbest, stop)
        if o.label_rescore > 0 and seed is not None and nbest and self._final_rescore_due():
            nbest = self._rescore_label(batch, ctc_logp(), seed, nbest)
        decode_s = time.perf_counter() - t1
        self.fired["beam_collapse"] = int(seed is not None)
        self.fired["ctc_leap"] = int(seed is not None and seed.leapt)
        self.fired["seed_tolerated"] = seed.tolerated if seed else 0
        if stop is not None:
            self.fired["termination_exact"] = stop.stops_exact
            self.fired["termination_predicted"] = stop.stops_predicted
        features = self._features(nbest, greedy)
        result = FinalResult(
            nbest=nbest,
            features=features,
            pilots=self.pilots,
            prefix_len=len(seed.prefix) if seed else 0,
            beam_size=beam,
            encode_s=encode_s,
            decode_s=decode_s,
            stops={"exact": stop.stops_exact, "predicted": stop.stops_predicted} if stop else {},
            fired=dict(self.fired),
            refused=dict(self._commit.refused) if self._commit else {},
        )
        self._free()
        return result

    def _final_rescore_due(self) -> bool:
        """Whether the final search's label is rescored (``label_rescore_final``)."""
        mode = self.o.label_rescore_final
        if mode != "unsettled":
            return mode == "always"
        last = [p.nbest[0] for p in self.pilots[-2:] if p.nbest]
        pos = label_position(last[-1]) if last else None
        if len(last) < 2 or pos is None:
            return len(last) < 2
        return last[0].token_ids[: pos + 1] != last[1].token_ids[: pos + 1]

    def _rescore_label(
        self, batch: EncoderBatch, ctc_logp: np.ndarray, seed: Seed, nbest: list[NBestEntry]
    ) -> list[NBestEntry]:
        """A seeded search's (pilot's or final) best under the intent label its whole sequence
        scores best with (:func:`pasu.streaming.commit.rescore_label`); counted in ``fired``."""
        best = nbest[0]
        if "lm" in best.scores:  # the label's LM score is not rescored
            return nbest
        d = self.rec.options
        relabel, tried = rescore_label(
            best,
            seed,
            ctc_logp,
            lambda tokens: self.rec.prefix_pass(batch, tokens),
            self.rec.eos,
            d.ctc_weight,
            self.o.label_rescore,
            self.o.label_rescore_window,
        )
        self.fired["label_rescore"] += tried > 0
        if relabel is None:
            return nbest
        self.fired["label_changed"] += 1
        scores = {**best.scores, "decoder": relabel.decoder, "ctc": relabel.ctc}
        yseq = [self.rec.sos, *relabel.token_ids, self.rec.eos]
        new = self.rec.entry(Hypothesis(yseq=yseq, score=best.score + relabel.gain, scores=scores))
        return [new, *[e for e in nbest if e.token_ids != relabel.token_ids]][: len(nbest)]

    def _features(self, nbest: list[NBestEntry], greedy: list[int]) -> dict[str, float]:
        """The signals only the session has, for the confidence estimator (which computes the rest:
        pasu.device.confidence.step_features): how much was heard, and CTC/attention agreement."""
        best = nbest[0] if nbest else None
        n = max(1, len(best.token_ids)) if best else 1
        agreement = 1.0 - Levenshtein.distance(greedy, best.token_ids) / max(len(greedy), n, 1) if best else 0.0
        return {"audio_s": self.samples / self.rate, "ctc_attention_agreement": agreement}

    def _free(self) -> None:
        self._encoder = None
        self._audio = []
        self._commit = None  # type: ignore[assignment]  # freed: the session is over


#: the counters of StreamingSession.fired, in the order reports list them
FIRED = (
    "late_context",
    "pilots",
    "pilot_continuations",
    "beam_collapse",
    "ctc_leap",
    "termination_exact",
    "termination_predicted",
    "label_rescore",  # the final best's intent label was rescored against alternatives
    "label_changed",  # ... and another label won
    "seed_tolerated",  # final seed tokens kept only by collapse_final_tolerance
)
_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        log.warning(message)
