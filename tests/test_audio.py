"""Audio input: every kind of bad input gets a clear AudioError; good input is normalized."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from pasu.audio import AudioError, check_samples, decode_bytes, encode_flac, pcm16_to_float, read_audio


def test_reads_and_resamples(tmp_path, audio_files):
    ref = read_audio(audio_files[0])
    data, rate = sf.read(audio_files[0], dtype="float32")
    assert rate == 16000 and ref.dtype == np.float32 and len(ref) == len(data)
    # the same clip at 44.1 kHz stereo comes back at 16 kHz mono, about as long
    import soxr

    up = soxr.resample(data, 16000, 44100)
    sf.write(tmp_path / "x.wav", np.stack([up, up], axis=1), 44100)
    back = read_audio(tmp_path / "x.wav")
    assert abs(len(back) - len(ref)) <= 2
    assert np.corrcoef(back[: len(ref)][:20000], ref[: len(back)][:20000])[0, 1] > 0.99


@pytest.mark.parametrize(
    "samples, message",
    [
        (np.zeros(0, np.float32), "no samples"),
        (np.array([0.1, np.nan], np.float32), "NaN or Inf"),
        (np.array([np.inf], np.float32), "NaN or Inf"),
        (np.zeros((2, 2, 2), np.float32), "shape"),
    ],
)
def test_bad_samples(samples, message):
    with pytest.raises(AudioError, match=message):
        check_samples(samples)


def test_bad_files_and_bytes(tmp_path):
    with pytest.raises(AudioError, match="no such file"):
        read_audio(tmp_path / "missing.wav")
    (tmp_path / "junk.wav").write_bytes(b"RIFF\x00\x00junk" * 10)
    with pytest.raises(AudioError, match="cannot decode"):
        read_audio(tmp_path / "junk.wav")
    with pytest.raises(AudioError, match="no audio bytes"):
        decode_bytes(b"")
    flac = encode_flac(np.random.default_rng(0).normal(0, 0.1, 16000).astype(np.float32))
    assert len(decode_bytes(flac)) == 16000
    with pytest.raises(AudioError, match="cannot decode"):
        decode_bytes(flac[: len(flac) // 3] + b"\xff" * 7 if False else b"fLaC" + b"\x00" * 50)
    with pytest.raises(AudioError, match="even number"):
        pcm16_to_float(b"\x01\x02\x03")
