"""Files pasu ships: configs, example audio, (later) the default models."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent
CONFIGS = ROOT / "configs"
#: 24 short spoken commands (espeak-ng, 16 kHz FLAC) with transcripts in ``text``
AUDIO_DIR = ROOT / "audio"
MODELS = ROOT / "models"
#: 200 test_hard utterances (test voices, held-out templates, noise), every intent,
#: as a self-contained ESPnet data dir: `pasu data subset --data data/synth/test_hard`
EVAL_DIR = ROOT / "eval" / "test_hard"


def example_audio(limit: int | None = None) -> list[Path]:
    files = sorted(AUDIO_DIR.glob("*.flac"))
    return files[:limit] if limit else files


def eval_audio(limit: int | None = None) -> list[Path]:
    """The shipped evaluation subset's audio (the example clips where it is missing)."""
    files = sorted((EVAL_DIR / "audio").glob("*.flac"))
    if not files:
        return example_audio(limit)
    return files[:limit] if limit else files
