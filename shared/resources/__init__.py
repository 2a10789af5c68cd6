"""Files pasu ships: configs, example audio, (later) the default models."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent
CONFIGS = ROOT / "configs"
#: 24 short spoken commands (espeak-ng, 16 kHz FLAC) with transcripts in ``text``
AUDIO_DIR = ROOT / "audio"
MODELS = ROOT / "models"


def example_audio(limit: int | None = None) -> list[Path]:
    files = sorted(AUDIO_DIR.glob("*.flac"))
    return files[:limit] if limit else files
