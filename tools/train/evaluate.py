"""Score a model dir on an ESPnet data dir with pasu's own decoder.

Scored by :mod:`pasu.tools.scoring` (intent accuracy: the hypothesis's intent label
against the reference ``text`` line's, as in ESPnet's SLURP recipe; WER over the
transcript words after the label, so a wrong intent is not also a word error).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from pasu.audio import read_audio, read_scp, read_wav_scp
from pasu.decoding import DecodingOptions
from pasu.tools import scoring

log = logging.getLogger(__name__)


@dataclass
class EvalResult:
    """Per-utterance hypotheses and the corpus-level scores."""

    refs: dict[str, str] = field(default_factory=dict)
    hyps: dict[str, str] = field(default_factory=dict)

    @property
    def utterances(self) -> int:
        return len(self.hyps)

    @property
    def intent_acc(self) -> float:
        return scoring.intent_accuracy(list(self.hyps.values()), [self.refs[u] for u in self.hyps])

    @property
    def wer(self) -> float:
        refs = [self.refs[u] for u in self.hyps]
        return scoring.wer(list(self.hyps.values()), refs, scoring.labelled(refs))

    def summary(self) -> dict[str, float | int]:
        return scoring.summary(self.hyps, self.refs)

    def table(self, model: str, data: str) -> str:
        rows = [
            ("model", model),
            ("data", data),
            ("utterances", str(self.utterances)),
            ("intent accuracy", f"{100 * self.intent_acc:.2f}%"),
            ("WER", f"{100 * self.wer:.2f}%"),
        ]
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def evaluate(
    model_dir: Path,
    data_dir: Path,
    limit: int | None = None,
    options: DecodingOptions = DecodingOptions(),
    batch_size: int = 8,
    progress: bool = True,
) -> EvalResult:
    """Decode ``data_dir`` (``wav.scp`` + ``text``) and score it; ``limit`` = first N ids."""
    from pasu.decoding import Recognizer
    from pasu.models import load_model

    recognizer = Recognizer(load_model(model_dir), options)
    wavs = read_wav_scp(data_dir)
    refs = read_scp(data_dir / "text")
    ids = [u for u in wavs if u in refs][: limit if limit else None]
    result = EvalResult(refs={u: refs[u] for u in ids})
    with tqdm(total=len(ids), desc=f"decode {data_dir.name}", unit="utt", disable=not progress) as bar:
        for start in range(0, len(ids), batch_size):
            batch = ids[start : start + batch_size]
            nbest = recognizer.recognize([read_audio(wavs[u]) for u in batch])
            for u, hyps in zip(batch, nbest, strict=True):
                result.hyps[u] = hyps[0].text if hyps else ""
            bar.update(len(batch))
    log.info("%s on %s: %s", model_dir, data_dir, result.summary())
    return result
