"""Regenerate shared/resources/audio: short spoken commands from espeak-ng (needs espeak-ng).

The files are committed; this script documents how they were made. Each clip
gets low-level noise (never exact digital silence) and is stored as 16 kHz
mono FLAC, with its transcript in ``text`` (ESPnet's format).
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

OUT = Path(__file__).resolve().parent.parent / "shared" / "resources" / "audio"
SENTENCES = [
    "wake me up at seven am",
    "what is the weather like tomorrow",
    "turn off the lights in the kitchen",
    "play some jazz music",
    "set a timer for ten minutes",
    "what time is it in tokyo",
    "remind me to call mom tonight",
    "how far is the airport",
    "order a large pizza",
    "turn the volume up",
    "tell me a joke",
    "is it going to rain today",
    "cancel my alarm",
    "add milk to my shopping list",
    "what is on my calendar",
    "send an email to john",
    "dim the lights please",
    "who won the game last night",
    "play the next song",
    "book a taxi to the station",
    "how do you say hello in french",
    "stop the music",
    "make the room warmer",
    "read me the news",
]
VOICES = ["en-us", "en-gb", "en-us+f3", "en-gb-scotland", "en-us+m4", "en-029"]


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1234)
    lines = []
    for i, text in enumerate(SENTENCES):
        voice = VOICES[i % len(VOICES)]
        with tempfile.NamedTemporaryFile(suffix=".wav") as tmp:
            subprocess.run(["espeak-ng", "-v", voice, "-s", "160", "-w", tmp.name, text], check=True)
            audio, sr = sf.read(tmp.name, dtype="float32")
        audio = soxr.resample(audio, sr, 16000)
        pad = np.zeros(int(0.2 * 16000), dtype=np.float32)
        audio = np.concatenate([pad, audio, pad])
        audio = audio + rng.normal(0, 1e-3, audio.shape).astype(np.float32)
        uid = f"cmd{i:02d}"
        sf.write(OUT / f"{uid}.flac", np.clip(audio, -1, 1), 16000, subtype="PCM_16")
        lines.append(f"{uid} {text}")
    (OUT / "text").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
