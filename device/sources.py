"""Audio in as chunks: files (optionally at real-time pace), raw PCM on a pipe, a microphone."""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Iterable, Iterator
from typing import BinaryIO

import numpy as np

from pasu.audio import read_audio

log = logging.getLogger(__name__)


def paced(chunks: Iterable[np.ndarray], rate: int) -> Iterator[np.ndarray]:
    """Release each chunk when the audio before it would have been spoken (a live feed)."""
    t0 = time.monotonic()
    heard = 0
    for c in chunks:
        delay = t0 + heard / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        yield c
        heard += len(c)


def split(samples: np.ndarray, chunk: int) -> Iterator[np.ndarray]:
    for i in range(0, len(samples), chunk):
        yield samples[i : i + chunk]


def file_chunks(path, chunk_ms: int = 100, realtime: bool = False, rate: int = 16000) -> Iterator[np.ndarray]:
    """A WAV/FLAC file at any rate, resampled to ``rate``, in ``chunk_ms`` chunks."""
    chunks = split(read_audio(path, rate), max(1, rate * chunk_ms // 1000))
    return paced(chunks, rate) if realtime else chunks


def pcm_chunks(stream: BinaryIO, chunk_ms: int = 100, rate: int = 16000) -> Iterator[np.ndarray]:
    """Raw 16-bit little-endian mono PCM from a pipe (e.g. ``arecord -f S16_LE -r 16000``)."""
    n = 2 * max(1, rate * chunk_ms // 1000)
    carry = b""
    while True:
        data = stream.read(n)
        if not data:
            break
        data = carry + data
        whole = len(data) - len(data) % 2
        carry = data[whole:]
        if whole:
            yield np.frombuffer(data[:whole], dtype="<i2").astype(np.int16)
    if carry:
        log.warning("dropping a trailing odd byte of PCM input")


class MicrophoneError(RuntimeError):
    """No usable microphone input (sounddevice or PortAudio missing, no device)."""


def mic_chunks(chunk_ms: int = 100, rate: int = 16000, device: str | int | None = None) -> Iterator[np.ndarray]:
    """Microphone audio via sounddevice (PortAudio: Linux, macOS, Windows) until interrupted.

    Checks and opens the microphone *now* (a clear :class:`MicrophoneError`
    before any work starts); the returned iterator yields its chunks.
    """
    try:
        import sounddevice as sd  # pyright: ignore[reportMissingImports]  (optional: the `mic` extra)
    except ImportError as e:
        raise MicrophoneError("--mic needs the sounddevice package: pip install sounddevice") from e
    except OSError as e:  # sounddevice is there, the PortAudio library is not
        raise MicrophoneError(
            f"--mic needs the PortAudio library ({e}); install it (apt install libportaudio2, "
            "brew install portaudio) or pipe raw PCM into `pasu device run` instead"
        ) from e
    q: queue.Queue[bytes] = queue.Queue()

    def callback(data, frames, when, status) -> None:
        if status:
            log.warning("microphone: %s", status)
        q.put(bytes(data))

    blocksize = max(1, rate * chunk_ms // 1000)
    try:
        stream = sd.RawInputStream(
            samplerate=rate, channels=1, dtype="int16", blocksize=blocksize, device=device, callback=callback
        )
        stream.start()
    except Exception as e:  # PortAudioError, ValueError (no such device)
        raise MicrophoneError(f"cannot open the microphone: {e}") from e

    def read() -> Iterator[np.ndarray]:
        try:
            while True:
                yield np.frombuffer(q.get(), dtype="<i2").astype(np.int16)
        except KeyboardInterrupt:
            return
        finally:
            stream.stop()
            stream.close()

    return read()
