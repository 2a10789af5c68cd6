"""pasu.lite runs the exported device model with torch and ESPnet unimportable.

A subprocess blocks ``torch``, ``torchaudio``, ``espnet`` and ``espnet2`` (a blocked name
in ``sys.modules`` makes its import fail), streams a shipped clip through
:class:`pasu.lite.LiteEncoder` in chunks and writes the encoder output and the greedy
CTC tokens; this process compares them with the torch path.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
import torch

from pasu.audio import read_audio
from pasu.encoders import IncrementalEncoder
from pasu.models import load_model
from pasu.resources import AUDIO_DIR, MODELS

pytestmark = pytest.mark.slow  # exports the device model

BLOCKED = ("torch", "torchaudio", "espnet", "espnet2")

SCRIPT = textwrap.dedent(
    """
    import json, sys
    for name in {blocked!r}:
        sys.modules[name] = None  # import name -> ImportError
    import numpy as np
    from pasu.lite import LiteEncoder, LiteModel, greedy_ctc

    export, audio_file, out = sys.argv[1:4]
    audio = np.load(audio_file)
    encoder = LiteEncoder(LiteModel(export))
    for start in range(0, audio.size, 2560):  # 0.16 s chunks, encoded after each
        encoder.feed(audio[start : start + 2560])
        enc = encoder.encode()
    tokens = greedy_ctc(encoder.ctc_log_probs(enc))
    np.save(out + ".npy", enc)
    heavy = sorted(m for m in sys.modules if m.split(".")[0] in {blocked!r} and sys.modules[m] is not None)
    json.dump({{"tokens": tokens, "heavy_modules": heavy}}, open(out + ".json", "w"))
    """
).format(blocked=BLOCKED)


def test_lite_runs_without_torch(device_export: Path, tmp_path: Path):
    export = device_export
    audio = read_audio(AUDIO_DIR / "cmd07.flac")
    np.save(tmp_path / "audio.npy", audio)
    script = tmp_path / "run_lite.py"
    script.write_text(SCRIPT)
    out = tmp_path / "result"
    done = subprocess.run(
        [sys.executable, str(script), str(export), str(tmp_path / "audio.npy"), str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(Path(f"{out}.json").read_text())
    assert result["heavy_modules"] == []

    loaded = load_model(MODELS / "device")
    torch_enc = IncrementalEncoder(loaded.model)
    for start in range(0, audio.size, 2560):
        torch_enc.feed(audio[start : start + 2560])
    ref = torch_enc.encode()[0][0]
    got = np.load(f"{out}.npy")
    assert got.shape == tuple(ref.shape) and float(np.abs(ref.numpy() - got).max()) < 1e-4
    with torch.no_grad():
        ref_logp = cast(Any, loaded.model).ctc.log_softmax(ref[None])[0]
    best = ref_logp.argmax(-1).tolist()
    ref_tokens = [t for i, t in enumerate(best) if t != 0 and (i == 0 or t != best[i - 1])]
    assert result["tokens"] == ref_tokens and len(ref_tokens) > 3
