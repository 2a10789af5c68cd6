"""Turn an AudioFormat plus byte chunks into checked model-rate samples.

Each rule of the API (encoding set, rate allowed, LINEAR16 chunks split at even
offsets, FLAC header rate equals the declared rate, duration limit, finite
samples) fails with an :class:`InvalidRequest` whose message names the field
and the limit, so a client can fix its request without reading server logs.
"""

from __future__ import annotations

import numpy as np

from pasu.audio import AudioError, AudioTooLong, check_samples, pcm16_to_float, read_bounded, resample
from pasu.cloud.config import WorkerConfig
from pasu.v1 import audio_pb2


class InvalidRequest(ValueError):
    """A request that breaks the API's rules: answered with INVALID_ARGUMENT."""


FLAC_MAGIC = b"fLaC"


def check_format(fmt: audio_pb2.AudioFormat, config: WorkerConfig, where: str = "audio_format") -> None:
    if fmt.encoding == audio_pb2.AUDIO_ENCODING_UNSPECIFIED:
        raise InvalidRequest(f"{where}.encoding is unspecified; use AUDIO_ENCODING_LINEAR16 or AUDIO_ENCODING_FLAC")
    if fmt.encoding not in (audio_pb2.AUDIO_ENCODING_LINEAR16, audio_pb2.AUDIO_ENCODING_FLAC):
        raise InvalidRequest(f"{where}.encoding {fmt.encoding} is unknown")
    if fmt.sample_rate_hz <= 0:
        raise InvalidRequest(f"{where}.sample_rate_hz must be > 0, got {fmt.sample_rate_hz}")
    if fmt.sample_rate_hz not in config.allowed_sample_rates:
        allowed = ", ".join(str(r) for r in config.allowed_sample_rates)
        raise InvalidRequest(f"{where}.sample_rate_hz {fmt.sample_rate_hz} is not allowed; allowed: {allowed}")


def check_finite(samples: np.ndarray) -> np.ndarray:
    """Float32 mono samples, or InvalidRequest (NaN/Inf, empty)."""
    try:
        return check_samples(samples)
    except AudioError as e:
        raise InvalidRequest(str(e)) from e


class AudioAssembler:
    """Collects one request's audio chunks; ``samples()`` checks and decodes them."""

    def __init__(self, fmt: audio_pb2.AudioFormat, config: WorkerConfig, target_rate: int) -> None:
        check_format(fmt, config)
        self.encoding = fmt.encoding
        self.rate = fmt.sample_rate_hz
        self.target_rate = target_rate
        self.max_seconds = config.max_audio_seconds
        # FLAC never needs much more than raw PCM; the bound stops a stream early.
        self.max_bytes = int(config.max_audio_seconds * self.rate * 2 * 1.1) + 64 * 1024
        self._chunks: list[bytes] = []
        self.n_bytes = 0

    def add(self, chunk: bytes) -> None:
        if self.encoding == audio_pb2.AUDIO_ENCODING_LINEAR16 and len(chunk) % 2:
            raise InvalidRequest(
                f"LINEAR16 audio chunks must hold whole 16-bit samples; got a chunk of {len(chunk)} bytes "
                f"(after {self.n_bytes} bytes)"
            )
        self.n_bytes += len(chunk)
        if self.encoding == audio_pb2.AUDIO_ENCODING_LINEAR16:
            seconds = self.n_bytes / 2 / self.rate
            if seconds > self.max_seconds:
                raise InvalidRequest(
                    f"audio is longer than max_audio_seconds={self.max_seconds:g} ({seconds:.2f} s received so far)"
                )
        elif self.n_bytes > self.max_bytes:
            raise InvalidRequest(
                f"FLAC audio exceeds {self.max_bytes} bytes, more than max_audio_seconds={self.max_seconds:g} can need"
            )
        if chunk:
            self._chunks.append(chunk)

    @property
    def seconds_received(self) -> float:
        """Audio received so far (exact for LINEAR16, approximate for FLAC)."""
        return self.n_bytes / 2 / self.rate

    def samples(self, partial: bool = False) -> np.ndarray:
        """The audio so far at the model's rate; ``partial`` tolerates a truncated FLAC."""
        data = b"".join(self._chunks)
        if not data:
            raise InvalidRequest("audio is empty: no audio bytes were sent")
        if self.encoding == audio_pb2.AUDIO_ENCODING_LINEAR16:
            samples = pcm16_to_float(data)
        else:
            samples = self._flac(data, partial)
        seconds = samples.size / self.rate
        if seconds > self.max_seconds:
            raise InvalidRequest(f"audio is {seconds:.2f} s, longer than max_audio_seconds={self.max_seconds:g}")
        return resample(check_finite(samples), self.rate, self.target_rate)

    def _flac(self, data: bytes, partial: bool) -> np.ndarray:
        if not data.startswith(FLAC_MAGIC):
            raise InvalidRequest("corrupt FLAC: the stream does not start with the 'fLaC' marker")
        try:
            samples, rate = read_bounded(data, self.max_seconds + 1)
        except AudioTooLong as e:
            raise InvalidRequest(f"FLAC {e}: more than max_audio_seconds={self.max_seconds:g} allows") from e
        except AudioError as e:
            raise InvalidRequest(f"corrupt FLAC: {e}") from e
        if rate != self.rate:
            raise InvalidRequest(f"FLAC header says {rate} Hz but audio_format.sample_rate_hz is {self.rate}")
        if samples.ndim == 2:
            if samples.shape[1] != 1 and not partial:
                raise InvalidRequest(f"audio must be mono; the FLAC stream has {samples.shape[1]} channels")
            samples = samples.mean(axis=1)
        return samples
