"""`pasu` exports its public API as whisper does, and importing it stays cheap."""

from __future__ import annotations

import subprocess
import sys

import pytest

import pasu

pytestmark = pytest.mark.timeout(120)


def test_public_names_resolve():
    from pasu.audio import read_audio
    from pasu.decoding import DecodingOptions, Recognizer
    from pasu.models import load_model
    from pasu.streaming import StreamingOptions, StreamingSession

    expected = {
        "load_model": load_model,
        "Recognizer": Recognizer,
        "DecodingOptions": DecodingOptions,
        "StreamingSession": StreamingSession,
        "StreamingOptions": StreamingOptions,
        "read_audio": read_audio,
    }
    for name, obj in expected.items():
        assert getattr(pasu, name) is obj
        assert name in pasu.__all__ and name in dir(pasu)
    with pytest.raises(AttributeError):
        pasu.no_such_name  # noqa: B018


def test_import_pasu_does_not_import_torch():
    code = "import sys, pasu; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0
