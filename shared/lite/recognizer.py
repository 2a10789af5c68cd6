"""The exported device model as a recognizer: pasu's one beam search and streaming session on onnxruntime.

:class:`LiteRecognizer` is the torch-free :class:`pasu.decoding.backend.RecognizerBackend`:
the encoder graphs (:class:`pasu.lite.LiteEncoder`) give the encoder output, the numpy
score sources (:mod:`pasu.lite.scorers`) feed :class:`pasu.decoding.beam_search.BeamSearch`,
and :class:`pasu.streaming.StreamingSession` drives it exactly as it drives the torch
:class:`pasu.decoding.recognizer.Recognizer`. Imports numpy and onnxruntime only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from pasu.decoding.backend import NBestEntry, ctc_best_path, scorer_weights
from pasu.decoding.beam_search import BeamSearch, Hypothesis, StopRule
from pasu.decoding.interface import LOG_ZERO, EncoderBatch, Scorer
from pasu.decoding.options import DecodingOptions
from pasu.lite.decoder import LiteDecoder
from pasu.lite.encoder import LiteEncoder
from pasu.lite.model import LiteModel, LiteModelError
from pasu.lite.scorers import CTCPrefixScorer, LengthBonus, LiteDecoderScorer, PrefixPass, prefix_pass

log = logging.getLogger(__name__)

SPACE = "\u2581"  # sentencepiece's word-boundary mark
UNK_SURFACE = " \u2047 "  # what sentencepiece prints for <unk>


def sentencepiece_text(tokens: Sequence[str], unk: str = "<unk>") -> str:
    """Pieces -> text as ``SentencePieceProcessor.DecodePieces`` does for ESPnet's BPE models
    (dummy prefix and extra whitespace removed at the start, ``<unk>`` as " ⁇ ")."""
    out: list[str] = []
    at_start = True
    for piece in tokens:
        if piece == unk:
            s = UNK_SURFACE
        else:
            s = (piece.lstrip(SPACE) if at_start else piece).replace(SPACE, " ")
        at_start = at_start and not s
        out.append(s)
    return "".join(out)


def detokenizer(manifest: dict[str, Any]) -> Callable[[Sequence[str]], str]:
    """Tokens -> text as ESPnet's tokenizer of the exported model's ``token_type`` does."""
    if "token_type" not in manifest:
        raise LiteModelError("the export's manifest has no token_type: re-export it with this pasu (`pasu export`)")
    kind = manifest["token_type"]
    if kind == "bpe":
        return sentencepiece_text
    if kind == "char":
        return lambda tokens: "".join(" " if t == "<space>" else t for t in tokens)
    if kind in (None, "word"):
        return lambda tokens: " ".join(tokens)
    raise LiteModelError(f"token_type {kind!r}: pasu.lite turns only bpe, char and word tokens into text")


class LiteRecognizer:
    """An exported device model plus decoding options; thread-safe (no state between calls)."""

    def __init__(self, model: LiteModel, options: DecodingOptions = DecodingOptions()) -> None:
        if options.lm_weight != 0.0:
            raise ValueError(
                f"lm_weight is {options.lm_weight} but pasu.lite has no language model "
                "(the export holds none): decode with lm_weight=0, or use the torch runtime"
            )
        self.model = model
        self.options = options
        m = model.manifest
        self._sos, self._eos, self.blank = int(m["sos"]), int(m["eos"]), int(m.get("blank", 0))
        self.vocab_size = len(model.tokens)
        self._text = detokenizer(m)
        self.decoder = LiteDecoder(model)
        # ESPnet's order (decoder, ctc, length_bonus): the weighted sum adds in this order
        self.scorers: dict[str, Scorer] = {
            "decoder": LiteDecoderScorer(self.decoder),
            "ctc": CTCPrefixScorer(self.batch_ctc_log_probs, self._eos, self.blank, options.ctc_recursion),
            "length_bonus": LengthBonus(self.vocab_size),
        }
        self.search = BeamSearch(self.scorers, scorer_weights(options), self.vocab_size, self._sos, self._eos, options)

    def with_options(self, options: DecodingOptions) -> LiteRecognizer:
        return LiteRecognizer(self.model, options)

    # -- what a streaming session needs (pasu.decoding.backend.RecognizerBackend) --
    @property
    def name(self) -> str:
        return str(self.model.manifest["model"]["name"])

    @property
    def sample_rate(self) -> int:
        return int(self.model.manifest["frontend"]["sample_rate"])

    @property
    def sos(self) -> int:
        return self._sos

    @property
    def eos(self) -> int:
        return self._eos

    def incremental_encoder(self) -> LiteIncremental:
        return LiteIncremental(LiteEncoder(self.model))

    def encode_audio(self, audio: np.ndarray) -> EncoderBatch | None:
        enc = self._encode_one(audio)
        if enc.shape[0] == 0:
            return None
        return EncoderBatch(enc=enc[None], lengths=np.array([enc.shape[0]], dtype=np.int64))

    def ctc_log_probs(self, batch: EncoderBatch) -> np.ndarray:
        enc = _first(batch)
        if enc.shape[0] == 0:
            return np.zeros((0, self.vocab_size), dtype=np.float32)
        return self.model.run("ctc", enc=np.ascontiguousarray(enc[None]))[0][0]

    def ctc_greedy(self, batch: EncoderBatch) -> list[int]:
        return ctc_best_path(self.ctc_log_probs(batch).argmax(-1).tolist(), blank=self.blank, eos=self._eos)

    def prefix_pass(self, batch: EncoderBatch, prefix: list[int]) -> PrefixPass:
        """The decoder stepped over ``<sos>`` + ``prefix`` on the first utterance: (U, V) log-probs
        and the cache a search from the prefix continues from (``prime_hints["decoder"]``)."""
        return prefix_pass(self.decoder, _first(batch), list(prefix), batch.enc)

    def decode(
        self,
        batch: EncoderBatch,
        *,
        prefixes: list[list[int]] | None = None,
        beam_size: int | None = None,
        nbest: int | None = None,
        stop: StopRule | None = None,
        prime_hints: dict[str, object] | None = None,
    ) -> list[list[NBestEntry]]:
        """Beam search over a batch of encoded utterances; the n-best of each (see ``Recognizer.decode``)."""
        _check(batch)
        hyps = self.search(batch, prefixes=prefixes, beam_size=beam_size, stop=stop, prime_hints=prime_hints)
        n = nbest or self.options.nbest
        return [[self.entry(h) for h in hs[:n]] for hs in hyps]

    # -- whole utterances ---------------------------------------------------------
    def encode(self, speech: Sequence[np.ndarray]) -> EncoderBatch:
        """Encode each utterance on its own, then pad (zeros) to the longest, as ``Recognizer.encode``."""
        if not speech:
            raise ValueError("no audio to encode")
        outs = []
        for s in speech:
            enc = self._encode_one(s)
            if enc.shape[0] == 0:
                raise ValueError(f"audio of {np.asarray(s).size} samples is too short to encode")
            outs.append(enc)
        lengths = np.array([o.shape[0] for o in outs], dtype=np.int64)
        batch = np.zeros((len(outs), int(lengths.max()), outs[0].shape[1]), dtype=np.float32)
        for b, o in enumerate(outs):
            batch[b, : o.shape[0]] = o
        return EncoderBatch(enc=batch, lengths=lengths)

    def recognize(self, speech: Sequence[np.ndarray]) -> list[list[NBestEntry]]:
        return self.decode(self.encode(speech))

    def batch_ctc_log_probs(self, batch: EncoderBatch) -> np.ndarray:
        """(B, T, V) CTC log-posteriors; padded frames are certain blanks, as in ESPnet."""
        _check(batch)
        B, T = batch.enc.shape[:2]
        out = np.full((B, T, self.vocab_size), LOG_ZERO, dtype=np.float32)
        out[:, :, self.blank] = 0.0
        for b, n in enumerate(np.asarray(batch.lengths).tolist()):
            out[b, :n] = self.model.run("ctc", enc=np.ascontiguousarray(batch.enc[b : b + 1, :n]))[0][0]
        return out

    def entry(self, hyp: Hypothesis) -> NBestEntry:
        ids = hyp.token_ids(self._eos)
        tokens = [self.model.tokens[t] for t in ids if t != 0]
        return NBestEntry(
            text=self._text(tokens),
            tokens=tokens,
            token_ids=ids,
            score=hyp.score,
            scores=dict(hyp.scores),
            yseq=list(hyp.yseq),
        )

    def _encode_one(self, audio: np.ndarray) -> np.ndarray:
        a = np.asarray(audio, dtype=np.float32)
        if a.ndim != 1 or a.size == 0:
            raise ValueError(f"expected non-empty 1-D audio, got shape {a.shape}")
        encoder = LiteEncoder(self.model)
        encoder.feed(a)
        return encoder.encode()


class LiteIncremental:
    """:class:`pasu.lite.LiteEncoder` as a :class:`pasu.decoding.backend.IncrementalEncoding`."""

    incremental = True  # the local blocks run per chunk, always

    def __init__(self, encoder: LiteEncoder) -> None:
        self.encoder = encoder

    def feed(self, audio: np.ndarray) -> None:
        self.encoder.feed(audio)

    def encode(self, final: bool = False) -> EncoderBatch | None:
        """All audio so far; ``final`` changes nothing (the tail is always finished as if audio ended)."""
        enc = self.encoder.encode()
        if enc.shape[0] == 0:
            return None
        return EncoderBatch(enc=enc[None], lengths=np.array([enc.shape[0]], dtype=np.int64))


def _check(batch: EncoderBatch) -> None:
    if not isinstance(batch.enc, np.ndarray) or batch.enc.ndim != 3:
        raise TypeError(f"pasu.lite decodes numpy encoder output (B, T, D), got {type(batch.enc).__name__}")


def _first(batch: EncoderBatch) -> np.ndarray:
    """The first utterance's encoder output (T, D), without padding."""
    _check(batch)
    return batch.enc[0, : int(np.asarray(batch.lengths)[0])]
