"""Debian's TTS engines as speech sources: espeak-ng, flite, festival.

The voice rule (see docs/data.md): the training-voice splits (train, dev, calib)
use only espeak-ng's English voices (with the variants in :data:`ESPEAK_VARIANTS`)
and flite's awb and rms; flite's kal, kal16 and slt and every festival voice are
test voices and are never used to train. :func:`is_test_voice` is the single place that says so.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import struct
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soxr

log = logging.getLogger(__name__)

ESPEAK_ENGLISH = (
    "en-us",
    "en-gb",
    "en-gb-scotland",
    "en-gb-x-rp",
    "en-gb-x-gbclan",
    "en-gb-x-gbcwmd",
    "en-029",
    "en-us-nyc",
)
# espeak-ng's voice variants (espeak-ng-data/voices/!v, applied as `-v en-us+NAME`):
# the classic m1..m8 and f1..f5, the Klatt-synthesizer variants (a different
# glottal source) and the named variants that still sound like a person. Left
# out: robots, whispers, croaks and effects (Demonic, UniRobot, robosoft*, ...).
# Every variant is another speaker for the same 8 accents (why more speakers:
# docs/data.md, "The voice rule").
ESPEAK_VARIANTS = (
    ("",)
    + tuple(f"m{i}" for i in range(1, 9))
    + tuple(f"f{i}" for i in range(1, 6))
    + tuple(f"klatt{i}" for i in ("", 2, 3, 4, 5, 6))
    + (
        "Alex",
        "Alicia",
        "Andrea",
        "Andy",
        "Annie",
        "Denis",
        "Diogo",
        "Gene",
        "Gene2",
        "Henrique",
        "Hugo",
        "Jacky",
        "Lee",
        "Marco",
        "Mario",
        "Michael",
        "Mike",
        "Nguyen",
        "RicishayMax",
        "Storm",
        "adam",
        "anika",
        "antonio",
        "aunty",
        "belinda",
        "benjamin",
        "boris",
        "caleb",
        "david",
        "ed",
        "edward",
        "edward2",
        "grandma",
        "grandpa",
        "gustave",
        "iven",
        "iven2",
        "iven3",
        "iven4",
        "john",
        "kaukovalta",
        "linda",
        "marcelo",
        "max",
        "michel",
        "miguel",
        "norbert",
        "pablo",
        "paul",
        "pedro",
        "quincy",
        "rob",
        "robert",
        "sandro",
        "shelby",
        "steph",
        "steph2",
        "steph3",
        "travis",
        "victor",
        "zac",
    )
)
FLITE_TRAIN = ("awb", "rms")
FLITE_TEST = ("kal", "kal16", "slt")
FESTIVAL_TEST = ("kal_diphone", "ked_diphone", "cmu_us_slt_arctic_hts")
FESTIVAL_VOICE_DIRS = (Path("/usr/share/festival/voices"), Path("/usr/lib/festival/voices"))
# apt packages that provide each festival test voice
FESTIVAL_PACKAGES = {
    "kal_diphone": "festvox-kallpc16k",
    "ked_diphone": "festvox-kdlpc16k",
    "cmu_us_slt_arctic_hts": "festvox-us-slt-hts",
}
TIMEOUT_S = 60


@dataclass(frozen=True, order=True)
class Voice:
    """An engine voice; ``variant`` is an espeak-ng variant (m1..m7, f1..f5) or ''."""

    engine: str  # "espeak-ng" | "flite" | "festival"
    name: str
    variant: str = ""

    @property
    def id(self) -> str:
        """Human-readable, e.g. 'espeak-ng:en-gb-x-rp+f2', 'flite:kal16'."""
        return f"{self.engine}:{self.name}" + (f"+{self.variant}" if self.variant else "")

    @property
    def speaker(self) -> str:
        """A speaker id of [a-z0-9_] only (so Kaldi-style utt-id sorting is safe)."""
        raw = f"{self.engine}_{self.name}" + (f"_{self.variant}" if self.variant else "")
        return "".join(c if c.isalnum() else "_" for c in raw.lower()).replace("espeak_ng", "espeakng")

    @classmethod
    def parse(cls, voice_id: str) -> Voice:
        engine, rest = voice_id.split(":", 1)
        name, _, variant = rest.partition("+")
        return cls(engine, name, variant)


def is_test_voice(voice: Voice) -> bool:
    """True for the held-out test voices: never to be used for train/dev."""
    if voice.engine == "festival":
        return True
    if voice.engine == "flite":
        return voice.name not in FLITE_TRAIN
    return False


def is_training_voice(voice: Voice) -> bool:
    if voice.engine == "espeak-ng":
        return voice.name in ESPEAK_ENGLISH and voice.variant in ESPEAK_VARIANTS
    return voice.engine == "flite" and voice.name in FLITE_TRAIN


@dataclass(frozen=True)
class Engines:
    """Which engines and voices are installed."""

    espeak_ng: tuple[str, ...]  # English voices found
    flite: tuple[str, ...]
    festival: tuple[str, ...]
    espeak_variants: tuple[str, ...] = ESPEAK_VARIANTS  # of ESPEAK_VARIANTS, those installed

    def training_voices(self) -> list[Voice]:
        voices = [
            Voice("espeak-ng", n, v)
            for n in ESPEAK_ENGLISH
            if n in self.espeak_ng
            for v in ESPEAK_VARIANTS
            if v in self.espeak_variants
        ]
        voices += [Voice("flite", n) for n in FLITE_TRAIN if n in self.flite]
        return voices

    def test_voices(self, festival: bool = True) -> list[Voice]:
        voices = [Voice("flite", n) for n in FLITE_TEST if n in self.flite]
        if festival:
            voices += [Voice("festival", n) for n in FESTIVAL_TEST if n in self.festival]
        return voices

    def missing(self) -> list[str]:
        """What the full voice set lacks, for a log line."""
        out = [f"espeak-ng:{n}" for n in ESPEAK_ENGLISH if n not in self.espeak_ng]
        out += [f"espeak-ng:+{v}" for v in ESPEAK_VARIANTS if v not in self.espeak_variants]
        out += [f"flite:{n}" for n in FLITE_TRAIN + FLITE_TEST if n not in self.flite]
        out += [f"festival:{n}" for n in FESTIVAL_TEST if n not in self.festival]
        return out

    def as_dict(self) -> dict[str, list[str]]:
        return {k: list(v) for k, v in asdict(self).items()}

    def describe(self) -> str:
        lines = []
        for engine, names in (("espeak-ng", self.espeak_ng), ("flite", self.flite), ("festival", self.festival)):
            lines.append(f"{engine:10s} {'yes' if names else 'NO '}  {' '.join(names) or '-'}")
        train, test = self.training_voices(), self.test_voices()
        lines.append(f"training voices: {len(train)}  test voices: {' '.join(v.id for v in test) or '-'}")
        if self.missing():
            lines.append("missing: " + " ".join(self.missing()) + "  (tools/data/install_engines.sh installs them)")
        return "\n".join(lines)


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(cmd, capture_output=True, timeout=TIMEOUT_S, check=True, **kw)


def _espeak_voices() -> tuple[str, ...]:
    if shutil.which("espeak-ng") is None:
        return ()
    try:
        out = _run(["espeak-ng", "--voices=en"]).stdout.decode("utf-8", "replace")
    except (subprocess.SubprocessError, OSError) as e:
        log.warning("espeak-ng --voices failed: %s", e)
        return ()
    found = set()
    for line in out.splitlines()[1:]:
        parts = line.split()
        # columns: Pty Language Age/Gender VoiceName File ...; skip mbrola (mb/) voices
        if len(parts) >= 5 and not parts[4].startswith("mb/"):
            found.add(parts[1])
    return tuple(n for n in ESPEAK_ENGLISH if n in found)


def _espeak_variants() -> tuple[str, ...]:
    """Which of :data:`ESPEAK_VARIANTS` this espeak-ng has ("" always)."""
    if shutil.which("espeak-ng") is None:
        return ("",)
    try:
        out = _run(["espeak-ng", "--voices=variant"]).stdout.decode("utf-8", "replace")
    except (subprocess.SubprocessError, OSError) as e:
        log.warning("espeak-ng --voices=variant failed: %s", e)
        return ("",)
    # columns: Pty Language Age/Gender VoiceName File; File is !v/<variant>
    found = {
        parts[4].split("/", 1)[1]
        for parts in map(str.split, out.splitlines()[1:])
        if len(parts) >= 5 and parts[4].startswith("!v/")
    }
    return tuple(v for v in ESPEAK_VARIANTS if not v or v in found)


def _flite_voices() -> tuple[str, ...]:
    if shutil.which("flite") is None:
        return ()
    try:
        out = _run(["flite", "-lv"]).stdout.decode("utf-8", "replace")
    except (subprocess.SubprocessError, OSError) as e:
        log.warning("flite -lv failed: %s", e)
        return ()
    names = set(out.split(":", 1)[-1].split())
    return tuple(n for n in FLITE_TRAIN + FLITE_TEST if n in names)


def _festival_voices() -> tuple[str, ...]:
    if shutil.which("festival") is None or shutil.which("text2wave") is None:
        return ()
    found = []
    for name in FESTIVAL_TEST:
        if any(d.is_dir() and any(d.glob(f"*/{name}")) for d in FESTIVAL_VOICE_DIRS):
            found.append(name)
    return tuple(found)


@functools.cache
def detect_engines() -> Engines:
    """Which engines/voices this machine has (cached for the process)."""
    e = Engines(_espeak_voices(), _flite_voices(), _festival_voices(), _espeak_variants())
    log.info(
        "engines: espeak-ng=%s (%d variants) flite=%s festival=%s",
        len(e.espeak_ng),
        len(e.espeak_variants),
        ",".join(e.flite) or "-",
        ",".join(e.festival) or "-",
    )
    return e


def parse_wav(data: bytes) -> tuple[np.ndarray, int]:
    """16-bit PCM WAV bytes -> (float32 mono, rate). Tolerates streamed headers
    (espeak-ng --stdout writes a placeholder data size)."""
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ValueError("not a RIFF/WAVE stream")
    pos, rate, channels, bits = 12, None, 1, 16
    while pos + 8 <= len(data):
        cid, size = data[pos : pos + 4], struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        body = pos + 8
        if cid == b"fmt ":
            fmt, channels, rate = struct.unpack("<HHI", data[body : body + 8])
            bits = struct.unpack("<H", data[body + 14 : body + 16])[0]
            if fmt != 1 or bits != 16:
                raise ValueError(f"unsupported WAV format {fmt}/{bits} bit")
        elif cid == b"data":
            end = min(len(data), body + size) if 0 < size < 0xFFFFFFF0 else len(data)
            raw = data[body:end]
            raw = raw[: len(raw) // (2 * channels) * 2 * channels]
            x = np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
            if channels > 1:
                x = x.reshape(-1, channels).mean(axis=1)
            if rate is None:
                raise ValueError("WAV data before fmt chunk")
            return x, rate
        pos = body + size + (size & 1)
    raise ValueError("no data chunk in WAV stream")


def synthesize(
    voice: Voice, text: str, rate: float = 1.0, pitch: int | None = None, sample_rate: int = 16000
) -> np.ndarray:
    """Say `text` with `voice`; float32 mono at `sample_rate` (resampled by soxr).

    rate: speaking-rate factor (1.0 = the engine's default); pitch: espeak-ng's
    0-99 pitch (None = default). Festival voices ignore both.
    """
    if voice.engine == "espeak-ng":
        name = voice.name + (f"+{voice.variant}" if voice.variant else "")
        cmd = ["espeak-ng", "-v", name, "-s", str(int(round(175 * rate))), "--stdout"]
        if pitch is not None:
            cmd += ["-p", str(int(pitch))]
        x, sr = parse_wav(_run(cmd + ["--", text]).stdout)
    elif voice.engine == "flite":
        cmd = [
            "flite",
            "-voice",
            voice.name,
            "--setf",
            f"duration_stretch={1.0 / rate:.3f}",
            "-t",
            text,
            "-o",
            "/dev/stdout",
        ]
        x, sr = parse_wav(_run(cmd).stdout)
    elif voice.engine == "festival":
        with tempfile.TemporaryDirectory(prefix="pasu-fest-") as tmp:
            txt, wav = Path(tmp) / "in.txt", Path(tmp) / "out.wav"
            txt.write_text(text + "\n", encoding="utf-8")
            _run(["text2wave", "-eval", f"(voice_{voice.name})", "-o", str(wav), str(txt)])
            x, sr = parse_wav(wav.read_bytes())
    else:
        raise ValueError(f"unknown engine {voice.engine!r}")
    if x.size == 0:
        raise RuntimeError(f"{voice.id} produced no audio for {text!r}")
    if sr != sample_rate:
        x = soxr.resample(x, sr, sample_rate, quality="HQ").astype(np.float32)
    return x


def default_jobs() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)
