"""Decoder benchmark: stock ESPnet Speech2Text vs pasu on the same model, audio and beam.

Both sides decode every utterance (encoder + beam search, the whole call a
user makes), alternating which goes first so drift in machine load hits both
alike. Output identity is checked on the n-best token sequences.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from pasu.audio import read_audio
from pasu.decoding.options import DecodingOptions
from pasu.decoding.recognizer import Recognizer
from pasu.models import LoadedModel
from pasu.tools.reference import espnet_nbest, espnet_speech2text

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DecoderBenchOptions:
    repeat: int = 1  # decode each utterance this many times per side
    warmup: int = 1  # untimed utterances first (lazy init, allocator warm-up)
    batch: bool = True  # also time pasu decoding all utterances as one batch


@dataclass
class UtteranceTiming:
    utt: str
    seconds_audio: float
    espnet_s: float
    pasu_s: float
    identical: bool
    max_score_diff: float


@dataclass
class DecoderBenchResult:
    rows: list[UtteranceTiming] = field(default_factory=list)
    pasu_batch_s: float | None = None
    batch_identical: bool | None = None

    @property
    def espnet_s(self) -> float:
        return sum(r.espnet_s for r in self.rows)

    @property
    def pasu_s(self) -> float:
        return sum(r.pasu_s for r in self.rows)

    @property
    def identical(self) -> bool:
        return all(r.identical for r in self.rows) and self.batch_identical is not False

    def summary(self) -> dict:
        """The contract line: keys other tools read (more may be added, none removed)."""
        out = {
            "espnet_s": round(self.espnet_s, 4),
            "pasu_s": round(self.pasu_s, 4),
            "speedup": round(self.espnet_s / self.pasu_s, 3) if self.pasu_s else None,
            "identical": self.identical,
            "utterances": len(self.rows),
            "max_score_diff": max((r.max_score_diff for r in self.rows), default=0.0),
        }
        if self.pasu_batch_s is not None:
            out["pasu_batch_s"] = round(self.pasu_batch_s, 4)
            out["batch_speedup"] = round(self.espnet_s / self.pasu_batch_s, 3)
        return out


def side_by_side(
    model: LoadedModel, options: DecodingOptions, audio_files: list[str | Path]
) -> tuple[Any, Recognizer, dict[str, np.ndarray]]:
    """Stock ESPnet's ``Speech2Text`` and pasu's recognizer on one model and settings, and
    the audio at the model's rate by utterance id (the file's stem)."""
    audio = {Path(f).stem: read_audio(f, model.sample_rate) for f in audio_files}
    return espnet_speech2text(model, options, device=str(model.device)), Recognizer(model, options), audio


def run_decoder_bench(
    model: LoadedModel,
    audio_files: list[str | Path],
    options: DecodingOptions = DecodingOptions(),
    bench: DecoderBenchOptions = DecoderBenchOptions(),
) -> DecoderBenchResult:
    s2t, rec, audio = side_by_side(model, options, audio_files)
    if not audio:
        raise ValueError("no audio to benchmark")
    for speech in list(audio.values())[: bench.warmup]:
        espnet_nbest(s2t, speech)
        rec.recognize([speech])

    result = DecoderBenchResult()
    pasu_out = {}
    for n, (utt, speech) in enumerate(tqdm(audio.items(), desc="decoder bench", unit="utt")):
        t_es = t_pa = 0.0
        for r in range(bench.repeat):
            first_espnet = (n + r) % 2 == 0
            for side in ("espnet", "pasu") if first_espnet else ("pasu", "espnet"):
                t0 = time.perf_counter()
                if side == "espnet":
                    ref = espnet_nbest(s2t, speech)
                    t_es += time.perf_counter() - t0
                else:
                    ours = rec.recognize([speech])[0]
                    t_pa += time.perf_counter() - t0
        pasu_out[utt] = ours
        same = [h.yseq for h in ref] == [h.yseq for h in ours]
        diff = max((abs(a.score - b.score) for a, b in zip(ref, ours, strict=False)), default=0.0)
        if not same:
            log.warning("%s: n-best differs: espnet %r vs pasu %r", utt, ref[0].text, ours[0].text)
        result.rows.append(
            UtteranceTiming(utt, len(speech) / model.sample_rate, t_es / bench.repeat, t_pa / bench.repeat, same, diff)
        )
    if bench.batch and len(audio) > 1:
        t0 = time.perf_counter()
        batched = rec.recognize(list(audio.values()))
        result.pasu_batch_s = time.perf_counter() - t0
        result.batch_identical = all(
            [h.yseq for h in b] == [h.yseq for h in pasu_out[u]] for u, b in zip(audio, batched, strict=True)
        )
    return result


def format_table(result: DecoderBenchResult) -> str:
    lines = [f"{'utterance':<16}{'audio s':>9}{'espnet s':>10}{'pasu s':>9}{'speedup':>9}  identical"]
    for r in result.rows:
        lines.append(
            f"{r.utt:<16}{r.seconds_audio:>9.2f}{r.espnet_s:>10.3f}{r.pasu_s:>9.3f}"
            f"{r.espnet_s / r.pasu_s:>9.2f}  {'yes' if r.identical else 'NO'}"
        )
    s = result.summary()
    lines.append(
        f"{'total':<16}{'':>9}{s['espnet_s']:>10.3f}{s['pasu_s']:>9.3f}{s['speedup']:>9.2f}  "
        f"{'yes' if s['identical'] else 'NO'}"
    )
    if result.pasu_batch_s is not None:
        lines.append(
            f"pasu, all {len(result.rows)} utterances as one batch: {result.pasu_batch_s:.3f} s "
            f"({s['batch_speedup']:.2f}x vs espnet one by one; identical: {result.batch_identical})"
        )
    return "\n".join(lines)


def result_dict(result: DecoderBenchResult) -> dict:
    return {"summary": result.summary(), "rows": [asdict(r) for r in result.rows]}
