"""Candidate audio cues against babble and tones, side by side (docs/rejection/README.md).

Reads a device-alone ``--records`` file of ``pasu eval --rejection``, measures each
answered segment's audio, and says, per cue and cut, how many false accepts it would
remove on the reject sets and how many right answers it would reject on the command
sets, at the device threshold given; or (``--spread DATA...``) the level spread of
each clip's longest VAD segment on held-out commands, where the babble cut is set.
The analysis behind the README's figures, not product code::

    .venv/bin/python docs/rejection/cues.py RECORDS THRESHOLD --json-out docs/rejection/cues.json
    .venv/bin/python docs/rejection/cues.py --spread data/synth_s1/calib --json-out docs/rejection/spread.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from pasu.audio import read_audio, read_wav_scp
from pasu.device.vad import level_spread_db
from pasu.tools.train.rejection import Clip, read_records, rethreshold

DIRS = {
    "noise": "data/rejection/noise",
    "ood": "data/rejection/ood",
    "lead_noise": "data/rejection/lead_noise",
    "test_voices": "data/synth/test_voices",
    "test_hard": "shared/resources/eval/test_hard",
}
SR, N, HOP = 16000, 400, 160  # 25 ms frames every 10 ms
CUTS = {
    "level_spread_db": (3.0, 3.8, 4.0, 4.5, 5.0, 6.0),  # std of the loud frames' level: babble has no gaps
    "floor_gap_db": (3.0, 5.0, 6.0, 7.0),  # median - 5th percentile level: how far the gaps fall
}


def cues(x: np.ndarray, start: float, end: float) -> dict[str, float]:
    seg = x[int(start * SR) : int(end * SR)]
    frames = [seg[i : i + N] for i in range(0, max(0, seg.size - N), HOP)]
    if len(frames) < 5:
        return {"level_spread_db": 0.0, "floor_gap_db": 0.0}
    e = np.array([10 * np.log10(np.mean(f.astype(np.float64) ** 2) + 1e-10) for f in frames])
    loud = e[e > e.max() - 30]
    return {
        "level_spread_db": level_spread_db(seg),  # the shipped babble rule's measure
        "floor_gap_db": float(np.percentile(loud, 50) - np.percentile(loud, 5)),
    }


def spread(dirs: list[Path]) -> dict:
    """Quantiles of the level spread and the speech seconds of each clip's longest VAD segment."""
    from pasu.device.vad import segment_audio

    out = {}
    for d in dirs:
        vals, speech = [], []
        for path in read_wav_scp(d).values():
            x = read_audio(path)
            segs = segment_audio(x)
            if segs:
                m = max(segs, key=lambda s: s.end - s.start)
                vals.append(level_spread_db(m.audio))  # the int16 audio the agent measures
                speech.append(m.speech_s)
        v = np.array(vals)
        q = {f"q{p}%": round(float(np.percentile(v, p)), 3) for p in (0.5, 1, 2, 5)}
        out[str(d)] = {"clips_with_segments": int(v.size), "min": round(float(v.min()), 3), **q}
        out[str(d)]["speech_s"] = {"min": round(min(speech), 3), "q1%": round(float(np.percentile(speech, 1)), 3)}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("records", type=Path, nargs="?")
    p.add_argument("threshold", type=float, nargs="?", help="the device rejection threshold")
    p.add_argument("--spread", type=Path, nargs="+", help="instead: level spread quantiles on these data dirs")
    p.add_argument("--json-out", type=Path)
    a = p.parse_args()
    if a.spread:
        text = json.dumps(spread(a.spread), indent=2)
        if a.json_out:
            a.json_out.write_text(text + "\n")
        print(text)
        return
    sets = read_records(a.records)["device"]
    out: dict = {"records": str(a.records), "threshold": a.threshold, "sets": {}}
    for name, (reject, clips) in sets.items():
        wavs = read_wav_scp(Path(DIRS[name]))
        judged: list[Clip] = [rethreshold(c, a.threshold) for c in clips]
        # reject sets: the clips with an answer; command sets: the right answers (main segment)
        rows = []
        for c in judged:
            recs = (
                c.answers
                if reject
                else [m for m in [c.main] if m and m["understood"] and m["best_intent"] == c.ref_intent]
            )
            if not recs:
                continue
            x = read_audio(wavs[c.utt])
            rows.append([cues(x, r["segment"]["start"], r["segment"]["end"]) for r in recs])
        no_speech = sum(any(r.get("reject_reason") == "no_speech" for r in c.records) for c in judged)
        f = {"answered_clips" if reject else "right_answers": len(rows), "no_speech_clips": no_speech, "cuts": {}}
        for cue, cuts in CUTS.items():
            for t in cuts:
                # a clip's answer goes when every one of its answered segments falls below the cut
                gone = sum(all(v[cue] < t for v in vals) for vals in rows)
                f["cuts"][f"{cue}<{t}"] = gone
        out["sets"][name] = f
    text = json.dumps(out, indent=2)
    if a.json_out:
        a.json_out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
