"""One definition of pasu's metrics: intent accuracy and WER.

Every tool that prints a figure (``pasu eval``, ``pasu compare``, the benchmarks, the
offload experiment) and the confidence estimator's labels score through here, so "right"
means the same thing wherever it is reported. A text is a model's output line,
``<intent_label> <words...>`` (ESPnet's SLURP format), or plain words for a corpus
without intents.

* The intent label is what :func:`pasu.slu.split_intent` says it is — the same rule the
  device and the cloud use to put the label on the wire apart from the transcript. A first
  word that does not look like a label still stands for the intent when answers are
  compared (SLURP puts the intent first, whatever its spelling; tiny test models spell it
  at random), but it stays in the transcript.
* A reference set is *labelled* when every reference starts with a label. Then intent
  accuracy is scored and WER counts the transcript words only, so a wrong intent is not
  also a word error. Otherwise there is no intent accuracy and WER counts every word.
* An empty side is the one word ``<empty>`` (jiwer cannot score an empty reference), on
  both sides, so an empty answer to an empty reference is right.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from pasu.slu import split_intent

EMPTY = "<empty>"


def words(text: str) -> list[str]:
    """The words of a text, any run of whitespace being one separator."""
    return text.split()


def intent(text: str) -> str | None:
    """The text's intent: its label, else its first word (None for an empty text)."""
    label, _ = split_intent(text)
    return label or next(iter(words(text)), None)


def transcript(text: str) -> str:
    """The text without its intent label, whitespace normalised."""
    return " ".join(words(split_intent(text)[1]))


def labelled(refs: Iterable[str]) -> bool:
    """Whether intents can be scored: there are references and each starts with a label."""
    refs = list(refs)
    return bool(refs) and all(split_intent(r)[0] is not None for r in refs)


def correct(hyp: str, ref: str, with_intent: bool = True) -> bool:
    """One answer right: its intent (``with_intent``), else its exact words."""
    if with_intent:
        want = intent(ref)
        return want is not None and intent(hyp) == want
    return words(hyp) == words(ref)


def intent_accuracy(hyps: Sequence[str], refs: Sequence[str]) -> float:
    """The share of hypotheses whose intent label is the reference's (0.0 for none)."""
    if not hyps:
        return 0.0
    return sum(correct(h, r) for h, r in zip(hyps, refs, strict=True)) / len(hyps)


def wer(hyps: Sequence[str], refs: Sequence[str], with_intent: bool = True) -> float:
    """Corpus WER (jiwer): over the transcripts when ``with_intent``, else over every word."""
    import jiwer

    if not hyps:
        return 0.0
    side = transcript if with_intent else (lambda t: " ".join(words(t)))
    r = [side(x) or EMPTY for x in refs]
    h = [side(x) or EMPTY for x in hyps]
    return float(jiwer.wer(r, h))


def accuracy(hyps: list[str], refs: list[str | None]) -> dict[str, float | None]:
    """Intent accuracy (None without labelled references) and WER of the hypotheses
    that have a reference; both None when none has one. Unrounded."""
    pairs = [(h, r) for h, r in zip(hyps, refs, strict=True) if r is not None]
    if not pairs:
        return {"intent_acc": None, "wer": None}
    hs, rs = [h for h, _ in pairs], [r for _, r in pairs]
    with_intent = labelled(rs)
    return {"intent_acc": intent_accuracy(hs, rs) if with_intent else None, "wer": wer(hs, rs, with_intent)}


def summary(hyps: Mapping[str, str], refs: Mapping[str, str]) -> dict[str, float | int]:
    """What ``pasu eval`` reports and a model card stores: ``intent_acc`` and ``wer``
    (4 decimals) over the utterances in ``hyps``, and their count."""
    keys = list(hyps)
    hs, rs = [hyps[k] for k in keys], [refs[k] for k in keys]
    return {
        "intent_acc": round(intent_accuracy(hs, rs), 4),
        "wer": round(wer(hs, rs, labelled(rs)), 4),
        "utterances": len(keys),
    }
