"""Latency benchmark: end of speech -> final result, stock ESPnet vs a pasu streaming session.

Every utterance runs through stock ESPnet, pasu with every technique on, pasu
with every technique off (its own decoder, decoding after speech: the
techniques' baseline), and in the ablation each technique alone (on top of
all-off) and each left out (from all-on). The techniques' headline is all-on
vs all-off; the decoder's own speedup is all-off vs ESPnet.

Each utterance is fed as a live stream. By default on a *simulated clock* that
still measures all compute for real: chunk i arrives at (i + 1) x chunk
duration; work on it starts at the later of its arrival and the end of earlier
work, so a pipeline slower than real time pays for its backlog; a pilot that
comes due while the pipeline is behind is skipped. Stock ESPnet's Speech2Text
starts when the audio ends. ``realtime=True`` paces the audio on the wall
clock instead (slower; for spot checks) with the session's background worker.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pasu.decoding.options import DecodingOptions
from pasu.decoding.recognizer import Recognizer
from pasu.models import LoadedModel
from pasu.streaming import TECHNIQUES, StreamingOptions, StreamingSession
from pasu.streaming.session import FIRED
from pasu.tools.bench.decoder import side_by_side
from pasu.tools.bench.simulate import simulate_stream
from pasu.tools.reference import espnet_nbest
from pasu.tools.scoring import accuracy

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LatencyBenchOptions:
    chunk_s: float = 0.16
    realtime: bool = False
    ablation: bool = True  # one extra run per technique alone
    warmup: int = 1
    # "wall": compute counted as elapsed time; "cpu": as the calling thread's CPU time,
    # which other jobs on a shared machine do not inflate (right with one torch thread)
    clock: str = "wall"

    def timer(self):
        return time.thread_time if self.clock == "cpu" else time.perf_counter


@dataclass
class StreamRun:
    """One utterance through one pipeline."""

    latency_s: float  # end of speech -> final result
    during_s: float  # compute while audio arrived
    after_s: float  # compute after the end of speech
    text: str
    yseq: list[int]
    decoder_s: float = 0.0  # the final search alone (decoder + CTC after the end of speech)
    prefix_len: int = 0  # tokens the final search was seeded with
    fired: dict[str, int] = field(default_factory=dict)
    refused: dict[str, int] = field(default_factory=dict)


@dataclass
class UttRow:
    utt: str
    audio_s: float
    espnet: StreamRun
    pasu: StreamRun  # every technique on (as configured)
    off: StreamRun | None = None  # every technique off: pasu's decoder after speech
    ablation: dict[str, StreamRun] = field(default_factory=dict)  # one technique alone
    without: dict[str, StreamRun] = field(default_factory=dict)  # one technique left out


def _p(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return float(np.percentile(values, q))


def run_espnet(s2t, audio: np.ndarray, clock=time.perf_counter) -> StreamRun:
    t0 = clock()
    best = espnet_nbest(s2t, audio)[0]
    dt = clock() - t0
    return StreamRun(latency_s=dt, during_s=0.0, after_s=dt, text=best.text, yseq=best.yseq)


def run_stream(rec: Recognizer, options: StreamingOptions, audio: np.ndarray, bench: LatencyBenchOptions) -> StreamRun:
    if bench.realtime:
        step = max(1, int(bench.chunk_s * rec.sample_rate))
        chunks = [audio[i : i + step] for i in range(0, len(audio), step)]
        return _run_realtime(rec, options, chunks, bench.chunk_s)
    run = simulate_stream(rec, options, audio, bench.chunk_s, bench.timer())
    return _run(run.result, latency_s=run.latency_s, during_s=run.during_s, after_s=run.after_s)


def _run(result, latency_s: float, during_s: float, after_s: float) -> StreamRun:
    best = result.best
    return StreamRun(
        latency_s=latency_s,
        during_s=during_s,
        after_s=after_s,
        text=best.text if best else "",
        yseq=best.yseq if best else [],
        decoder_s=result.decode_s,
        prefix_len=result.prefix_len,
        fired=dict(result.fired),
        refused=dict(result.refused),
    )


def _run_realtime(rec: Recognizer, options: StreamingOptions, chunks: list[np.ndarray], chunk_s: float) -> StreamRun:
    session = StreamingSession(rec, options, background=True)
    t_start = time.perf_counter()
    for i, chunk in enumerate(chunks):
        wait = t_start + (i + 1) * chunk_s - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        session.feed(chunk)
    end = time.perf_counter()
    result = session.finalize()
    done = time.perf_counter()
    return _run(result, latency_s=done - end, during_s=sum(p.seconds for p in result.pilots), after_s=done - end)


@dataclass
class LatencyBenchResult:
    rows: list[UttRow]
    options: StreamingOptions
    refs: dict[str, str | None]

    def summary(self) -> dict:
        rows = self.rows
        refs = [self.refs.get(r.utt) for r in rows]
        es = [r.espnet.latency_s for r in rows]
        pa = [r.pasu.latency_s for r in rows]
        acc_e = accuracy([r.espnet.text for r in rows], refs)
        acc_p = accuracy([r.pasu.text for r in rows], refs)
        audio = sum(r.audio_s for r in rows)
        out = {
            "espnet_p50_s": round(_p(es, 50), 4),
            "pasu_p50_s": round(_p(pa, 50), 4),
            "ratio_p50": round(_p(es, 50) / _p(pa, 50), 3),
            "acc_espnet": acc_e["intent_acc"] if acc_e["intent_acc"] is not None else _wacc(acc_e["wer"]),
            "acc_pasu": acc_p["intent_acc"] if acc_p["intent_acc"] is not None else _wacc(acc_p["wer"]),
            "espnet_p90_s": round(_p(es, 90), 4),
            "pasu_p90_s": round(_p(pa, 90), 4),
            "ratio_p90": round(_p(es, 90) / _p(pa, 90), 3),
            "wer_espnet": acc_e["wer"],
            "wer_pasu": acc_p["wer"],
            "intent_acc_espnet": acc_e["intent_acc"],
            "intent_acc_pasu": acc_p["intent_acc"],
            "same_output": _share(r.espnet.yseq == r.pasu.yseq for r in rows),
            "rtf_during": round(sum(r.pasu.during_s for r in rows) / audio, 4) if audio else None,
            "utterances": len(rows),
            # how many utterances each technique fired in (all-on run)
            "fired": {k: sum(bool(r.pasu.fired.get(k)) for r in rows) for k in FIRED},
            "refused": dict(sum((Counter(r.pasu.refused) for r in rows), Counter())),
            "after_speech_decoder_s": round(_p([r.pasu.decoder_s for r in rows], 50), 4),
        }
        offs = [r.off for r in rows if r.off is not None]
        if len(offs) == len(rows) and rows:
            off = [r.latency_s for r in offs]
            acc_o = accuracy([r.text for r in offs], refs)
            out.update(
                off_p50_s=round(_p(off, 50), 4),
                ratio_p50_vs_off=round(_p(off, 50) / _p(pa, 50), 3),
                decoder_ratio_p50=round(_p(es, 50) / _p(off, 50), 3),  # pasu's decoder vs ESPnet, no technique
                acc_off=acc_o["intent_acc"] if acc_o["intent_acc"] is not None else _wacc(acc_o["wer"]),
                wer_off=acc_o["wer"],
                off_decoder_s=round(_p([r.decoder_s for r in offs], 50), 4),
                # decoder + CTC after speech, all-on over all-off, per utterance (median)
                after_speech_decoder_share=round(
                    _p([r.pasu.decoder_s / max(o.decoder_s, 1e-9) for r, o in zip(rows, offs, strict=True)], 50), 3
                ),
                same_output_vs_off=_share(r.pasu.yseq == o.yseq for r, o in zip(rows, offs, strict=True)),
                # the all-off answer does not start with the prefix the final search was seeded with
                revised_vs_off=_share(
                    r.pasu.prefix_len > 0 and not _starts_with(o.yseq, r.pasu.yseq, r.pasu.prefix_len)
                    for r, o in zip(rows, offs, strict=True)
                ),
            )
        for t in TECHNIQUES:
            runs = [r.ablation[t].latency_s for r in rows if t in r.ablation]
            if runs:
                out[f"ablation_{t}_p50_s"] = round(_p(runs, 50), 4)
            runs = [r.without[t].latency_s for r in rows if t in r.without]
            if runs:
                out[f"without_{t}_p50_s"] = round(_p(runs, 50), 4)
                out[f"without_{t}_changed"] = sum(r.without[t].yseq != r.pasu.yseq for r in rows)
        return out


def _share(flags) -> float:
    flags = list(flags)
    return round(sum(flags) / max(1, len(flags)), 4)


def _starts_with(ref: list[int], hyp: list[int], n: int) -> bool:
    """``ref`` and ``hyp`` (both <sos> ...) agree on the first ``n`` tokens after <sos>."""
    return ref[1 : n + 1] == hyp[1 : n + 1]


def _wacc(wer: float | None) -> float | None:
    """Word accuracy (1 - WER) where there are no intent labels to score."""
    return None if wer is None else round(1.0 - wer, 4)


def run_latency_bench(
    model: LoadedModel,
    audio_files: list[str | Path],
    refs: dict[str, str] | None = None,
    decoding: DecodingOptions = DecodingOptions(),
    streaming: StreamingOptions = StreamingOptions(),
    bench: LatencyBenchOptions = LatencyBenchOptions(),
) -> LatencyBenchResult:
    s2t, rec, audio = side_by_side(model, decoding, audio_files)
    for a in list(audio.values())[: bench.warmup]:
        run_espnet(s2t, a, bench.timer())
        run_stream(rec, streaming, a, bench)
    off = replace(streaming, **dict.fromkeys(TECHNIQUES, False))
    rows = []
    for utt, a in tqdm(audio.items(), desc="latency bench", unit="utt"):
        row = UttRow(
            utt,
            len(a) / model.sample_rate,
            run_espnet(s2t, a, bench.timer()),
            run_stream(rec, streaming, a, bench),
            off=run_stream(rec, off, a, bench),
        )
        if bench.ablation:
            for t in TECHNIQUES:
                row.ablation[t] = run_stream(rec, StreamingOptions.only(t, streaming), a, bench)
                row.without[t] = run_stream(rec, replace(streaming, **{t: False}), a, bench)
        rows.append(row)
    return LatencyBenchResult(rows, streaming, {u: (refs or {}).get(u) for u in audio})


def format_table(result: LatencyBenchResult) -> str:
    head = f"{'utterance':<14}{'audio s':>8}{'espnet s':>10}{'pasu s':>9}{'ratio':>7}{'during s':>10}{'after s':>9}"
    lines = [head + "  same"]
    for r in result.rows:
        lines.append(
            f"{r.utt:<14}{r.audio_s:>8.2f}{r.espnet.latency_s:>10.3f}{r.pasu.latency_s:>9.3f}"
            f"{r.espnet.latency_s / max(r.pasu.latency_s, 1e-9):>7.2f}{r.pasu.during_s:>10.3f}{r.pasu.after_s:>9.3f}"
            f"  {'yes' if r.espnet.yseq == r.pasu.yseq else 'no'}"
        )
    s = result.summary()
    lines.append(
        f"median latency: espnet {s['espnet_p50_s']:.3f} s, pasu {s['pasu_p50_s']:.3f} s "
        f"-> {s['ratio_p50']:.2f}x; p90 {s['espnet_p90_s']:.3f} vs {s['pasu_p90_s']:.3f} s"
    )
    if "off_p50_s" in s:
        lines.append(
            f"techniques: all on {s['pasu_p50_s']:.3f} s vs all off {s['off_p50_s']:.3f} s "
            f"-> {s['ratio_p50_vs_off']:.2f}x; pasu's decoder alone vs espnet {s['decoder_ratio_p50']:.2f}x"
        )
        lines.append(
            f"after speech, decoder + CTC: {s['after_speech_decoder_s']:.4f} s (all on) vs "
            f"{s['off_decoder_s']:.4f} s (all off), median share {s['after_speech_decoder_share']:.2f}; "
            f"same output as all-off {100 * s['same_output_vs_off']:.0f}%, committed prefix revised "
            f"{100 * s['revised_vs_off']:.0f}%"
        )
        lines.append(
            f"accuracy: espnet {s['acc_espnet']}, all off {s['acc_off']}, all on {s['acc_pasu']}; "
            f"RTF during speech {s['rtf_during']}"
        )
    n = s["utterances"]
    lines.append(
        "fired (utterances of "
        + str(n)
        + "): "
        + ", ".join(f"{k} {v}" for k, v in s["fired"].items())
        + "; collapse refused: "
        + (", ".join(f"{k} {v}" for k, v in s["refused"].items()) or "never")
    )
    if any(r.ablation for r in result.rows):
        base = s.get("off_p50_s", s["espnet_p50_s"])
        lines.append(f"{'technique':<18}{'alone s':>9}{'vs off':>8}{'left out s':>12}{'vs on':>7}{'changed':>9}")
        for t in TECHNIQUES:
            a, w = s.get(f"ablation_{t}_p50_s"), s.get(f"without_{t}_p50_s")
            if a is None or w is None:
                continue
            lines.append(
                f"  {t:<16}{a:>9.3f}{base / a:>7.2f}x{w:>12.3f}{w / s['pasu_p50_s']:>6.2f}x"
                f"{s[f'without_{t}_changed']:>9}"
            )
    return "\n".join(lines)


def result_dict(result: LatencyBenchResult) -> dict:
    return {"summary": result.summary(), "options": asdict(result.options), "rows": [asdict(r) for r in result.rows]}
