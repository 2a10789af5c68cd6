"""`pip install 'pasu[lite]'`: a fresh venv without torch or ESPnet runs the device agent.

The venv is built for real (``python -m venv``, a non-editable install of a copy of this
checkout, dependencies from the index), then the device agent runs from it on the
exported shipped device model (``--runtime onnx``) against a real cloud worker that this
process (the full install) serves on 127.0.0.1. ``-X importtime`` shows what that run
imported: onnxruntime and pasu.lite, never torch or ESPnet. A command that needs torch
says which extra to install (also checked without building a venv: torch and ESPnet
blocked in this install). Set ``PASU_LITE_VENV_JSON=PATH`` to keep the venv's size.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from pasu.audio import float_to_pcm16, read_audio
from pasu.cloud.config import WorkerConfig
from pasu.cloud.server import CloudWorker
from pasu.models import load_model
from pasu.resources import AUDIO_DIR, MODELS

pytestmark = pytest.mark.timeout(900)

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "torchaudio", "espnet", "espnet2", "silero_vad")
CLIP = AUDIO_DIR / "cmd03.flac"  # "play some jazz music"
SIZE_TARGET_MB = 250  # issue 26's target, reported (a benchmark, not asserted)


def _source_copy(dest: Path) -> Path:
    """What the package builds from (the generated gRPC stubs included), so that the build's
    own files (build/, *.egg-info) never touch the checkout other work is using."""
    dest.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, dest / name)
    for folder in ("shared", "device", "cloud", "tools"):
        shutil.copytree(REPO / folder, dest / folder, ignore=ignore)
    return dest


def _disk_bytes(root: Path) -> int:
    return sum(p.lstat().st_blocks * 512 for p in root.rglob("*") if not p.is_symlink())


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PYTHONNOUSERSITE"] = "1"
    return env


@pytest.fixture(scope="module")
def lite_venv(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lite")
    venv = root / "venv"
    base = getattr(sys, "_base_executable", sys.executable)
    # A device's venv needs no pip of its own: this venv's pip installs into it (`pip --python`),
    # as a device image's build would.
    subprocess.run([base, "-m", "venv", "--without-pip", str(venv)], check=True)
    source = _source_copy(root / "src")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(venv / "bin" / "python"),
            "install",
            "--quiet",
            f"{source}[lite]",
        ],
        check=True,
        env=_env(),
        cwd=root,
    )
    return venv


@pytest.fixture(scope="module")
def cloud_worker():
    w = CloudWorker(
        WorkerConfig(host="127.0.0.1", port=0, default_beam_size=2, max_batch_wait_ms=5, grace_s=1.0),
        load_model(MODELS / "cloud"),
    )
    w.start(wait=True, timeout=120)
    yield w
    w.stop(grace=0.5)


def _pasu(venv: Path, *args: str, cwd: Path, importtime: bool = False) -> subprocess.CompletedProcess:
    flags = ["-X", "importtime"] if importtime else []
    cmd = [str(venv / "bin" / "python"), *flags, "-m", "pasu.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=_env(), cwd=cwd, timeout=600)


def _imported(importtime_stderr: str) -> set[str]:
    """Module names from ``-X importtime`` lines (``import time: self | cumulative | name``)."""
    names = set()
    for line in importtime_stderr.splitlines():
        m = re.match(r"import time:\s+\d+ \|\s+\d+ \|\s*(\S+)", line)
        if m:
            names.add(m.group(1))
    return names


@pytest.mark.slow
def test_lite_venv_has_no_torch(lite_venv: Path, tmp_path: Path):
    probe = "import importlib.util as u, json; print(json.dumps({m: u.find_spec(m) is not None for m in %r}))"
    out = subprocess.run(
        [str(lite_venv / "bin" / "python"), "-c", probe % (HEAVY + ("onnxruntime", "pasu.lite.recognizer"),)],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=tmp_path,
        check=True,
    )
    found = json.loads(out.stdout)
    assert not any(found[m] for m in HEAVY), found
    assert found["onnxruntime"] and found["pasu.lite.recognizer"], found
    size = _disk_bytes(lite_venv)
    site = next((lite_venv / "lib").glob("python3*/site-packages"))
    report = {
        "venv_mb": round(size / 2**20, 1),
        "site_packages_mb": round(_disk_bytes(site) / 2**20, 1),
        "pasu_mb": round(_disk_bytes(site / "pasu") / 2**20, 1),
        "pip_mb": round(_disk_bytes(site / "pip") / 2**20, 1) if (site / "pip").is_dir() else 0.0,
        "target_mb": SIZE_TARGET_MB,
        "python": sys.version.split()[0],
        "packages": sorted(p.name.split("-")[0] for p in site.glob("*.dist-info")),
    }
    print(json.dumps(report))
    if os.environ.get("PASU_LITE_VENV_JSON"):
        Path(os.environ["PASU_LITE_VENV_JSON"]).write_text(json.dumps(report, indent=1) + "\n")


@pytest.mark.slow
def test_device_agent_runs_from_the_lite_venv(lite_venv: Path, device_export: Path, cloud_worker, tmp_path: Path):
    common = ["device", "transcribe", str(CLIP), "--runtime", "onnx", "--model", str(device_export)]
    common += ["--beam-size", "4", "--total-deadline", "60", "--deadline", "60"]
    # offloaded: the cloud's answer, the device's n-best sent along
    r = _pasu(lite_venv, *common, "--cloud", f"127.0.0.1:{cloud_worker.port}", "--policy", "always", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    (rec,) = [json.loads(line) for line in r.stdout.splitlines()]
    assert rec["file"] == str(CLIP)
    assert rec["source"] == "cloud" and rec["offloaded"] is True and rec["fallback"] is False, rec
    assert rec["cloud"]["model"] and "jazz" in rec["text"], rec
    # local: the lite runtime's own answer, every module it imported on record
    r = _pasu(lite_venv, *common, "--interim", cwd=tmp_path, importtime=True)
    assert r.returncode == 0, r.stderr[-3000:]
    records = [json.loads(line) for line in r.stdout.splitlines()]
    (final,) = [x for x in records if not x.get("interim")]
    assert [x for x in records if x.get("interim")], "no pilot ran"
    assert final["source"] == "device" and final["offloaded"] is False, final
    assert "jazz" in final["text"], final
    imported = _imported(r.stderr)
    assert {"onnxruntime", "pasu.lite.recognizer", "pasu.device.onnx_confidence"} <= imported
    assert not {m for m in imported if m.split(".")[0] in HEAVY}
    # a live stream (raw 16 kHz PCM) through `pasu device run`
    pcm = tmp_path / "clip.pcm"
    silence = np.zeros(8000, np.float32)
    pcm.write_bytes(float_to_pcm16(np.concatenate([silence, read_audio(CLIP), silence])))
    live = _pasu(lite_venv, "device", "run", "--input", str(pcm), *common[3:], cwd=tmp_path)
    assert live.returncode == 0, live.stderr[-3000:]
    (rec,) = [json.loads(line) for line in live.stdout.splitlines()]
    assert rec["file"] == str(pcm) and rec["intent"] == "play_music", rec
    # the torch runtime (this install) on the same clip: the same answer, the same confidence
    # (the exported estimator on the same step features)
    torch_run = subprocess.run(
        [sys.executable, "-m", "pasu.cli", *common[:3], "--beam-size", "4"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=600,
    )
    assert torch_run.returncode == 0, torch_run.stderr[-3000:]
    (ref,) = [json.loads(line) for line in torch_run.stdout.splitlines()]
    assert final["text"] == ref["text"], (final, ref)
    assert abs(final["confidence"] - ref["confidence"]) < 1e-3, (final, ref)


@pytest.mark.slow
def test_commands_that_need_torch_name_the_extra(lite_venv: Path, tmp_path: Path):
    for args in (
        ["device", "transcribe", str(CLIP)],  # --runtime torch, the default
        ["export", "--model", str(MODELS / "device"), "--out", str(tmp_path / "x")],
        ["cloud", "serve", "--port", "0"],
    ):
        r = _pasu(lite_venv, *args, cwd=tmp_path)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert "pip install 'pasu[full]'" in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)


BLOCKED_RUN = textwrap.dedent(
    """
    import runpy, sys
    for name in {heavy!r}:
        sys.modules[name] = None  # import name -> ModuleNotFoundError, as where it is not installed
    sys.argv = ["pasu", *sys.argv[1:]]
    runpy.run_module("pasu.cli", run_name="__main__")
    """
).format(heavy=HEAVY + ("yaml", "grpc_health", "onnx"))


@pytest.mark.parametrize(
    "args",
    [
        ["device", "transcribe", str(CLIP)],
        ["device", "run", "--input", "/dev/null"],
        ["export", "--model", "m", "--out", "o"],
        ["decode", str(CLIP)],
        ["cloud", "serve"],
    ],
    ids=lambda a: " ".join(a[:2]),
)
def test_without_torch_a_command_names_the_extra(args: list[str], tmp_path: Path):
    r = subprocess.run(
        [sys.executable, "-c", BLOCKED_RUN, *args], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "which this install lacks: pip install 'pasu[full]'" in r.stderr and "Traceback" not in r.stderr, r.stderr
    if args[0] == "device":
        assert "--runtime onnx --model EXPORT_DIR" in r.stderr


def test_without_torch_help_lists_every_command(tmp_path: Path):
    r = subprocess.run([sys.executable, "-c", BLOCKED_RUN, "--help"], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert re.search(r"export\s+\(needs pip install 'pasu\[full\]'\)", r.stdout), r.stdout
    assert all(c in r.stdout for c in ("device", "cloud", "train", "decode"))
