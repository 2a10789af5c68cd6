"""`pasu data rejection`: test sets for "no answer without speech" and "not understood" (issue 28).

Three data dirs under ``OUT`` (16 kHz FLAC under ``OUT/audio/<set>/``), made
from one seed like the corpus (every random choice is drawn at plan time):

* ``noise``: no speech at all. White, pink, brown and blue noise, babble
  (5-8 other utterances read by *training* voices, mixed so that none stands
  out), music-like tones and
  short bursts (clicks, knocks: shorter than a word), at -50 to -20 dBFS,
  half of them with leading and trailing silence (a noise that starts and
  stops). Nothing here may get an answer.
* ``ood``: out-of-domain speech. Sentences that are no command
  (``resources/slu/out_of_domain.txt``) read by the *test* voices, half clean,
  half in test_hard's noise. Every "understood" answer is a false accept.
* ``lead_noise``: in-domain commands (training templates, test voices) in
  noise that starts 0.3-1.0 s before the speech, as a fan or a car would:
  each should get one answer, the command.

Files per dir: ``wav.scp``, ``utt2kind``, ``utt2aug``, ``utt2dur``; ``ood``
and ``lead_noise`` also ``utt2voice``, and ``text``: for ``lead_noise`` in the
corpus's form (``uttid intent words``), for ``ood`` the words alone (there is
no intent). ``lead_noise`` has ``utt2speech`` (speech onset and offset, s).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import numpy as np
import soundfile as sf

from pasu.tools.data import augment as A
from pasu.tools.data import synth as S
from pasu.tools.data.engines import Voice, detect_engines, synthesize
from pasu.tools.data.grammar import Grammar, resource_path

log = logging.getLogger(__name__)

SETS = ("noise", "ood", "lead_noise")
NOISE_SET_KINDS = ("white", "pink", "brown", "blue", "babble", "tones", "burst")
NOISE_LEVELS_DBFS = (-50.0, -40.0, -30.0, -20.0)
LEAD_NOISE_KINDS = ("brown", "pink", "white", "babble")
#: The noise set's babble: 5-8 talkers within 3 dB, so none stands out of the rest (the
#: loudest is at least 3 dB under the others together). The corpus's babble (3-6 talkers
#: within 6 dB, the noise *under* commands) can leave one talker louder than the rest
#: together, saying a command: speech, not noise (docs/rejection/README.md).
NOISE_ONLY_BABBLE_TALKERS = (5, 8)
NOISE_ONLY_BABBLE_SPREAD_DB = 3.0


@dataclass(frozen=True)
class RejectionOptions:
    """What to make. Sizes are clips per set."""

    out_dir: Path
    seed: int = 0
    noise: int = 280
    ood: int = 240
    lead_noise: int = 120
    sets: tuple[str, ...] = SETS
    jobs: int = 0  # 0: all cores
    festival: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        bad = [s for s in self.sets if s not in SETS]
        if bad:
            raise ValueError(f"unknown set(s) {bad}; choose from {SETS}")
        if min(self.noise, self.ood, self.lead_noise) < 0:
            raise ValueError("set sizes must be >= 0")


@dataclass(frozen=True)
class ClipPlan:
    """Everything about one clip, drawn at plan time."""

    utt_id: str
    set: str
    kind: str  # noise kind; "speech" (ood clean) or the noise under the speech
    path: Path
    seed: int
    level_db: float = -30.0  # noise level (noise set) or speech level, dBFS RMS
    dur_s: float = 0.0  # noise set: length of the sound
    lead_s: float = 0.0  # silence before the sound (noise) / before the noise onset (lead_noise)
    trail_s: float = 0.0
    noise_lead_s: float = 0.0  # lead_noise: noise before the speech
    snr_db: float = 0.0
    voice: Voice | None = None
    intent: str = ""
    text: str = ""
    tts_text: str = ""
    extra: dict = field(default_factory=dict, compare=False)

    def describe(self) -> str:
        parts = [f"kind={self.kind}"]
        if self.set == "noise":
            parts += [
                f"level={self.level_db:.0f}",
                f"dur={self.dur_s:.2f}",
                f"silence={self.lead_s:.2f}/{self.trail_s:.2f}",
            ]
        else:
            parts.append(f"level={self.level_db:.1f}")
            if self.kind != "clean":
                parts.append(f"snr={self.snr_db:.1f}")
            if self.set == "lead_noise":
                parts.append(f"noise_lead={self.noise_lead_s:.2f} silence={self.lead_s:.2f}")
        return " ".join(parts)


def ood_sentences(path: Path | None = None) -> list[str]:
    """The shipped non-command sentences (comments and blank lines skipped)."""
    path = path or resource_path("out_of_domain.txt")
    lines = path.read_text(encoding="utf-8").splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]


def plan_sets(opts: RejectionOptions, grammar: Grammar, test_voices: Sequence[Voice]) -> dict[str, list[ClipPlan]]:
    """Every clip of every requested set (deterministic in the seed and the installed voices)."""
    plans: dict[str, list[ClipPlan]] = {}
    audio = opts.out_dir.resolve() / "audio"
    if "noise" in opts.sets:
        rng = np.random.default_rng([opts.seed, 28, 1])
        out = []
        for k in range(opts.noise):
            kind = NOISE_SET_KINDS[k % len(NOISE_SET_KINDS)]
            silent = bool(rng.random() < 0.5)
            uid = f"noise-{kind}-{k:05d}"
            out.append(
                ClipPlan(
                    uid,
                    "noise",
                    kind,
                    audio / "noise" / f"{uid}.flac",
                    int(rng.integers(2**31)),
                    level_db=float(rng.choice(NOISE_LEVELS_DBFS)),
                    dur_s=float(rng.uniform(1.0, 4.0)),
                    lead_s=float(rng.uniform(0.3, 1.0)) if silent else 0.0,
                    trail_s=float(rng.uniform(0.3, 1.0)) if silent else 0.0,
                )
            )
        plans["noise"] = out
    if ("ood" in opts.sets or "lead_noise" in opts.sets) and not test_voices:
        raise RuntimeError("no test voices (install flite: tools/data/install_engines.sh)")
    if "ood" in opts.sets:
        rng = np.random.default_rng([opts.seed, 28, 2])
        sentences = ood_sentences()
        order = [
            sentences[i] for _ in range(math.ceil(opts.ood / len(sentences))) for i in rng.permutation(len(sentences))
        ]
        out = []
        for k, text in enumerate(order[: opts.ood]):
            voice = test_voices[int(rng.integers(len(test_voices)))]
            noisy = bool(rng.random() < 0.5)
            kind = str(rng.choice(A.NOISE_KINDS)) if noisy else "clean"
            uid = f"{voice.speaker}-ood-{k:05d}"
            out.append(
                ClipPlan(
                    uid,
                    "ood",
                    kind,
                    audio / "ood" / f"{uid}.flac",
                    int(rng.integers(2**31)),
                    level_db=float(rng.uniform(-32.0, -20.0)),
                    snr_db=float(rng.uniform(5.0, 20.0)),
                    lead_s=float(rng.uniform(0.1, 0.3)),
                    trail_s=float(rng.uniform(0.1, 0.3)),
                    voice=voice,
                    text=text,
                    tts_text=text,
                )
            )
        plans["ood"] = out
    if "lead_noise" in opts.sets:
        rng = np.random.default_rng([opts.seed, 28, 3])
        intents = grammar.intent_names
        out = []
        for k in range(opts.lead_noise):
            intent = intents[int(rng.integers(len(intents)))]
            s = grammar.sample(rng, intent)
            voice = test_voices[int(rng.integers(len(test_voices)))]
            kind = LEAD_NOISE_KINDS[k % len(LEAD_NOISE_KINDS)]
            uid = f"{voice.speaker}-lead_noise-{k:05d}"
            out.append(
                ClipPlan(
                    uid,
                    "lead_noise",
                    kind,
                    audio / "lead_noise" / f"{uid}.flac",
                    int(rng.integers(2**31)),
                    level_db=float(rng.uniform(-32.0, -20.0)),
                    snr_db=float(rng.uniform(5.0, 20.0)),
                    lead_s=float(rng.uniform(0.0, 0.5)),
                    trail_s=float(rng.uniform(0.3, 0.6)),
                    noise_lead_s=float(rng.uniform(0.3, 1.0)),
                    voice=voice,
                    intent=intent,
                    text=s.text,
                    tts_text=grammar.tts_text(s.text),
                )
            )
        plans["lead_noise"] = out
    return plans


# ---- sounds -----------------------------------------------------------------------
def tones(n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-RMS music-like audio: notes of a pentatonic scale with harmonics and a
    decaying envelope, one to three voices at once (a radio, a phone ringing)."""
    out = np.zeros(n, np.float64)
    scale = np.array([0, 2, 4, 7, 9])
    for _ in range(int(rng.integers(1, 4))):
        t0 = 0
        while t0 < n:
            length = int(rng.uniform(0.12, 0.5) * sr)
            semis = int(rng.choice(scale)) + 12 * int(rng.integers(-1, 2))
            f0 = 261.63 * 2 ** (semis / 12)
            t = np.arange(min(length, n - t0)) / sr
            env = np.minimum(1.0, t / 0.01) * np.exp(-t * rng.uniform(2.0, 8.0))
            note = sum(np.sin(2 * np.pi * f0 * h * t) / h**1.5 for h in range(1, 5))
            out[t0 : t0 + t.size] += env * note
            t0 += length
    return (out / (A.rms(out) or 1.0)).astype(np.float32)


def bursts(n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    """One to three bursts of 20-150 ms (a knock, a click, a clap) in silence,
    each at unit RMS over its own length."""
    out = np.zeros(n, np.float32)
    for _ in range(int(rng.integers(1, 4))):
        length = int(rng.uniform(0.02, 0.15) * sr)
        start = int(rng.integers(0, max(1, n - length)))
        t = np.arange(length) / sr
        b = rng.standard_normal(length) * np.exp(-t * rng.uniform(10.0, 60.0))
        out[start : start + length] += (b / (A.rms(b) or 1.0)).astype(np.float32)
    return out


def _noise(
    kind: str, n: int, rng: np.random.Generator, bank: Sequence[np.ndarray], noise_only: bool = False
) -> np.ndarray:
    if kind == "babble":
        if not bank:
            raise RuntimeError("babble needs the babble bank (training voices: espeak-ng, flite)")
        if noise_only:
            return A.babble(n, bank, rng, NOISE_ONLY_BABBLE_TALKERS, NOISE_ONLY_BABBLE_SPREAD_DB)
        return A.babble(n, bank, rng)
    if kind == "tones":
        return tones(n, S.SAMPLE_RATE, rng)
    if kind == "burst":
        return bursts(n, S.SAMPLE_RATE, rng)
    return A.colored_noise(n, kind, rng)


def render(plan: ClipPlan, bank: Sequence[np.ndarray] | None = None) -> tuple[np.ndarray, tuple[float, float] | None]:
    """The clip's waveform, and (speech onset, offset) in seconds where there is speech."""
    sr = S.SAMPLE_RATE
    bank = S._BANK if bank is None else bank
    rng = np.random.default_rng(plan.seed)
    if plan.set == "noise":
        x = _noise(plan.kind, int(plan.dur_s * sr), rng, bank, noise_only=True) * A.db_to_amp(plan.level_db)
        x = A.pad(x.astype(np.float32), sr, plan.lead_s, plan.trail_s)
        return A.limit(A.dither(x, S.DITHER_DB, rng)).astype(np.float32), None
    assert plan.voice is not None
    speech = A.trim_silence(synthesize(plan.voice, plan.tts_text, sample_rate=sr), sr)
    speech = speech * (A.db_to_amp(plan.level_db) / (A.rms(speech) or 1.0))
    power = A.rms(speech) ** 2
    if plan.set == "ood":
        x = A.pad(speech, sr, plan.lead_s, plan.trail_s)
        onset = plan.lead_s
        if plan.kind != "clean":
            x = A.add_noise(x, _noise(plan.kind, x.size, rng, bank), plan.snr_db, power)
    else:  # lead_noise: [silence][noise ... speech ... noise]
        x = A.pad(speech, sr, plan.lead_s + plan.noise_lead_s, plan.trail_s)
        onset = plan.lead_s + plan.noise_lead_s
        start = int(plan.lead_s * sr)
        noise = np.zeros_like(x)
        noise[start:] = _noise(plan.kind, x.size - start, rng, bank)
        x = (x + noise * (math.sqrt(power / 10 ** (plan.snr_db / 10)))).astype(np.float32)
    x = A.limit(A.dither(x, S.DITHER_DB, rng)).astype(np.float32)
    return x, (onset, onset + speech.size / sr)


_Rendered = tuple[str, float, str, tuple[float, float] | None]  # utt id, seconds, error, speech span


def _render_job(plan: ClipPlan) -> _Rendered:
    try:
        x, speech = render(plan)
        plan.path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(plan.path, x, S.SAMPLE_RATE, format="FLAC", subtype="PCM_16")
        return plan.utt_id, x.size / S.SAMPLE_RATE, "", speech
    except Exception as e:  # noqa: BLE001  (reported per clip, the run goes on)
        return plan.utt_id, 0.0, f"{type(e).__name__}: {e}", None


def _lines(path: Path, rows) -> None:
    path.write_text("".join(f"{r}\n" for r in rows), encoding="utf-8")


def make_sets(opts: RejectionOptions) -> dict[str, int]:
    """Plan, render and write the sets; returns clips written per set."""
    engines = detect_engines()
    grammar = Grammar.load()
    plans = plan_sets(opts, grammar, engines.test_voices(festival=opts.festival))
    jobs = opts.jobs if opts.jobs > 0 else S.default_jobs()
    bank: list[np.ndarray] = []
    if any(p.kind == "babble" for ps in plans.values() for p in ps):
        # the corpus's own babble bank (training voices), so babble means the same everywhere
        babble_opts = S.SynthOptions(out_dir=opts.out_dir, seed=opts.seed)
        items = list(enumerate(S._babble_plan(babble_opts, grammar, engines)))
        done = dict(S._pool_map(S._babble_clip, items, jobs, [], "babble bank", opts.progress))
        bank = [done[i] for i in range(len(items))]
    every = [p for s in SETS for p in plans.get(s, [])]
    results: dict[str, tuple[float, str, tuple[float, float] | None]] = {}
    for res in S._pool_map(_render_job, every, jobs, bank, "rendering", opts.progress):
        u, dur, err, speech = cast(_Rendered, res)
        results[u] = (dur, err, speech)
    counts = {}
    for name, ps in plans.items():
        ok = sorted((p for p in ps if not results[p.utt_id][1]), key=lambda p: p.utt_id)
        for p in ps:
            if results[p.utt_id][1]:
                log.error("%s: %s", p.utt_id, results[p.utt_id][1])
        d = opts.out_dir / name
        d.mkdir(parents=True, exist_ok=True)
        _lines(d / "wav.scp", (f"{p.utt_id} {p.path}" for p in ok))
        _lines(d / "utt2kind", (f"{p.utt_id} {p.kind}" for p in ok))
        _lines(d / "utt2aug", (f"{p.utt_id} {p.describe()}" for p in ok))
        _lines(d / "utt2dur", (f"{p.utt_id} {results[p.utt_id][0]:.4f}" for p in ok))
        if name != "noise":
            _lines(d / "utt2voice", (f"{p.utt_id} {p.voice.id}" for p in ok if p.voice))
            _lines(d / "text", (f"{p.utt_id} {(p.intent + ' ' + p.text).strip()}" for p in ok))
        if name == "lead_noise":
            spans = {p.utt_id: results[p.utt_id][2] or (0.0, 0.0) for p in ok}
            _lines(d / "utt2speech", (f"{u} {on:.3f} {off:.3f}" for u, (on, off) in spans.items()))
        counts[name] = len(ok)
    return counts
