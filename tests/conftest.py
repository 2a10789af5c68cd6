"""Shared fixtures: tiny ESPnet models built from pasu's configs, and real audio files."""

from __future__ import annotations

import logging
import shutil
import subprocess
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
    from pasu.tools.tiny import TINY_KINDS, TinyModelOptions, build_tiny_model

    root = tmp_path_factory.mktemp("tiny-models")
    return {kind: build_tiny_model(root / kind, TinyModelOptions(kind=kind)) for kind in TINY_KINDS}


@pytest.fixture(scope="session")
def tiny_models(tiny_model_dirs):
    from pasu.models import load_model

    return {kind: load_model(path) for kind, path in tiny_model_dirs.items()}


@pytest.fixture(scope="session")
def device_export(tmp_path_factory) -> Path:
    """The shipped device model's ONNX export (no ORT copies), made once for the session: an
    export is slow and four test modules read it (a test that alters a file restores it)."""
    from pasu.resources import MODELS
    from pasu.tools.export import ExportOptions, export_model

    out = tmp_path_factory.mktemp("device-onnx")
    export_model(MODELS / "device", out, ExportOptions(ort=False))
    return out


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


def _openssl(*args: str, cwd) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


@pytest.fixture(scope="session")
def certs(tmp_path_factory) -> Path:
    """A throw-away CA, a server certificate for 127.0.0.1/localhost and a client certificate (mTLS)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not found")
    d = tmp_path_factory.mktemp("certs")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl(
        "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "1", "-subj", "/CN=pasu test CA", cwd=d
    )
    for name, ext in (
        ("server", "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"),
        ("client", "extendedKeyUsage=clientAuth\n"),
    ):
        (d / f"{name}.ext").write_text(ext)
        _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN=pasu {name}", cwd=d)
        _openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            f"{name}.pem",
            "-days",
            "1",
            "-extfile",
            f"{name}.ext",
            cwd=d,
        )
    return d


class _Evil:
    """A pickle payload that would write ./PWNED if anything unpickled it."""

    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path('PWNED').write_text('x')",))


@pytest.fixture
def poisoned_model_dir(tiny_model_dirs, tmp_path) -> Path:
    """A copy of the tiny Conformer whose model.pth also carries a pickle payload."""
    import pickle
    import shutil

    import torch

    d = tmp_path / "poisoned"
    shutil.copytree(tiny_model_dirs["conformer"], d)
    state = torch.load(d / "model.pth", weights_only=True)
    state["payload"] = _Evil()
    with open(d / "model.pth", "wb") as f:
        torch.save(state, f, pickle_module=pickle)
    return d
