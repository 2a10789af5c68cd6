"""Decoder reuse: the cloud continues the device's hypotheses instead of starting afresh.

Two policies (``WorkerConfig.reuse``). ``seed``: the device's latest best
hypothesis — from the pilot that decided to offload, or a newer one the device
sent while audio still streamed (``OffloadRequest.device_update``) — is cut
where the cloud's own decoder and CTC stop confirming it
(:func:`pasu.streaming.commit.confirm`, the rule the device's pilots use), and
the cloud's beam search runs only beyond it, from that prefix's CTC forward
variables. ``rescore``, for a device result that covers the whole segment:

A beam search runs ``beam`` rows per utterance through a pruning loop until
end detection; scoring a few given token sequences teacher-forced runs ``n``
rows for exactly their length, with no pruning, and all requests of a batch
share one pass. When device and cloud agree, that is the whole answer. The
check that they agree must itself be cheap: the best device hypothesis (under
the cloud's own weighted decoder+CTC score) is answered only if its CTC
log-probability is within ``margin`` nats of the CTC best path (an argmax over
frames, free once the encoder has run). Otherwise the request gets the full
beam search. Reuse can cost accuracy only when the search would find a
sequence the device did not propose that the decoder prefers.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from pasu.decoding.recognizer import NBestEntry, Recognizer
from pasu.decoding.scorers import EncoderBatch
from pasu.models import LoadedModel, forward_lock, token_list_id  # noqa: F401  (token_list_id: re-exported)
from pasu.streaming.commit import Seed, confirm
from pasu.v1 import speech_service_pb2

log = logging.getLogger(__name__)

ACCEPTED = speech_service_pb2.DECODER_REUSE_ACCEPTED_DEVICE_HYPOTHESIS
RESCORED = speech_service_pb2.DECODER_REUSE_RESCORED
SEEDED = speech_service_pb2.DECODER_REUSE_SEEDED_BEAM
FULL_DECODE = speech_service_pb2.DECODER_REUSE_FULL_DECODE
OUTCOME_NAMES = {ACCEPTED: "accepted", RESCORED: "rescored", SEEDED: "seeded", FULL_DECODE: "full_decode"}


def device_token_ids(
    device: speech_service_pb2.DeviceResult, model: LoadedModel, model_token_list_id: str
) -> tuple[list[list[int]], str]:
    """The device hypotheses as cloud token ids, and how they were obtained.

    Ids transfer as they are only when the token lists match; otherwise the text
    is re-tokenized with the cloud's tokenizer, and a hypothesis with a token the
    cloud does not know is dropped (the cloud cannot score it fairly).
    """
    hyps = list(device.hypotheses)
    if not hyps:
        return [], "none"
    vocab = len(model.token_list)
    special = {0, model.sos, model.eos}
    if device.model.token_list_id and device.model.token_list_id == model_token_list_id:
        out = []
        for h in hyps:
            ids = list(h.token_ids)
            if not ids or any(i < 0 or i >= vocab or i in special for i in ids):
                continue
            out.append(ids)
        return out, "token_ids"
    if model.tokenizer is None:
        return [], "no_tokenizer"
    unk = model.token_list.index("<unk>") if "<unk>" in model.token_list else None
    out = []
    for h in hyps:
        if not h.text.strip():
            continue
        # the wire keeps the intent label apart; the model writes it first
        text = f"{h.intent} {h.text}" if h.intent else h.text
        ids = model.converter.tokens2ids(model.tokenizer.text2tokens(text))
        if ids and (unk is None or unk not in ids):
            out.append([int(i) for i in ids])
    return out, "retokenized"


@torch.inference_mode()
def rescore(
    recognizer: Recognizer, enc: EncoderBatch, seqs: Sequence[Sequence[int]], row_utt: Sequence[int] | None = None
) -> list[NBestEntry]:
    """Each token sequence scored teacher-forced by the search's own scorers and weights.

    Sequence ``i`` belongs to utterance ``row_utt[i]`` of ``enc`` (default: all
    to utterance 0). All run as rows of one scorer session, like the rows of a
    batched beam search, so rescoring a whole batch costs one pass of
    ``max length`` steps; a row whose sequence has ended is fed ``<eos>`` and its
    scores are ignored. The totals equal what the beam search gives the same
    sequence, ``<eos>`` included.
    """
    with forward_lock(recognizer.model.model):  # the decoder's attention keeps per-call state
        return _rescore(recognizer, enc, seqs, row_utt)


def _rescore(
    recognizer: Recognizer, enc: EncoderBatch, seqs: Sequence[Sequence[int]], row_utt: Sequence[int] | None
) -> list[NBestEntry]:
    search = recognizer.search
    model = recognizer.model
    n = len(seqs)
    if n == 0:
        return []
    targets = [list(s) + [model.eos] for s in seqs]
    steps = max(len(t) for t in targets)
    dev = enc.enc.device
    rows = torch.tensor(list(row_utt) if row_utt is not None else [0] * n, dtype=torch.long)
    names = [*search.full, *search.part]
    sessions = {k: s.begin(enc, rows) for k, s in (*search.full.items(), *search.part.items())}
    tok = torch.tensor([t + [model.eos] * (steps - len(t)) for t in targets], dtype=torch.long, device=dev)
    live = torch.tensor([[i < len(t) for i in range(steps)] for t in targets], device=dev)
    yseq = torch.full((n, 1), model.sos, dtype=torch.long, device=dev)
    totals = {k: torch.zeros(n, dtype=torch.float64, device=dev) for k in names}
    parents = torch.arange(n)
    for i in range(steps):
        nxt = tok[:, i]
        for k in names:
            cand = nxt.unsqueeze(1) if k in search.part else None
            s = sessions[k].score(yseq, rows, cand)
            totals[k] += torch.where(live[:, i], s.gather(1, nxt.unsqueeze(1)).squeeze(1).double(), 0.0)
        if i + 1 < steps:
            for k in names:
                sessions[k].advance(parents, nxt.cpu())
            yseq = torch.cat((yseq, nxt.unsqueeze(1)), dim=1)
    out = []
    for r, seq in enumerate(seqs):
        scores = {k: float(totals[k][r]) for k in names}
        total = sum(search.weights[k] * scores[k] for k in names)
        ids = [t for t in seq if t != 0]
        out.append(
            NBestEntry(
                text=model.text(ids),
                tokens=model.tokens(ids),
                token_ids=ids,
                score=total,
                scores=scores,
                yseq=[model.sos, *seq, model.eos],
            )
        )
    return out


def ctc_best_path(recognizer: Recognizer, enc: EncoderBatch) -> list[tuple[list[int], float]]:
    """Each utterance's CTC argmax path: (its collapsed tokens, its log-probability).

    One argmax over frames: the cheapest bound there is on how well any
    transcript can explain the audio under the cloud's CTC head.
    """
    model = recognizer.model
    ctc: Any = model.model.ctc  # ESPnet's CTC head (an untyped submodule)
    with torch.inference_mode():
        top = ctc.log_softmax(enc.enc).max(-1)
    out = []
    for b, n in enumerate(enc.lengths.tolist()):
        path = torch.unique_consecutive(top.indices[b, :n]).tolist()
        out.append(([t for t in path if t not in (0, model.eos, model.sos)], float(top.values[b, :n].sum())))
    return out


@dataclass(frozen=True)
class ReuseDecision:
    outcome: speech_service_pb2.DecoderReuse  # ACCEPTED / RESCORED / FULL_DECODE
    nbest: list[NBestEntry]  # the re-ranked device n-best; empty for FULL_DECODE
    gap: float  # CTC best-path log-prob minus the chosen hypothesis' CTC log-prob (nats)


def decide(
    recognizer: Recognizer,
    enc: EncoderBatch,
    device_seqs: Sequence[Sequence[Sequence[int]]],
    margin: float,
    nbest: int,
) -> list[ReuseDecision]:
    """For each utterance of ``enc``: accept/re-rank its device n-best, or ask for a full decode.

    The device hypotheses of all utterances are rescored in one pass and
    re-ranked by the cloud's weighted score. The best is answered if its CTC
    log-probability is within ``margin`` nats of the CTC best path (or it *is*
    the best path's transcript): then no transcript explains the audio much
    better under the cloud's CTC head. It is ACCEPTED when it was also the
    device's best, RESCORED when the re-ranking promoted another hypothesis.
    """
    paths = ctc_best_path(recognizer, enc)
    seqs = [list(s) for dev in device_seqs for s in dev]
    rows = [u for u, dev in enumerate(device_seqs) for _ in dev]
    scored = rescore(recognizer, enc, seqs, rows)
    out, first = [], 0
    for u, dev in enumerate(device_seqs):
        n = len(dev)
        if n == 0:
            out.append(ReuseDecision(FULL_DECODE, [], math.inf))
            continue
        order = sorted(range(first, first + n), key=lambda i: scored[i].score, reverse=True)
        best = scored[order[0]]
        path_tokens, path_logp = paths[u]
        gap = 0.0 if best.token_ids == path_tokens else path_logp - best.scores.get("ctc", path_logp)
        if gap > margin:
            out.append(ReuseDecision(FULL_DECODE, [], gap))
        else:
            outcome = ACCEPTED if order[0] == first else RESCORED
            out.append(ReuseDecision(outcome, [scored[i] for i in order][:nbest], gap))
        first += n
    return out


@torch.inference_mode()
def seed(
    recognizer: Recognizer, enc: EncoderBatch, device_seqs: Sequence[Sequence[int]], tolerance: float = 0.0
) -> Seed | None:
    """The prefix of the device's best hypothesis that this model confirms on ``enc`` (one
    utterance), with its CTC forward variables; None when it confirms not even one token.

    One teacher-forced decoder pass and one CTC forward scan over the prefix: each token
    must still be the cloud's own best next token under its search's weighting, or trail
    it by at most ``tolerance`` nats.
    """
    if not device_seqs or not device_seqs[0]:
        return None
    model: Any = recognizer.model.model
    with forward_lock(model):  # the decoder's attention keeps per-call state
        lp = model.ctc.log_softmax(enc.enc)[0, : int(enc.lengths[0])].float().cpu().numpy()
        return confirm(
            list(device_seqs[0]),
            lp,
            lambda prefix: recognizer.prefix_pass(enc, prefix),
            recognizer.options.ctc_weight,
            tolerance=tolerance,
        )


def confidences(scores: Sequence[float]) -> list[float]:
    """A posterior over the n-best from their total scores (softmax)."""
    if not scores:
        return []
    top = max(scores)
    w = [math.exp(s - top) for s in scores]
    z = sum(w)
    return [x / z for x in w]
