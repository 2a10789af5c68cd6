"""`pasu bench vad`: the VAD backends side by side on noise-only audio and on commands.

For each VAD setting and each data dir it counts what the segmenter alone does
(no model): on a dir whose ``utt2kind`` says it is the noise set, every
segment is a false one; on a dir of commands, a clip should give exactly one
segment covering its speech. With ``utt2speech`` (speech onset and offset, as
``pasu data rejection`` writes for ``lead_noise``) a segment that ends before the
speech starts is counted as a noise-only segment opened on the noise's onset.
Why a separate benchmark: which VAD to ship was picked from these figures
(issue 28; docs/device.md).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from pasu.audio import read_audio, read_scp, read_wav_scp
from pasu.device.config import VadOptions
from pasu.device.vad import segment_audio

#: The settings compared: today's webrtcvad rule, webrtcvad with the minimum
#: speech duration, silero with the old and the new opening rule.
SETTINGS: dict[str, VadOptions] = {
    "webrtc (90 of 150 ms)": VadOptions(backend="webrtc", start_window_ms=150, start_ms=90),
    "webrtc (200 of 300 ms)": VadOptions(backend="webrtc"),
    "silero (96 of 160 ms)": VadOptions(backend="silero", start_window_ms=160, start_ms=96),
    "silero (200 of 300 ms)": VadOptions(backend="silero"),
}


@dataclass
class SetFigures:
    """What one VAD setting did on one data dir."""

    clips: int = 0
    segments: int = 0
    clips_with_segments: int = 0
    one_segment: int = 0
    no_segment: int = 0
    before_speech: int = 0  # clips with a segment that ends before the speech starts
    covered_s: float = 0.0  # speech covered by segments
    speech_s: float = 0.0
    vad_s: float = 0.0  # time the segmenter took
    audio_s: float = 0.0
    per_kind: dict[str, int] = field(default_factory=dict)  # noise: clips with a segment, per kind

    def row(self, noise: bool) -> dict:
        r: dict[str, object] = {"clips": self.clips, "segments": self.segments}
        if noise:
            r["clips_with_segments"] = self.clips_with_segments
            r["per_kind"] = dict(sorted(self.per_kind.items()))
        else:
            r.update(one_segment=self.one_segment, no_segment=self.no_segment, before_speech=self.before_speech)
            if self.speech_s:
                r["speech_covered"] = round(self.covered_s / self.speech_s, 4)
        r["rtf"] = round(self.vad_s / self.audio_s, 5) if self.audio_s else 0.0
        return r


def _is_noise_dir(data: Path) -> bool:
    kinds = read_scp(data / "utt2kind") if (data / "utt2kind").is_file() else {}
    return data.name == "noise" or (bool(kinds) and not (data / "text").is_file())


def measure(data: Path, options: VadOptions, limit: int | None = None) -> SetFigures:
    wavs = read_wav_scp(data)
    kinds = read_scp(data / "utt2kind") if (data / "utt2kind").is_file() else {}
    speech = read_scp(data / "utt2speech") if (data / "utt2speech").is_file() else {}
    f = SetFigures()
    for utt in list(wavs)[: limit or None]:
        x = read_audio(wavs[utt], 16000)
        t0 = time.perf_counter()
        segs = segment_audio(x, options)
        f.vad_s += time.perf_counter() - t0
        f.audio_s += x.size / 16000
        f.clips += 1
        f.segments += len(segs)
        f.clips_with_segments += bool(segs)
        f.one_segment += len(segs) == 1
        f.no_segment += not segs
        if segs and utt in kinds:
            f.per_kind[kinds[utt]] = f.per_kind.get(kinds[utt], 0) + 1
        if utt in speech:
            on, off = (float(v) for v in speech[utt].split())
            f.speech_s += off - on
            f.before_speech += any(s.end / 16000 <= on for s in segs)
            f.covered_s += sum(max(0.0, min(off, s.end / 16000) - max(on, s.start / 16000)) for s in segs)
    return f


def register_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("vad", help="VAD backends side by side: segments on noise only and on commands")
    p.add_argument(
        "--data",
        type=Path,
        action="append",
        required=True,
        help="data dir (wav.scp); the noise set counts false segments, others commands (repeat)",
    )
    p.add_argument(
        "--setting", action="append", choices=sorted(SETTINGS), default=None, help="settings to compare (default: all)"
    )
    p.add_argument("--limit", type=int, default=None, help="first N clips of each dir")
    p.add_argument("--json-out", type=Path, default=None)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    names = args.setting or list(SETTINGS)
    out: dict[str, dict[str, dict]] = {}
    for data in args.data:
        noise = _is_noise_dir(data)
        out[str(data)] = {}
        for name in names:
            r = measure(data, SETTINGS[name], args.limit).row(noise)
            out[str(data)][name] = r
            if noise:
                what = f"clips with a segment {r['clips_with_segments']:4d}/{r['clips']}  segments {r['segments']:4d}"
            else:
                what = (
                    f"one segment {r['one_segment']:4d}/{r['clips']}  none {r['no_segment']:3d}  "
                    f"noise-only first {r['before_speech']:3d}  segments {r['segments']:4d}"
                    + (f"  speech covered {100 * r['speech_covered']:.1f}%" if "speech_covered" in r else "")
                )
            print(f"{data.name:14s} {name:24s} {what}  rtf {r['rtf']:.4f}", flush=True)
    if args.json_out:
        args.json_out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out))
    return 0
