"""The shipped evaluation subset and `pasu data subset`, on the real shipped audio."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pasu.audio import read_audio, read_scp, read_wav_scp
from pasu.resources import EVAL_DIR, eval_audio
from pasu.tools.data.engines import Voice, is_test_voice
from pasu.tools.data.subset import SubsetOptions, choose_utterances, make_subset

INTENTS = [
    line.split("\t")[0]
    for line in (Path(__file__).parents[1] / "shared/resources/slu/intents.tsv").read_text().splitlines()
    if line and not line.startswith(("#", "intent\t"))
]


def test_shipped_eval_subset_is_complete_and_held_out():
    wavs, text = read_wav_scp(EVAL_DIR), read_scp(EVAL_DIR / "text")
    assert len(wavs) == 200 and set(wavs) == set(text)
    size = sum(Path(p).stat().st_size for p in wavs.values())
    assert size <= 10e6, f"{size / 1e6:.1f} MB"
    intents = {t.split()[0] for t in text.values()}
    assert intents <= set(INTENTS) and len(intents) == len(set(INTENTS))  # every intent
    voices = read_scp(EVAL_DIR / "utt2voice")
    assert all(is_test_voice(Voice.parse(v)) for v in voices.values())
    assert len(eval_audio()) == 200
    audio = read_audio(next(iter(wavs.values())))
    assert audio.ndim == 1 and 0.5 * 16000 < audio.size < 15 * 16000


def test_relative_wav_scp_resolves_from_any_working_directory(tmp_path):
    wavs = read_wav_scp(EVAL_DIR)
    cwd = os.getcwd()
    try:
        os.chdir(tmp_path)
        assert all(Path(p).is_file() for p in read_wav_scp(EVAL_DIR).values())
    finally:
        os.chdir(cwd)
    assert all(Path(p).is_file() for p in wavs.values())


def test_choose_is_balanced_and_seeded():
    text = {f"u{i:03d}": f"{'abc'[i % 3]} words {i}" for i in range(30)}
    ids = choose_utterances(text, 9, seed=1)
    assert sorted(text[u][0] for u in ids) == list("aaabbbccc")
    assert ids == choose_utterances(text, 9, seed=1) != choose_utterances(text, 9, seed=2)


def test_subset_of_the_subset(tmp_path):
    out = tmp_path / "sub"
    ids = make_subset(EVAL_DIR, out, SubsetOptions(size=12, seed=3))
    assert len(ids) == 12
    wavs = read_wav_scp(out)
    assert set(wavs) == set(ids) == set(read_scp(out / "utt2voice"))
    assert (out / "wav.scp").read_text().split()[1].startswith("audio/")  # self-contained
    assert len({read_scp(out / "text")[u].split()[0] for u in ids}) == 12  # 12 different intents
    with pytest.raises(ValueError, match="MB"):
        make_subset(EVAL_DIR, tmp_path / "big", SubsetOptions(size=200, max_mb=0.1))


def test_cli_reports_errors(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "pasu.cli",
        "data",
        "subset",
        "--data",
        str(tmp_path / "missing"),
        "--out",
        str(tmp_path / "o"),
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "pasu data subset:" in r.stderr
    ok = subprocess.run(
        cmd[:6] + [str(EVAL_DIR), "--out", str(tmp_path / "o"), "--size", "3"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ok.returncode == 0, ok.stderr
    assert len(read_scp(tmp_path / "o" / "wav.scp")) == 3
