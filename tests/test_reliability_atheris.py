"""Coverage-guided fuzzing (atheris) of ``decode_bytes`` and the servicer's request validation.

Not run in CI: a fuzzing session is open-ended. Run it by hand (``pip install atheris``)::

    .venv/bin/python tests/test_reliability_atheris.py decode -runs=20000
    .venv/bin/python tests/test_reliability_atheris.py requests -runs=20000 -max_len=8192

Set ``PASU_FUZZ_SKIP_KNOWN=1`` to skip inputs that hit the known forged-FLAC-length
bug (docs/reliability.md, finding 7) and fuzz past it.

Targets:

* ``decode`` — :func:`pasu.audio.decode_bytes` on arbitrary bytes: finite float32
  samples or :class:`~pasu.audio.AudioError`, nothing else.
* ``requests`` — the bytes are cut into 1–6 serialized messages and given to the
  real ``SpeechService`` handlers (``Recognize``, ``Offload``,
  ``StreamingRecognize``, chosen by the first byte) with a tiny model and a fake
  batcher whose queue is always full: every call must end in INVALID_ARGUMENT
  (refused by validation) or RESOURCE_EXHAUSTED (valid: it reached the queue).
  An INTERNAL status or any other exception is a crash.

What pytest runs here is only a cheap check that the targets work on a few seeds
and a few hundred seeded random inputs (no atheris needed), so the harness does
not rot.
"""

from __future__ import annotations

import os
import random
import sys

import grpc
import numpy as np

from pasu.audio import AudioError, decode_bytes, encode_flac, float_to_pcm16
from pasu.cloud import client as C
from pasu.cloud.batcher import QueueFull
from pasu.cloud.config import WorkerConfig
from pasu.cloud.metrics import WorkerMetrics
from pasu.cloud.service import SpeechService, WorkerState
from pasu.models import token_list_id
from pasu.v1 import hypothesis_pb2, speech_service_pb2

CFG = WorkerConfig(port=0, max_message_bytes=64 * 1024, max_audio_seconds=2.0)


# -- target 1: decode_bytes ------------------------------------------------------------
def decode_one(data: bytes) -> None:
    try:
        out = decode_bytes(data)
    except AudioError:
        return
    assert out.dtype == np.float32 and out.ndim == 1 and np.isfinite(out).all()


# -- target 2: the servicer's request handling -------------------------------------------
class Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code, self.details = code, details


class FakeContext:
    def abort(self, code, details):
        raise Aborted(code, details)

    def time_remaining(self):
        return None

    def is_active(self):
        return True


class FullBatcher:
    """Accepts nothing: a request that reaches it passed every check."""

    def submit(self, job) -> None:
        assert job.samples.dtype == np.float32 and job.samples.size > 0 and np.isfinite(job.samples).all()
        raise QueueFull("queue full (fuzz harness)")


_service: SpeechService | None = None


def service(model=None) -> SpeechService:
    """A SpeechService with a real (tiny) model and the fake batcher; built once."""
    global _service
    if _service is None:
        if model is None:
            from pasu.model_store import resolve_model
            from pasu.models import load_model

            model = load_model(resolve_model("tiny", "cloud"))
        s = SpeechService(CFG.with_(idempotency_cache_size=0), WorkerMetrics())
        tid = token_list_id(model.token_list)
        s.state = WorkerState(
            model=model,
            batcher=FullBatcher(),
            model_info=hypothesis_pb2.ModelInfo(name=model.name, token_list_id=tid),
            token_list_id=tid,
        )
        _service = s
    return _service


def split(data: bytes) -> tuple[int, list[bytes]]:
    """(rpc selector, message byte strings): byte 0 picks the RPC, then 2-byte length prefixes."""
    if not data:
        return 0, []
    rpc, i, parts = data[0] % 3, 1, []
    while i < len(data) and len(parts) < 6:
        n = int.from_bytes(data[i : i + 2].ljust(2, b"\0"), "little") % 8192
        parts.append(data[i + 2 : i + 2 + n])
        i += 2 + n
    return rpc, parts


SKIP_KNOWN = os.environ.get("PASU_FUZZ_SKIP_KNOWN") == "1"


def forged_flac_length(audio: bytes) -> bool:
    """Known bug 7 (docs/reliability.md): a FLAC header claiming far more samples than the bytes hold."""
    import io

    import soundfile as sf

    try:
        with sf.SoundFile(io.BytesIO(audio)) as f:
            return f.frames * max(1, f.channels) > 10**8
    except Exception:
        return False


def requests_one(data: bytes) -> None:
    from google.protobuf.message import DecodeError

    rpc, parts = split(data)
    s, ctx = service(), FakeContext()
    try:
        if rpc == 0:
            req = speech_service_pb2.RecognizeRequest.FromString(parts[0] if parts else b"")
            call = lambda: s.Recognize(req, ctx)  # noqa: E731
        elif rpc == 1:
            msgs = [speech_service_pb2.OffloadRequest.FromString(p) for p in parts]
            call = lambda: s.Offload(iter(msgs), ctx)  # noqa: E731
        else:
            msgs = [speech_service_pb2.StreamingRecognizeRequest.FromString(p) for p in parts]
            call = lambda: list(s.StreamingRecognize(iter(msgs), ctx))  # noqa: E731
    except DecodeError:
        return  # gRPC's deserializer would refuse it before the servicer (see docs/reliability.md)
    if SKIP_KNOWN:  # PASU_FUZZ_SKIP_KNOWN=1: fuzz past the known bugs instead of stopping at them
        audio = req.audio if rpc == 0 else b"".join(m.audio for m in msgs)
        if forged_flac_length(audio) or forged_flac_length(audio[:65536]):
            return
    try:
        call()
    except Aborted as e:
        assert e.code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED), str(e)
        assert len(e.details) >= 10, str(e)
        return
    raise AssertionError("a call passed validation without reaching the batcher")


def seeds() -> list[bytes]:
    """Valid and near-valid inputs for both targets (also a starting corpus for atheris)."""
    x = (0.1 * np.sin(np.arange(8000) / 5)).astype(np.float32)
    flac, pcm = encode_flac(x), float_to_pcm16(x)

    def framed(rpc: int, msgs) -> bytes:
        return bytes([rpc]) + b"".join(len(m).to_bytes(2, "little") + m for m in (m.SerializeToString() for m in msgs))

    return [
        flac,
        flac[: len(flac) // 2],
        pcm,
        b"RIFF" + pcm[:100],
        b"",
        framed(0, [C.recognize_request("seed", x)]),
        framed(0, [C.recognize_request("seed", x, encoding=C.FLAC)]),
        framed(1, list(C.offload_requests("seed", x, chunk_bytes=4000))),
        framed(2, list(C.streaming_requests("seed", x, chunk_bytes=4000))),
    ]


# -- pytest: the harness works (cheap, deterministic) ------------------------------------
def test_harness_targets_on_seeds_and_random_inputs(tiny_models):
    service(tiny_models["conformer"])
    rng = random.Random(1234)
    inputs = seeds() + [rng.randbytes(rng.randrange(0, 600)) for _ in range(300)]
    for data in inputs:
        decode_one(data)
        requests_one(data)
    # mutated seeds exercise deeper paths than pure noise
    for data in seeds():
        for _ in range(20):
            b = bytearray(data)
            for _ in range(rng.randrange(1, 4)):
                if b:
                    b[rng.randrange(len(b))] = rng.randrange(256)
            requests_one(bytes(b))
            decode_one(bytes(b))


INSTRUMENTED = ("pasu.audio", "pasu.cloud.audio_input", "pasu.cloud.service", "pasu.cloud.reuse", "soundfile")


def instrument(atheris) -> int:
    """Coverage for the code under test only (instrumenting all of torch takes minutes)."""
    import importlib
    import inspect

    n = 0
    for name in INSTRUMENTED:
        mod = importlib.import_module(name)
        for obj in list(vars(mod).values()):
            fns = (
                [obj]
                if inspect.isfunction(obj)
                else ([f for f in vars(obj).values() if inspect.isfunction(f)] if inspect.isclass(obj) else [])
            )
            for f in fns:
                if getattr(f, "__module__", None) == name:
                    atheris.instrument_func(f)
                    n += 1
    return n


def main(argv: list[str]) -> None:
    import atheris

    target = {"decode": decode_one, "requests": requests_one}[argv[1]]
    if target is requests_one:
        service()
    corpus = os.environ.get("PASU_FUZZ_CORPUS")
    if corpus and not os.listdir(corpus):
        for i, s in enumerate(seeds()):
            with open(os.path.join(corpus, f"seed{i}"), "wb") as f:
                f.write(s)
    print(f"instrumented {instrument(atheris)} functions of {', '.join(INSTRUMENTED)}", flush=True)
    atheris.Setup([argv[0], *argv[2:], *([corpus] if corpus else [])], target)
    atheris.Fuzz()


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in ("decode", "requests"):
        sys.exit(__doc__)
    main(sys.argv)
