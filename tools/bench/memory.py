"""Peak memory of one side of the latency benchmark, measured in a child process.

Peak RSS is per process and only grows, so each side runs alone in a fresh
interpreter: ``python -m pasu.tools.bench.memory {espnet|pasu} MODEL FILES…`` prints
one JSON line with the RSS after loading the model and the peak after decoding
every file (stock ESPnet on the whole file; pasu as a stream with every technique).
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys


def status_mb(field: str) -> float | None:
    """A /proc/self/status memory field in MB (Linux), else None."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def rss_mb() -> float:
    """This process's resident memory now (its peak where Linux cannot say)."""
    rss = status_mb("VmRSS")
    return peak_rss_mb() if rss is None else rss


def peak_rss_mb() -> float:
    """This process's peak RSS. VmHWM where Linux has it: ``ru_maxrss`` survives execve and so
    counts the parent's RSS at fork, which would bill the benchmark's own process to the child."""
    hwm = status_mb("VmHWM")
    if hwm is not None:
        return hwm
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def measure(side: str, model_dir: str, files: list[str]) -> dict:
    from pasu.audio import read_audio
    from pasu.decoding import DecodingOptions, Recognizer
    from pasu.models import load_model

    model = load_model(model_dir)
    options = DecodingOptions()
    if side == "espnet":
        from pasu.tools.reference import espnet_nbest, espnet_speech2text

        s2t = espnet_speech2text(model, options)
        loaded = rss_mb()
        for f in files:
            espnet_nbest(s2t, read_audio(f))
    else:
        from pasu.streaming import StreamingOptions, StreamingSession

        rec = Recognizer(model, options)
        loaded = rss_mb()
        for f in files:
            audio = read_audio(f)
            s = StreamingSession(rec, StreamingOptions())
            for i in range(0, len(audio), 2560):
                s.feed(audio[i : i + 2560])
            s.finalize()
    peak = peak_rss_mb()
    return {
        "side": side,
        "loaded_mb": round(loaded, 1),
        "peak_mb": round(peak, 1),
        "growth_mb": round(peak - loaded, 1),
    }


def measure_in_child(side: str, model_dir: str, files: list[str]) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "pasu.tools.bench.memory", side, model_dir, *files],
        capture_output=True,
        text=True,
        check=True,
        timeout=1800,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    print(json.dumps(measure(sys.argv[1], sys.argv[2], sys.argv[3:])))
