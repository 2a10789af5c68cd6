"""Shared fixtures: tiny ESPnet models built from pasu's configs, and real audio files."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from pasu.audio import read_audio, read_scp

from pasu.resources import AUDIO_DIR


@pytest.fixture(scope="session", autouse=True)
def _quiet_espnet():
    for name in ("espnet2", "numba"):
        logging.getLogger(name).setLevel(logging.WARNING)


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory) -> dict[str, Path]:
    from pasu.tiny import TINY_KINDS, TinyModelOptions, build_tiny_model

    root = tmp_path_factory.mktemp("tiny-models")
    return {kind: build_tiny_model(root / kind, TinyModelOptions(kind=kind)) for kind in TINY_KINDS}


@pytest.fixture(scope="session")
def tiny_models(tiny_model_dirs):
    from pasu.models import load_model

    return {kind: load_model(path) for kind, path in tiny_model_dirs.items()}


@pytest.fixture(scope="session")
def audio_files() -> list[Path]:
    files = sorted(AUDIO_DIR.glob("*.flac"))
    assert len(files) >= 20, f"{AUDIO_DIR} must hold at least 20 clips"
    return files


@pytest.fixture(scope="session")
def audio(audio_files):
    """{utterance id: 16 kHz float32 samples} for the committed test clips."""
    return {f.stem: read_audio(f) for f in audio_files}


@pytest.fixture(scope="session")
def references() -> dict[str, str]:
    return read_scp(AUDIO_DIR / "text")
