"""The decoder both the device and the cloud run: encode, beam search, tokens to text."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pasu.decoding.beam_search import BeamSearch, Hypothesis, StopRule
from pasu.decoding.ctc import CTCPrefixScorer
from pasu.decoding.lm import LanguageModelScorer
from pasu.decoding.options import DecodingOptions
from pasu.decoding.scorers import AttentionDecoderScorer, EncoderBatch, LengthBonus
from pasu.models import LoadedModel, forward_lock

log = logging.getLogger(__name__)

SCORER_NAMES = ("decoder", "ctc", "length_bonus", "lm")


@dataclass(frozen=True)
class NBestEntry:
    """One hypothesis as people and other programs read it."""

    text: str
    tokens: list[str]
    token_ids: list[int]
    score: float
    scores: dict[str, float]  # unweighted per scorer; a scorer with weight 0 is absent
    yseq: list[int]  # <sos> ... <eos>, for exact comparisons with ESPnet


def scorer_weights(options: DecodingOptions) -> dict[str, float]:
    """ESPnet's weights: the decoder and CTC share 1, the length bonus is the penalty, the LM its own."""
    return {
        "decoder": 1.0 - options.ctc_weight,
        "ctc": options.ctc_weight,
        "length_bonus": options.penalty,
        "lm": options.lm_weight,
    }


class Recognizer:
    """An ESPnet model plus decoding options; thread-safe (no state between calls)."""

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
