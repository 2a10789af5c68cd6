"""Small client helpers: build SpeechService requests from samples (bench, tests, demos).

A device's n-best goes in as :func:`pasu.wire.device_result` builds it, the agent's message.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import numpy as np

from pasu.audio import encode_flac, float_to_pcm16
from pasu.v1 import audio_pb2, recognition_pb2, speech_service_pb2, speech_service_pb2_grpc

LINEAR16 = audio_pb2.AUDIO_ENCODING_LINEAR16
FLAC = audio_pb2.AUDIO_ENCODING_FLAC


def channel(
    target: str,
    root_cert: bytes | None = None,
    client_cert: tuple[bytes, bytes] | None = None,
    server_name: str | None = None,
) -> grpc.Channel:
    """An insecure channel, or TLS when ``root_cert`` is given (mTLS with ``client_cert`` = (key, cert))."""
    if root_cert is None:
        return grpc.insecure_channel(target)
    key, cert = client_cert if client_cert else (None, None)
    creds = grpc.ssl_channel_credentials(root_certificates=root_cert, private_key=key, certificate_chain=cert)
    opts = [("grpc.ssl_target_name_override", server_name)] if server_name else []
    return grpc.secure_channel(target, creds, options=opts)


def stub(ch: grpc.Channel) -> speech_service_pb2_grpc.SpeechServiceStub:
    return speech_service_pb2_grpc.SpeechServiceStub(ch)


def audio_bytes(samples: np.ndarray, rate: int = 16000, encoding: audio_pb2.AudioEncoding = LINEAR16) -> bytes:
    return float_to_pcm16(samples) if encoding == LINEAR16 else encode_flac(samples, rate)


def decoding_options(beam_size: int | None = None, nbest: int | None = None) -> recognition_pb2.DecodingOptions:
    o = recognition_pb2.DecodingOptions()
    if beam_size is not None:
        o.beam_size = beam_size
    if nbest is not None:
        o.nbest = nbest
    return o


def recognize_request(
    request_id: str,
    samples: np.ndarray,
    rate: int = 16000,
    encoding: audio_pb2.AudioEncoding = LINEAR16,
    beam_size: int | None = None,
    nbest: int | None = None,
) -> speech_service_pb2.RecognizeRequest:
    return speech_service_pb2.RecognizeRequest(
        request_id=request_id,
        audio_format=audio_pb2.AudioFormat(encoding=encoding, sample_rate_hz=rate),
        decoding_options=decoding_options(beam_size, nbest),
        audio=audio_bytes(samples, rate, encoding),
    )


def chunks(data: bytes, size: int = 3200) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def offload_requests(
    request_id: str,
    samples: np.ndarray,
    device: speech_service_pb2.DeviceResult | None = None,
    rate: int = 16000,
    encoding: audio_pb2.AudioEncoding = LINEAR16,
    beam_size: int | None = None,
    nbest: int | None = None,
    chunk_bytes: int = 3200,
    update: speech_service_pb2.DeviceResult | None = None,
) -> Iterator[speech_service_pb2.OffloadRequest]:
    """An Offload stream: config (with the device's n-best), the audio, then the device's
    newer n-best ``update`` if any (what an agent that keeps its pilots running sends)."""
    cfg = speech_service_pb2.OffloadConfig(
        request_id=request_id,
        audio_format=audio_pb2.AudioFormat(encoding=encoding, sample_rate_hz=rate),
        reason=speech_service_pb2.OFFLOAD_REASON_LOW_CONFIDENCE,
        decoding_options=decoding_options(beam_size, nbest),
    )
    if device is not None:
        cfg.device_result.CopyFrom(device)
    yield speech_service_pb2.OffloadRequest(config=cfg)
    for c in chunks(audio_bytes(samples, rate, encoding), chunk_bytes):
        yield speech_service_pb2.OffloadRequest(audio=c)
    if update is not None:
        yield speech_service_pb2.OffloadRequest(device_update=update)


def streaming_requests(
    request_id: str,
    samples: np.ndarray,
    rate: int = 16000,
    encoding: audio_pb2.AudioEncoding = LINEAR16,
    interim: bool = True,
    beam_size: int | None = None,
    nbest: int | None = None,
    chunk_bytes: int = 3200,
) -> Iterator[speech_service_pb2.StreamingRecognizeRequest]:
    cfg = speech_service_pb2.StreamingRecognizeConfig(
        request_id=request_id,
        audio_format=audio_pb2.AudioFormat(encoding=encoding, sample_rate_hz=rate),
        decoding_options=decoding_options(beam_size, nbest),
        interim_results=interim,
    )
    yield speech_service_pb2.StreamingRecognizeRequest(config=cfg)
    for c in chunks(audio_bytes(samples, rate, encoding), chunk_bytes):
        yield speech_service_pb2.StreamingRecognizeRequest(audio=c)
