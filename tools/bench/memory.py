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


def _rss_mb() -> float:
    with open("/proc/self/status") as f:  # Linux; macOS falls back to the peak
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return _peak_mb()


def _peak_mb() -> float:
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
        loaded = _rss_mb()
        for f in files:
            espnet_nbest(s2t, read_audio(f))
    else:
        from pasu.streaming import StreamingOptions, StreamingSession

        rec = Recognizer(model, options)
        loaded = _rss_mb()
        for f in files:
            audio = read_audio(f)
            s = StreamingSession(rec, StreamingOptions())
            for i in range(0, len(audio), 2560):
                s.feed(audio[i : i + 2560])
            s.finalize()
    peak = _peak_mb()
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
