"""`pasu device run --mic` against a sound device (issue 28, item 5).

A virtual microphone made of Debian's packages: a PulseAudio null sink whose
monitor is the default source, reached by PortAudio through ALSA's ``pulse``
device. A command, silence and background noise are played into it with
``paplay``; the agent must answer the command once and give noise no answer.
Skipped, with the reason, where the packages are missing
(``apt install pulseaudio pulseaudio-utils libasound2-plugins libportaudio2``,
``pip install sounddevice``).
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf

pytestmark = pytest.mark.timeout(300)

SR = 16000
COMMAND = "festival_cmu_us_slt_arctic_hts-test_hard-000145"  # one the shipped device gets right


def _missing() -> str | None:
    tools = [t for t in ("pulseaudio", "pactl", "paplay") if shutil.which(t) is None]
    if tools:
        return f"no {', '.join(tools)} (apt install pulseaudio pulseaudio-utils libasound2-plugins)"
    try:
        import sounddevice  # noqa: F401  # pyright: ignore[reportMissingImports]
    except ImportError:
        return "no sounddevice (pip install sounddevice)"
    except OSError as e:
        return f"no PortAudio library ({e}; apt install libportaudio2)"
    return None


pytestmark = [pytestmark, pytest.mark.slow, pytest.mark.skipif(_missing() is not None, reason=_missing() or "")]


def _pactl(*args: str) -> str:
    return subprocess.run(["pactl", *args], check=True, capture_output=True, text=True, timeout=30).stdout.strip()


@pytest.fixture(scope="module")
def virtual_mic():
    """A null sink ``pasu_vmic`` whose monitor is the default source; started and removed here."""
    started = subprocess.run(["pactl", "info"], capture_output=True, timeout=30).returncode != 0
    if started:
        subprocess.run(["pulseaudio", "-D", "--exit-idle-time=-1"], capture_output=True, timeout=30)
        for _ in range(50):
            if subprocess.run(["pactl", "info"], capture_output=True, timeout=30).returncode == 0:
                break
            time.sleep(0.1)
        else:
            pytest.skip("pulseaudio would not start here")
    module = _pactl("load-module", "module-null-sink", "sink_name=pasu_vmic")
    before = _pactl("get-default-source")
    _pactl("set-default-source", "pasu_vmic.monitor")
    yield "pasu_vmic"
    _pactl("set-default-source", before)
    _pactl("unload-module", module)
    if started:
        subprocess.run(["pulseaudio", "-k"], capture_output=True, timeout=30)


def test_mic_answers_a_command_once_and_noise_never(virtual_mic, tmp_path):
    from pasu.model_store import default_model_dir
    from pasu.resources import ROOT
    from pasu.tools.data.augment import colored_noise, db_to_amp

    if default_model_dir("device") is None:
        pytest.skip("no shipped device model in this checkout")
    d = ROOT / "eval" / "test_hard"
    wav = {u: p for u, p in (ln.split(maxsplit=1) for ln in (d / "wav.scp").read_text().splitlines())}
    intent = next(ln.split()[1] for ln in (d / "text").read_text().splitlines() if ln.startswith(COMMAND))
    silence, noise = tmp_path / "silence.wav", tmp_path / "noise.wav"
    sf.write(silence, np.zeros(int(1.5 * SR), np.int16), SR)
    sf.write(noise, colored_noise(3 * SR, "brown", np.random.default_rng(0)) * db_to_amp(-30.0), SR, subtype="PCM_16")

    agent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from pasu.cli import main; sys.exit(main())",
            "device",
            "run",
            "--mic",
            "--mic-device",
            "pulse",
            "--name",
            "mic",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(3.0)  # the microphone opens before the model loads and buffers what it hears
        assert agent.poll() is None, agent.stderr.read() if agent.stderr else ""
        for f in (silence, d / wav[COMMAND], silence, noise, silence, silence):
            subprocess.run(["paplay", f"--device={virtual_mic}", str(f)], check=True, timeout=60)
        time.sleep(1.0)
    finally:
        agent.send_signal(signal.SIGINT)  # ends the stream: the agent answers what it heard, then exits
        out, err = agent.communicate(timeout=240)
    records = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    understood = [r for r in records if r.get("understood")]
    assert len(understood) == 1, (records, err[-2000:])
    assert understood[0]["intent"] == intent  # and the noise after it got no answer
