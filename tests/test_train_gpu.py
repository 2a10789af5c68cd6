"""The GPU path (scripts/gpu_kit.sh, scripts/train_gpu.sh, pasu.tools.train.gpu) at tiny size on the CPU.

The lent machine has Python 3.12, torch 2.11 and the packages of scripts/gpu_image_packages.txt,
and reaches no registry. Here: the kit's wheels install offline for CPython 3.12; its espeak-ng
runs from the kit's folder with the kit's libraries; kit and tree fit what a run receives; and
the script runs end to end in a bare environment — a venv with no site packages but the image's
(linked from this venv), the kit's own pure-Python wheels (the slimmed ESPnet among them) and
pasu — on a tiny model, on the CPU, then resumes; the parts it leaves reassemble into a pair
that pasu.load_model loads. The kit is built (PyPI, Debian) when build/gpu_kit is missing or
older than scripts/gpu_kit.sh.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import json
import re
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
KIT = REPO / "build" / "gpu_kit"
IMAGE = REPO / "scripts" / "gpu_image_packages.txt"
MANYLINUX = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")

pytestmark = pytest.mark.slow


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _image() -> set[str]:
    """What the GPU machine's Python has (scripts/gpu_image_packages.txt)."""
    return {_norm(ln.strip()) for ln in IMAGE.read_text().splitlines() if ln.strip() and not ln.startswith("#")}


@pytest.fixture(scope="module")
def kit() -> Path:
    script = REPO / "scripts" / "gpu_kit.sh"
    stamp = KIT / "kit.json"
    if not stamp.is_file() or stamp.stat().st_mtime < script.stat().st_mtime:
        subprocess.run(["bash", str(script), str(KIT)], cwd=REPO, check=True, timeout=900)
    return KIT


@pytest.fixture(scope="module")
def unpacked(kit: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("kit")
    for name in ("python.tar.xz", "engines.tar.xz"):
        with tarfile.open(kit / name) as tf:
            tf.extractall(out, filter="tar")
    return out


def test_kit_fits_beside_the_tree(kit: Path) -> None:
    """A run receives 64 MiB: the tracked and untracked-not-ignored files plus the kit."""
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    tree = sum((REPO / f.decode()).stat().st_size for f in files if f and (REPO / f.decode()).is_file())
    info = json.loads((kit / "kit.json").read_text())
    assert info["bytes"] == sum((kit / n).stat().st_size for n in info["files"])
    assert tree + info["bytes"] + (kit / "kit.json").stat().st_size <= 64 * 2**20, (tree, info["bytes"])


def test_kit_wheels_install_offline_for_python312(unpacked: Path, tmp_path: Path) -> None:
    wheels = sorted((unpacked / "wheels").glob("*.whl"))
    names = {_norm(w.name.split("-")[0]) for w in wheels}
    assert {"espnet", "typeguard", "configargparse", "librosa", "soundfile", "soxr", "hydra-core"} <= names
    image = _image()
    assert "torch" in image and not names & image  # nothing the machine has, no second torch
    platforms = [a for p in MANYLINUX for a in ("--platform", p)]
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--only-binary=:all:"]
    cmd += ["--python-version", "3.12", "--implementation", "cp", *platforms, "--target", str(tmp_path / "t")]
    subprocess.run(cmd + [str(w) for w in wheels], check=True, timeout=300)
    assert (tmp_path / "t" / "espnet2" / "tasks" / "asr.py").is_file()
    # pasu itself, as train_gpu.sh installs it there: from this tree, no index, no build isolation
    own = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-build-isolation"]
    own += ["--target", str(tmp_path / "t"), str(REPO)]
    leftovers = [REPO / "build" / "lib", REPO / "build" / "bdist.linux-x86_64"]
    before = [p for p in leftovers if p.exists()]
    try:
        subprocess.run(["flock", "/tmp/pasu-setup.lock", *own], check=True, timeout=600)  # it builds in the tree
    finally:
        for path in set(leftovers) - set(before):  # setuptools' build dirs: stale modules would linger
            shutil.rmtree(path, ignore_errors=True)
    assert (tmp_path / "t" / "pasu" / "tools" / "train" / "gpu.py").is_file()
    assert not (tmp_path / "t" / "espnet2" / "sds").exists()  # slimmed


def test_kit_espeak_runs_from_its_folder(unpacked: Path, tmp_path: Path) -> None:
    engines = unpacked / "engines"
    env = {"LD_LIBRARY_PATH": str(engines / "lib")}
    ldd = subprocess.run(["ldd", str(engines / "libexec" / "espeak-ng")], env=env, capture_output=True, text=True)
    resolved = dict(re.findall(r"^\s*(\S+) => (\S+)", ldd.stdout, re.M))
    for lib in ("libespeak-ng.so.1", "libsonic.so.0", "libpcaudio.so.0"):
        assert resolved[lib].startswith(str(engines / "lib")), resolved
    assert set(resolved) <= {"libespeak-ng.so.1", "libsonic.so.0", "libpcaudio.so.0", "libc.so.6", "libm.so.6"}
    wav = tmp_path / "x.wav"
    subprocess.run(
        [str(engines / "bin" / "espeak-ng"), "-v", "en-gb-x-rp+f2", "-w", str(wav), "set an alarm"],
        env={"PATH": "/usr/bin:/bin"},
        check=True,
        timeout=60,
    )
    voices = subprocess.run(
        [str(engines / "bin" / "espeak-ng"), "--voices=en"],
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
    ).stdout
    assert wav.read_bytes()[:4] == b"RIFF" and wav.stat().st_size > 10_000
    assert "en-us-nyc" in voices and "en-gb-scotland" in voices


def _link_dist(dist: md.Distribution, site: Path) -> None:
    base = Path(str(dist.locate_file("")))
    tops = {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
    for top in tops:
        if not (site / top).exists() and (base / top).exists():
            (site / top).symlink_to(base / top)


@pytest.fixture(scope="module")
def bare_python(unpacked: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv with only the image's packages, the kit's and pasu: nothing else of this venv."""
    root = tmp_path_factory.mktemp("bare")
    site = root / "site"
    wheels = sorted((unpacked / "wheels").glob("*.whl"))
    pure = [w for w in wheels if "-cp3" not in w.name]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-index",
            "--no-deps",
            "--target",
            str(site),
            *map(str, pure),
        ],
        check=True,
        timeout=300,
    )
    allowed = _image()
    allowed |= {_norm(w.name.split("-")[0]) for w in wheels if w not in pure}  # kit's binary ones, for 3.13
    for dist in md.distributions():
        name = _norm(dist.metadata["Name"])
        if name in allowed or name.startswith(("nvidia-", "cuda-")):
            _link_dist(dist, site)
    venv = root / "venv"
    subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", str(venv)], check=True)  # type: ignore[attr-defined]
    py = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], capture_output=True, text=True
    ).stdout.strip()
    editable = next(Path(p) for p in sys.path if "__editable__.pasu" in p)  # pasu, as `make setup` installs it
    # a site dir, as the machine's site-packages is: its .pth files count (setuptools' distutils shim)
    (Path(purelib) / "gpu_image.pth").write_text(f"import site; site.addsitedir({str(site)!r})\n{editable}\n")
    check = "import espnet2, sys; import pasu.tools.train.gpu; print(espnet2.__file__)"
    out = subprocess.run([str(py), "-c", check], capture_output=True, text=True, check=True).stdout
    assert out.startswith(str(site))  # the kit's ESPnet
    for absent in ("jiwer", "grpc_tools", "rapidfuzz"):  # this venv's, not the image's: not there
        assert subprocess.run([str(py), "-c", f"import {absent}"], capture_output=True).returncode != 0
    return py


def _run_script(kit: Path, out: Path, work: Path, py: Path, minutes: float) -> subprocess.CompletedProcess[str]:
    cmd = ["bash", "scripts/train_gpu.sh", str(kit), str(out), "--work", str(work), "--python", str(py)]
    cmd += ["--size", "tiny", "--ngpu", "0", "--train", "30", "--dev", "10", "--jobs", "2", "--num-workers", "1"]
    cmd += ["--minutes", str(minutes)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=minutes * 60 + 120)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc


def test_script_runs_bare_resumes_and_parts_reassemble(kit: Path, bare_python: Path, tmp_path: Path) -> None:
    import torch

    import pasu
    from pasu.models import load_state_dict
    from pasu.tools.train.gpu import PART_BYTES, reassemble

    out, work = tmp_path / "out", tmp_path / "work"
    t0 = time.monotonic()
    first = _run_script(kit, out, work, bare_python, minutes=3)
    assert time.monotonic() - t0 < 3 * 60 + 30  # the deadline holds (setup included)
    assert f"engines: {work / 'kit' / 'engines' / 'bin' / 'espeak-ng'}" in first.stdout  # the kit's espeak-ng
    assert "en-us-nyc" in json.loads((work / "data" / "manifest.json").read_text())["engines"]["espeak_ng"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["roles"] == ["cloud", "device"] and manifest["training"]["epochs_done"] >= 1
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8 and all((out / f).stat().st_size <= PART_BYTES for f in files), files

    # a rerun on the same work dir resumes: corpus and stats stay, ESPnet continues
    _run_script(kit, out, work, bare_python, minutes=1.5)
    log = (out / "train_gpu.log").read_text()
    assert "corpus: " in log and "exists, skipping" in log

    # the documented reassembly (cat + sha256sum -c) and the checked one agree
    sums = dict(line.split()[::-1] for line in (out / "SHA256SUMS").read_text().splitlines())
    joined = b"".join((out / p).read_bytes() for p in sorted(manifest["parts"]))
    assert hashlib.sha256(joined).hexdigest() == sums["pasu_pair.tar"]
    cloud_dir, device_dir = reassemble(out, tmp_path / "pair")
    cloud, device = pasu.load_model(cloud_dir), pasu.load_model(device_dir)
    assert cloud.config["encoder"] == "branchformer" and device.config["encoder"] == "late_branchformer"
    c, d = load_state_dict(cloud_dir / "model.pth"), load_state_dict(device_dir / "model.pth")
    assert c["decoder.embed.0.weight"].dtype == torch.float16
    assert all(torch.equal(v, d[k]) for k, v in c.items() if k.startswith("decoder."))  # shared bit for bit

    (out / sorted(manifest["parts"])[0]).write_bytes(b"broken")
    with pytest.raises(ValueError, match="checksum"):
        reassemble(out, tmp_path / "again")
