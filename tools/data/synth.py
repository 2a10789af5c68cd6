"""`pasu data synth`: a SLURP-style spoken-command corpus from Debian's TTS engines.

Python API::

    from pasu.tools.data.synth import SynthOptions, synthesize_corpus

    summary = synthesize_corpus(SynthOptions(out_dir=Path("data/synth"), seed=0))

Splits (ESPnet data dirs under ``out_dir/<split>``):

* ``train``, ``dev``: training voices (espeak-ng English voices and variants,
  flite awb/rms) with rate/pitch jitter, speed/pitch/VTLP perturbation, random
  channels (EQ, band limits), noise and reverberation; training templates.
* ``test_voices``: the test voices (flite kal/kal16/slt, festival voices when
  installed), training templates, clean.
* ``test_hard``: the test voices, held-out templates, noise (and some reverb).
* ``calib``: training voices and templates as ``train``, every utterance in
  ``test_hard``'s noise: what the device's confidence estimator learns from
  (hard, so the device fails often enough to learn from, and never a test voice).
* ``calib_voices`` (made only when asked): voices that are neither training nor
  test voices (espeak-ng's English voices with the variants training leaves out,
  :data:`CALIB_VARIANTS`), training templates, clean as ``test_voices``: speakers
  the model never heard, to calibrate on (docs/rejection/README.md says what it gave).

Everything random is drawn in the planning step from one seed (utterance
texts, voices, every augmentation parameter and a per-utterance noise seed), so
the corpus does not depend on ``jobs`` or on scheduling.
"""

from __future__ import annotations

import functools
import json
import logging
import multiprocessing as mp
import os
import shutil
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm import tqdm

from pasu.tools.data import augment as A
from pasu.tools.data.engines import (
    Engines,
    Voice,
    default_jobs,
    detect_engines,
    is_test_voice,
    is_training_voice,
    synthesize,
)
from pasu.tools.data.grammar import Grammar, resource_path, write_nlsyms

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
SPLITS = ("train", "dev", "test_voices", "test_hard", "calib")
TRAIN_SPLITS = ("train", "dev", "calib")  # the splits read by training voices
# Splits made only when named: after SPLITS, so no split before them changes.
EXTRA_SPLITS = ("calib_voices",)
ALL_SPLITS = SPLITS + EXTRA_SPLITS
# espeak-ng variants that are neither training (engines.ESPEAK_VARIANTS) nor test voices
# and still read like a person (no robots, whispers or croaks): the calib_voices speakers.
CALIB_VARIANTS = ("announcer", "AnxiousAndy", "RicishayMax2", "RicishayMax3", "Tweaky")
DITHER_DB = -66.0  # dBFS RMS: ~16 LSB of 16-bit, well under any speech or noise
BABBLE_BANK = 24
# share of training utterances per engine (espeak-ng has 648 voices, flite 2). flite's
# two are the only natural-sounding (statistical parametric) training voices, and
# the test voices are all natural-sounding, so flite gets a large share, most of it
# pitch- and formant-shifted into other speakers (see _train_aug). Why, with the figures:
# docs/data.md ("Why the voice shift and the channel").
ENGINE_WEIGHTS = {"espeak-ng": 0.55, "flite": 0.45}


@dataclass(frozen=True)
class SynthOptions:
    """What to synthesize. Sizes are utterances per split."""

    out_dir: Path
    seed: int = 0
    train: int = 12000
    dev: int = 600
    test_voices: int = 600
    test_hard: int = 600
    calib: int = 600
    calib_voices: int = 600
    splits: tuple[str, ...] = SPLITS
    jobs: int = 0  # 0: all cores
    audio_format: str = "flac"  # flac | wav (16-bit PCM either way)
    festival: bool = True  # use festival test voices when installed
    grammar_path: Path | None = None  # default: pasu/resources/slu/grammar.yaml
    intents_path: Path | None = None  # default: pasu/resources/slu/intents.tsv
    progress: bool = True
    overwrite: bool = False
    # Share of train sentences recombined (Grammar.vary): 0 keeps a corpus made
    # before this option byte for byte; the v8 pair's corpus used 0.5 (RESULTS.md).
    text_variety: float = 0.0

    def __post_init__(self) -> None:
        bad = [s for s in self.splits if s not in ALL_SPLITS]
        if bad:
            raise ValueError(f"unknown split(s) {bad}; choose from {ALL_SPLITS}")
        if self.audio_format not in ("flac", "wav"):
            raise ValueError("audio_format must be flac or wav")
        if min(self.size(s) for s in ALL_SPLITS) < 0:
            raise ValueError("split sizes must be >= 0")
        if not 0.0 <= self.text_variety <= 1.0:
            raise ValueError("text_variety must be within [0, 1]")

    def size(self, split: str) -> int:
        return int(getattr(self, split))

    def with_per_split(self, n: int) -> SynthOptions:
        """Every split set to n utterances (a tiny corpus for tests)."""
        return replace(self, train=n, dev=n, test_voices=n, test_hard=n, calib=n)

    @property
    def n_jobs(self) -> int:
        return self.jobs if self.jobs > 0 else default_jobs()


@dataclass(frozen=True)
class AugParams:
    """Everything random about one utterance's audio (drawn at plan time)."""

    rate: float = 1.0  # engine speaking-rate factor
    pitch: int | None = None  # espeak-ng pitch 0-99
    speed: float = 1.0  # speed perturbation factor
    semitones: float = 0.0  # pitch shift
    vtlp: float = 1.0  # VTLP warp factor
    rt60: float = 0.0  # 0: no reverberation
    drr_db: float = 0.0
    noise: str = ""  # "" or one of augment.NOISE_KINDS
    snr_db: float = 0.0
    lowpass_hz: float = 0.0  # 0: full band; else band-limited as if recorded at 2x this rate
    eq_tilt: float = 0.0  # dB per octave around 1 kHz
    eq_bands: tuple[tuple[float, float, float], ...] = ()  # (centre Hz, gain dB, width octaves)
    level_db: float = -26.0  # speech RMS level, dBFS
    pad_left: float = 0.2
    pad_right: float = 0.2
    noise_seed: int = 0

    def describe(self) -> str:
        parts = [f"rate={self.rate:.2f}"]
        if self.pitch is not None:
            parts.append(f"pitch={self.pitch}")
        if self.speed != 1.0:
            parts.append(f"speed={self.speed:.3f}")
        if self.semitones:
            parts.append(f"semitones={self.semitones:+.2f}")
        if self.vtlp != 1.0:
            parts.append(f"vtlp={self.vtlp:.3f}")
        if self.lowpass_hz:
            parts.append(f"lowpass={self.lowpass_hz:.0f}")
        if self.eq_tilt or self.eq_bands:
            bands = ",".join(f"{c:.0f}:{g:+.1f}:{w:.2f}" for c, g, w in self.eq_bands)
            parts.append(f"eq={self.eq_tilt:+.2f}/oct" + (f"[{bands}]" if bands else ""))
        if self.rt60:
            parts.append(f"rt60={self.rt60:.2f},drr={self.drr_db:.1f}")
        if self.noise:
            parts.append(f"noise={self.noise},snr={self.snr_db:.1f}")
        parts.append(f"level={self.level_db:.1f}")
        parts.append(f"pad={self.pad_left:.2f}/{self.pad_right:.2f}")
        return " ".join(parts)


@dataclass(frozen=True)
class UttPlan:
    utt_id: str
    split: str
    intent: str
    text: str  # transcript (what `text` gets, after the intent)
    tts_text: str  # what the engine is asked to say
    template: str
    voice: Voice
    aug: AugParams
    path: Path


@dataclass
class CorpusSummary:
    out_dir: Path
    counts: dict[str, int]
    seconds: dict[str, float]
    engines: dict[str, list[str]]
    wall_s: float
    failed: list[str] = field(default_factory=list)


# ---- planning ---------------------------------------------------------------------
def _split_rng(seed: int, split: str) -> np.random.Generator:
    return np.random.default_rng([seed, ALL_SPLITS.index(split) + 1])


def _pick_voice(rng: np.random.Generator, voices: Sequence[Voice]) -> Voice:
    engines = sorted({v.engine for v in voices})
    w = np.array([ENGINE_WEIGHTS.get(e, 0.1) for e in engines])
    engine = engines[int(rng.choice(len(engines), p=w / w.sum()))]
    pool = [v for v in voices if v.engine == engine]
    return pool[int(rng.integers(len(pool)))]


def _voice_shift(rng: np.random.Generator, voice: Voice) -> tuple[float, float]:
    """(semitones, VTLP warp): turn one training voice into other speakers.

    pitch_shift moves pitch and formants together by 2^(s/12); the VTLP warp
    then sets the formants on their own, so pitch and vocal-tract length vary
    independently. flite's two natural voices (both men) become, in 40% of
    their utterances, higher voices (+2..+9 semitones, formants x1.0-1.25: the
    female and younger speakers the training voices lack), in 15% lower ones.
    espeak-ng varies pitch itself (-p) and has female variants: a milder shift.
    """
    u = float(rng.random())
    if voice.engine == "flite" and u < 0.55:
        semitones = float(rng.uniform(2.0, 9.0)) if u < 0.4 else float(rng.uniform(-4.0, -1.0))
        formants = float(rng.uniform(1.0, 1.25)) if u < 0.4 else float(rng.uniform(0.88, 1.0))
        return semitones, formants / 2.0 ** (semitones / 12.0)
    semitones = float(rng.uniform(-3.0, 3.0)) if rng.random() < 0.3 else 0.0
    warp = float(rng.uniform(0.85, 1.18)) if rng.random() < 0.4 else 1.0
    return semitones, warp


def _channel(rng: np.random.Generator) -> tuple[float, float, tuple[tuple[float, float, float], ...]]:
    """(lowpass Hz, EQ tilt, EQ bands): a random recording channel. 15% are
    band-limited (mostly to 4 kHz, as an 8 kHz engine is), half are coloured."""
    lowpass = 0.0
    if rng.random() < 0.15:
        lowpass = 4000.0 if rng.random() < 0.7 else float(rng.uniform(3400.0, 6000.0))
    tilt, bands = 0.0, ()
    if rng.random() < 0.5:
        tilt = float(rng.uniform(-3.0, 3.0))
        bands = tuple(
            (
                float(np.exp(rng.uniform(np.log(150.0), np.log(6000.0)))),
                float(rng.uniform(-8.0, 8.0)),
                float(rng.uniform(0.3, 1.5)),
            )
            for _ in range(int(rng.integers(0, 4)))
        )
    return lowpass, tilt, bands


def _train_aug(rng: np.random.Generator, voice: Voice) -> AugParams:
    r = lambda a, b: float(rng.uniform(a, b))  # noqa: E731
    p = lambda q: bool(rng.random() < q)  # noqa: E731
    noise = ""
    if p(0.5):
        noise = str(rng.choice(A.NOISE_KINDS, p=[0.15, 0.2, 0.15, 0.1, 0.4]))
    reverb = p(0.25)
    semitones, warp = _voice_shift(rng, voice)
    lowpass, tilt, bands = _channel(rng)
    return AugParams(
        rate=r(0.8, 1.2),
        pitch=int(rng.integers(20, 81)) if voice.engine == "espeak-ng" else None,
        speed=r(0.9, 1.1) if p(0.5) else 1.0,
        semitones=semitones,
        vtlp=warp,
        rt60=r(0.15, 0.5) if reverb else 0.0,
        drr_db=r(3.0, 12.0) if reverb else 0.0,
        noise=noise,
        snr_db=r(5.0, 20.0) if noise else 0.0,
        lowpass_hz=lowpass,
        eq_tilt=tilt,
        eq_bands=bands,
        level_db=r(-34.0, -18.0),
        pad_left=r(0.1, 0.3),
        pad_right=r(0.1, 0.3),
        noise_seed=int(rng.integers(2**31)),
    )


def _calib_aug(rng: np.random.Generator, voice: Voice) -> AugParams:
    """A training utterance (voice shift, channel) in test_hard's noise and reverberation."""
    base, hard = _train_aug(rng, voice), _hard_aug(rng)
    return replace(base, noise=hard.noise, snr_db=hard.snr_db, rt60=hard.rt60, drr_db=hard.drr_db)


def _clean_aug(rng: np.random.Generator) -> AugParams:
    return AugParams(
        pad_left=float(rng.uniform(0.1, 0.3)),
        pad_right=float(rng.uniform(0.1, 0.3)),
        noise_seed=int(rng.integers(2**31)),
    )


def _hard_aug(rng: np.random.Generator) -> AugParams:
    reverb = bool(rng.random() < 0.3)
    return AugParams(
        rt60=float(rng.uniform(0.15, 0.45)) if reverb else 0.0,
        drr_db=float(rng.uniform(4.0, 12.0)) if reverb else 0.0,
        noise=str(rng.choice(A.NOISE_KINDS, p=[0.15, 0.2, 0.15, 0.1, 0.4])),
        snr_db=float(rng.uniform(5.0, 20.0)),
        level_db=float(rng.uniform(-32.0, -20.0)),
        pad_left=float(rng.uniform(0.1, 0.3)),
        pad_right=float(rng.uniform(0.1, 0.3)),
        noise_seed=int(rng.integers(2**31)),
    )


def plan_corpus(opts: SynthOptions, grammar: Grammar, engines: Engines) -> dict[str, list[UttPlan]]:
    """Every utterance of every requested split: text, voice, augmentation.

    Deterministic in (opts.seed, split sizes, grammar, installed voices).
    Sentences are not repeated across splits (as far as the grammar allows).
    The splits before a requested one are planned too (not returned), so that
    ``--splits calib`` makes the same utterances as the full corpus does and
    none of them repeats a sentence of the splits made earlier.
    """
    train_voices = engines.training_voices()
    test_voices = engines.test_voices(festival=opts.festival)
    calib_voices = heldout_calib_voices(engines) if "calib_voices" in opts.splits else []
    if opts.size("calib_voices") and "calib_voices" in opts.splits and not calib_voices:
        raise RuntimeError("no calib_voices voices (espeak-ng with its variants: tools/data/install_engines.sh)")
    needs_test = any(opts.size(s) for s in opts.splits if s not in TRAIN_SPLITS + EXTRA_SPLITS)
    needs_train = any(opts.size(s) for s in opts.splits if s in TRAIN_SPLITS)
    if needs_train and not train_voices:
        raise RuntimeError("no training voices (install espeak-ng and flite: tools/data/install_engines.sh)")
    if needs_test and not test_voices:
        raise RuntimeError("no test voices (install flite: tools/data/install_engines.sh)")
    assert all(is_training_voice(v) and not is_test_voice(v) for v in train_voices)
    assert all(is_test_voice(v) for v in test_voices)
    assert not any(is_training_voice(v) or is_test_voice(v) for v in calib_voices)

    seen: set[str] = set()
    recombined: set[str] = set()  # train's varied sentences (text_variety)
    # its own stream, so text_variety changes train's texts and nothing else
    vary_rng = np.random.default_rng([opts.seed, SPLITS.index("train"), 7])
    train_sentences: set[str] | None = None
    plans: dict[str, list[UttPlan]] = {}
    intents = grammar.intent_names
    audio_root = opts.out_dir.resolve() / "audio"
    last = max((ALL_SPLITS.index(s) for s in opts.splits), default=-1)
    for split in ALL_SPLITS[: last + 1]:  # fixed order: adding a split never changes another
        if split not in opts.splits and not (train_voices if split in TRAIN_SPLITS else test_voices):
            log.warning("%s: its voices are not installed; the splits after it may repeat its sentences", split)
            continue
        rng = _split_rng(opts.seed, split)
        n = opts.size(split)
        heldout = split == "test_hard"
        if heldout and train_sentences is None:
            train_sentences = grammar.distinct_sentences(heldout=False)
        # balanced intents: whole shuffled rounds of the inventory
        order: list[str] = []
        while len(order) < n:
            order += [intents[i] for i in rng.permutation(len(intents))]
        out: list[UttPlan] = []
        for k, intent in enumerate(order[:n]):
            for _ in range(50):
                s = grammar.sample(rng, intent, heldout=heldout)
                avoid_recombined = split != "train" and s.text in recombined
                if s.text not in seen and not avoid_recombined and not (heldout and s.text in train_sentences):
                    break
            seen.add(s.text)
            if split == "train" and vary_rng.random() < opts.text_variety:
                # kept apart from `seen` so train's own draws (voices, augmentation)
                # stay those of a corpus without variety; later splits avoid both
                s = grammar.vary(vary_rng, s)
                recombined.add(s.text)
            if split == "calib_voices":
                voice = calib_voices[int(rng.integers(len(calib_voices)))]
                aug = _clean_aug(rng)
            elif split in TRAIN_SPLITS:
                voice = _pick_voice(rng, train_voices)
                aug = _calib_aug(rng, voice) if split == "calib" else _train_aug(rng, voice)
            else:
                voice = test_voices[int(rng.integers(len(test_voices)))]
                aug = _hard_aug(rng) if heldout else _clean_aug(rng)
            utt_id = f"{voice.speaker}-{split}-{k:06d}"
            out.append(
                UttPlan(
                    utt_id,
                    split,
                    intent,
                    s.text,
                    grammar.tts_text(s.text),
                    s.template,
                    voice,
                    aug,
                    audio_root / split / f"{utt_id}.{opts.audio_format}",
                )
            )
        if split in opts.splits:
            plans[split] = out
    return plans


@functools.cache
def _installed_variants() -> frozenset[str]:
    try:
        out = subprocess.run(
            ["espeak-ng", "--voices=variant"], capture_output=True, timeout=60, check=True
        ).stdout.decode("utf-8", "replace")
    except (subprocess.SubprocessError, OSError) as e:
        log.warning("espeak-ng --voices=variant failed: %s", e)
        return frozenset()
    return frozenset(p[4].split("/", 1)[1] for p in map(str.split, out.splitlines()[1:]) if len(p) >= 5 and "/" in p[4])


def heldout_calib_voices(engines: Engines) -> list[Voice]:
    """The calib_voices speakers: espeak-ng's English voices with :data:`CALIB_VARIANTS`
    (installed ones), neither training nor test voices (engines.py's voice rule)."""
    have = _installed_variants()
    return [Voice("espeak-ng", n, v) for n in engines.espeak_ng for v in CALIB_VARIANTS if v in have]


def _babble_plan(opts: SynthOptions, grammar: Grammar, engines: Engines) -> list[tuple[Voice, str]]:
    rng = np.random.default_rng([opts.seed, 99])
    voices = engines.training_voices()
    intents = grammar.intent_names
    out = []
    for _ in range(BABBLE_BANK):
        s = grammar.sample(rng, intents[int(rng.integers(len(intents)))])
        out.append((voices[int(rng.integers(len(voices)))], grammar.tts_text(s.text)))
    return out


# ---- rendering (in worker processes) ------------------------------------------------
_BANK: list[np.ndarray] = []


def _init_worker(bank: list[np.ndarray]) -> None:
    global _BANK
    _BANK = bank
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover
        pass


def _babble_clip(item: tuple[int, tuple[Voice, str]]) -> tuple[int, np.ndarray]:
    i, (voice, text) = item
    return i, A.trim_silence(synthesize(voice, text, sample_rate=SAMPLE_RATE), SAMPLE_RATE)


def render(plan: UttPlan, bank: Sequence[np.ndarray] | None = None) -> np.ndarray:
    """The finished waveform of one planned utterance (16 kHz float32)."""
    sr, a = SAMPLE_RATE, plan.aug
    rng = np.random.default_rng(a.noise_seed)
    x = synthesize(plan.voice, plan.tts_text, rate=a.rate, pitch=a.pitch, sample_rate=sr)
    x = A.trim_silence(x, sr)
    x = A.speed_perturb(x, sr, a.speed)
    x = A.pitch_shift(x, sr, a.semitones)
    x = A.vtlp(x, sr, a.vtlp)
    x = A.equalize(x, sr, a.eq_tilt, a.eq_bands)
    x = A.band_limit(x, sr, a.lowpass_hz)
    if a.rt60 > 0:
        x = A.convolve(x, A.synthetic_rir(sr, a.rt60, a.drr_db, rng))
    x = x * (A.db_to_amp(a.level_db) / (A.rms(x) or 1.0))
    speech_power = A.rms(x) ** 2
    x = A.pad(x, sr, a.pad_left, a.pad_right)
    if a.noise:
        bank = _BANK if bank is None else bank
        if a.noise == "babble" and bank:
            noise = A.babble(x.size, bank, rng)
        else:
            noise = A.colored_noise(x.size, "pink" if a.noise == "babble" else a.noise, rng)
        x = A.add_noise(x, noise, a.snr_db, speech_power)
    x = A.dither(x, DITHER_DB, rng)
    return A.limit(x).astype(np.float32)


def _render_job(plan: UttPlan) -> tuple[str, float, str]:
    """Render and write one utterance; (utt_id, seconds, error)."""
    try:
        x = render(plan)
        plan.path.parent.mkdir(parents=True, exist_ok=True)
        fmt = "FLAC" if plan.path.suffix == ".flac" else "WAV"
        sf.write(plan.path, x, SAMPLE_RATE, format=fmt, subtype="PCM_16")
        return plan.utt_id, x.size / SAMPLE_RATE, ""
    except Exception as e:  # noqa: BLE001  (reported per utterance, the run goes on)
        return plan.utt_id, 0.0, f"{type(e).__name__}: {e}"


# ---- output ----------------------------------------------------------------------------
def _write_lines(path: Path, rows: Iterable[str]) -> None:
    path.write_text("".join(f"{r}\n" for r in rows), encoding="utf-8")


def write_data_dir(split_dir: Path, plans: Sequence[UttPlan], seconds: dict[str, float]) -> None:
    """ESPnet/Kaldi data dir (sorted by utt id): wav.scp, text, utt2spk, spk2utt,
    plus utt2voice, utt2template, utt2aug and utt2dur."""
    split_dir.mkdir(parents=True, exist_ok=True)
    ps = sorted(plans, key=lambda p: p.utt_id)
    _write_lines(split_dir / "wav.scp", (f"{p.utt_id} {p.path}" for p in ps))
    _write_lines(split_dir / "text", (f"{p.utt_id} {p.intent} {p.text}" for p in ps))
    _write_lines(split_dir / "utt2spk", (f"{p.utt_id} {p.voice.speaker}" for p in ps))
    spk: dict[str, list[str]] = {}
    for p in ps:
        spk.setdefault(p.voice.speaker, []).append(p.utt_id)
    _write_lines(split_dir / "spk2utt", (f"{s} {' '.join(u)}" for s, u in sorted(spk.items())))
    _write_lines(split_dir / "utt2voice", (f"{p.utt_id} {p.voice.id}" for p in ps))
    _write_lines(split_dir / "utt2template", (f"{p.utt_id} {p.template}" for p in ps))
    _write_lines(split_dir / "utt2aug", (f"{p.utt_id} {p.aug.describe()}" for p in ps))
    _write_lines(split_dir / "utt2dur", (f"{p.utt_id} {seconds[p.utt_id]:.4f}" for p in ps))


def write_texts(opts: SynthOptions, plans: dict[str, list[UttPlan]]) -> None:
    """Only the text side (no audio): quick, for inspecting a plan."""
    for split, ps in plans.items():
        d = opts.out_dir / split
        d.mkdir(parents=True, exist_ok=True)
        ps = sorted(ps, key=lambda p: p.utt_id)
        _write_lines(d / "text", (f"{p.utt_id} {p.intent} {p.text}" for p in ps))
        _write_lines(d / "utt2voice", (f"{p.utt_id} {p.voice.id}" for p in ps))


class _Bar(tqdm):
    monitor_interval = 0  # no monitor thread: keeps this process safe to fork


def _threads() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return threading.active_count()


def _start_method() -> str:
    """fork while this process is single-threaded (fast, and the caller needs no
    __main__ guard); forkserver once threads exist (e.g. torch's OpenMP pool),
    since forking those can deadlock the children."""
    methods = mp.get_all_start_methods()
    if "fork" in methods and _threads() == 1:
        return "fork"
    return "forkserver" if "forkserver" in methods else "spawn"


def _pool_map(fn, items: Sequence, jobs: int, bank: list[np.ndarray], desc: str, progress: bool):
    def bar():
        return _Bar(total=len(items), desc=desc, unit="utt", disable=not progress, dynamic_ncols=True)

    if jobs <= 1 or len(items) <= 1:
        _init_worker(bank)
        with bar() as b:
            for item in items:
                yield fn(item)
                b.update()
        return
    ctx = mp.get_context(_start_method())
    chunk = max(1, min(8, len(items) // (jobs * 8)))
    with ctx.Pool(jobs, initializer=_init_worker, initargs=(bank,)) as pool, bar() as b:
        for res in pool.imap_unordered(fn, items, chunksize=chunk):
            yield res
            b.update()


def synthesize_corpus(
    opts: SynthOptions, engines: Engines | None = None, grammar: Grammar | None = None
) -> CorpusSummary:
    """Plan, render and write the corpus; returns what was made."""
    t0 = time.monotonic()
    engines = engines or detect_engines()
    grammar = grammar or Grammar.load(opts.grammar_path, opts.intents_path)
    out = opts.out_dir
    for split in opts.splits:
        if (out / split).exists():
            if not opts.overwrite:
                raise FileExistsError(f"{out / split} exists (use overwrite=True / --overwrite)")
            shutil.rmtree(out / split)
            shutil.rmtree(out / "audio" / split, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    missing = engines.missing()
    if missing:
        log.warning("voices not installed (skipped): %s", " ".join(missing))
    plans = plan_corpus(opts, grammar, engines)
    total = sum(len(p) for p in plans.values())
    log.info("planned %d utterances: %s", total, {s: len(p) for s, p in plans.items()})

    jobs = opts.n_jobs
    bank: list[np.ndarray] = []
    if any(p.aug.noise == "babble" for ps in plans.values() for p in ps):
        items = list(enumerate(_babble_plan(opts, grammar, engines)))
        done = dict(_pool_map(_babble_clip, items, jobs, [], "babble bank", opts.progress))
        bank = [done[i] for i in range(len(items))]  # plan order, whatever the finishing order

    every = [p for split in ALL_SPLITS for p in plans.get(split, [])]
    seconds: dict[str, float] = {}
    failed: list[str] = []
    for utt_id, dur, err in _pool_map(_render_job, every, jobs, bank, "synthesizing", opts.progress):
        if err:
            failed.append(utt_id)
            log.error("%s: %s", utt_id, err)
        seconds[utt_id] = dur
    if failed:
        log.error("%d of %d utterances failed; they are left out of the data dirs", len(failed), total)

    counts, split_seconds = {}, {}
    failed_set = set(failed)
    for split, ps in plans.items():
        ok = [p for p in ps if p.utt_id not in failed_set]
        write_data_dir(out / split, ok, seconds)
        counts[split] = len(ok)
        split_seconds[split] = round(sum(seconds[p.utt_id] for p in ok), 2)
        voices = Counter(p.voice.engine for p in ok)
        log.info("%s: %d utterances, %.1f min, engines %s", split, len(ok), split_seconds[split] / 60, dict(voices))
    write_nlsyms(out / "nlsyms.txt", grammar.intent_names)
    summary = CorpusSummary(out, counts, split_seconds, engines.as_dict(), round(time.monotonic() - t0, 2), failed)
    # A run that adds splits to a corpus (--splits calib) keeps the others' entries.
    path = out / "manifest.json"
    before = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    manifest = {
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(opts).items()},
        "counts": {**before.get("counts", {}), **counts},
        "seconds": {**before.get("seconds", {}), **split_seconds},
        "engines": engines.as_dict(),
        "wall_s": summary.wall_s,
        "failed": failed,
        "grammar": str(opts.grammar_path or resource_path("grammar.yaml")),
    }
    path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return summary
