"""The decoder both the device and the cloud run: encode, beam search, tokens to text."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from pasu.audio import min_encodable_samples
from pasu.decoding.backend import NBestEntry, ctc_best_path, scorer_weights
from pasu.decoding.beam_search import BeamSearch, Hypothesis, StopRule
from pasu.decoding.ctc import CTCPrefixScorer
from pasu.decoding.kv_decoder import KVCacheDecoderSession, TeacherForced
from pasu.decoding.lm import LanguageModelScorer
from pasu.decoding.options import DecodingOptions
from pasu.decoding.scorers import AttentionDecoderScorer, EncoderBatch, LengthBonus
from pasu.models import LoadedModel, forward_lock

log = logging.getLogger(__name__)

SCORER_NAMES = ("decoder", "ctc", "length_bonus", "lm")
__all__ = ["SCORER_NAMES", "NBestEntry", "Recognizer", "scorer_weights"]


class Recognizer:
    """An ESPnet model plus decoding options; thread-safe (no state between calls).

    The torch runtime's :class:`pasu.decoding.backend.RecognizerBackend`.
    """

    def __init__(self, model: LoadedModel, options: DecodingOptions = DecodingOptions()) -> None:
        self.model = model
        self.options = options
        asr: Any = model.model  # an ESPnet ASR model: its parts are untyped submodules
        self.scorers = {
            "decoder": AttentionDecoderScorer(asr.decoder, kv_cache=options.decoder_kv_cache),
            "ctc": CTCPrefixScorer(asr.ctc, eos=model.eos, recursion=options.ctc_recursion),
            "length_bonus": LengthBonus(model.vocab_size),
        }
        # ESPnet's order (decoder, ctc, length_bonus, lm): the weighted sum adds in this order
        if model.lm is not None:
            self.scorers["lm"] = LanguageModelScorer(model.lm.lm)
        elif options.lm_weight != 0.0:
            raise ValueError(
                f"lm_weight is {options.lm_weight} but {model.name} came without a language model "
                "(give its directory lm_train_config/lm_file, an ESPnet meta.yaml, or an lm/ directory)"
            )
        self.search = BeamSearch(self.scorers, scorer_weights(options), model.vocab_size, model.sos, model.eos, options)

    def with_options(self, options: DecodingOptions) -> Recognizer:
        return Recognizer(self.model, options)

    @torch.inference_mode()
    def encode(self, speech: Sequence[np.ndarray | torch.Tensor]) -> EncoderBatch:
        """Encode each utterance on its own (so batching never changes a result), then pad."""
        if not speech:
            raise ValueError("no audio to encode")
        outs = []
        for s in speech:
            x = torch.as_tensor(s, dtype=torch.float32).to(self.model.device)
            if x.ndim != 1 or x.numel() == 0:
                raise ValueError(f"expected non-empty 1-D audio, got shape {tuple(x.shape)}")
            with forward_lock(self.model.model):
                enc, _ = self.model.model.encode(x.unsqueeze(0), torch.tensor([x.numel()], device=x.device))
            if isinstance(enc, tuple):
                enc = enc[0]
            outs.append(enc[0])
        lengths = torch.tensor([o.size(0) for o in outs], dtype=torch.long)
        enc = torch.nn.utils.rnn.pad_sequence(outs, batch_first=True)
        return EncoderBatch(enc=enc, lengths=lengths)

    @torch.inference_mode()
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
        """Beam search over a batch of encoded utterances; the n-best of each.

        The keyword arguments are for pilot inference (seeded prefixes, a
        narrower beam, early termination); without them this is ESPnet's search.
        """
        with forward_lock(self.model.model):
            hyps = self.search(batch, prefixes=prefixes, beam_size=beam_size, stop=stop, prime_hints=prime_hints)
        n = nbest or self.options.nbest
        return [[self.entry(h) for h in hs[:n]] for hs in hyps]

    # -- what a streaming session needs (pasu.decoding.backend.RecognizerBackend) --
    @property
    def name(self) -> str:
        return self.model.name

    @property
    def sample_rate(self) -> int:
        return self.model.sample_rate

    @property
    def sos(self) -> int:
        return self.model.sos

    @property
    def eos(self) -> int:
        return self.model.eos

    def incremental_encoder(self) -> _TorchIncremental:
        from pasu.encoders.incremental import IncrementalEncoder

        return _TorchIncremental(IncrementalEncoder(self.model.model))

    def encode_audio(self, audio: np.ndarray) -> EncoderBatch | None:
        from espnet2.legacy.nets.pytorch_backend.transformer.subsampling import TooShortUttError

        if len(audio) < min_encodable_samples(self.model.model):
            return None
        try:
            return self.encode([audio])
        except TooShortUttError as e:  # too short for the subsampling yet
            log.debug("cannot encode %d samples yet: %s", len(audio), e)
            return None

    @torch.inference_mode()
    def ctc_log_probs(self, batch: EncoderBatch) -> np.ndarray:
        asr: Any = self.model.model
        return asr.ctc.log_softmax(batch.enc)[0].cpu().numpy()

    @torch.inference_mode()
    def ctc_greedy(self, batch: EncoderBatch) -> list[int]:
        asr: Any = self.model.model
        return ctc_best_path(asr.ctc.argmax(batch.enc)[0].tolist(), blank=0, eos=self.model.eos)

    @torch.inference_mode()
    def prefix_pass(self, batch: EncoderBatch, prefix: list[int]) -> TeacherForced | None:
        """The decoder teacher-forced over ``prefix`` on ``batch``'s first utterance in one pass:
        each token's (U, V) log-probabilities and the keys/values a search from the prefix
        starts with (None for a decoder without a kv-cache session)."""
        rows = torch.zeros(1, dtype=torch.long)
        session = self.scorers["decoder"].begin(batch, rows)
        if not isinstance(session, KVCacheDecoderSession):
            return None
        yseq = torch.tensor([[self.model.sos, *prefix]], device=batch.enc.device)
        logp = session.teacher_forced(yseq, rows)[0]
        assert session.cache is not None
        return TeacherForced(logp, session.cache)

    def recognize(self, speech: Sequence[np.ndarray | torch.Tensor]) -> list[list[NBestEntry]]:
        return self.decode(self.encode(speech))

    def entry(self, hyp: Hypothesis) -> NBestEntry:
        ids = hyp.token_ids(self.model.eos)
        return NBestEntry(
            text=self.model.text(ids),
            tokens=self.model.tokens(ids),
            token_ids=ids,
            score=hyp.score,
            scores=dict(hyp.scores),
            yseq=list(hyp.yseq),
        )


class _TorchIncremental:
    """:class:`pasu.encoders.IncrementalEncoder` as a :class:`pasu.decoding.backend.IncrementalEncoding`."""

    def __init__(self, encoder: Any) -> None:
        self.encoder = encoder
        self.incremental = encoder.mode == "incremental"

    def feed(self, audio: np.ndarray) -> None:
        self.encoder.feed(audio)

    @torch.inference_mode()
    def encode(self, final: bool) -> EncoderBatch | None:
        enc, lens = self.encoder.encode(final=final)
        if enc.size(1) == 0:
            return None
        return EncoderBatch(enc=enc, lengths=lens.cpu().long())
