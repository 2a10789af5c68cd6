"""The versioned gRPC API in ``proto/``: it passes ``buf lint``, compiles to the
``pasu.v1`` stubs, and those stubs carry the shapes the device and cloud rely on.

Real tools throughout: buf (from npm), grpc_tools' protoc and an in-process gRPC
server on localhost.
"""

from __future__ import annotations

import importlib
import logging
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from types import ModuleType

import grpc
import pytest
from google.protobuf import duration_pb2
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor, FileDescriptor

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
PROTO_ROOT = REPO / "proto"
NPM_PREFIX = REPO / ".venv" / "npm"
LOCAL_BUF = NPM_PREFIX / "node_modules" / ".bin" / "buf"
# Pinned so lint results do not change under us; keep in step with the Makefile.
BUF_PACKAGE = "@bufbuild/buf@1.75.0"
PROTO_STEMS = sorted(p.stem for p in (PROTO_ROOT / "pasu" / "v1").glob("*.proto"))


def _run(cmd: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    log.info("running %s (in %s)", " ".join(cmd), cwd)
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def buf() -> str:
    """Path to the buf binary, installing it into .venv/npm with npm if needed."""
    if LOCAL_BUF.exists():
        return str(LOCAL_BUF)
    if found := shutil.which("buf"):
        return found
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip(f"buf is not installed ({LOCAL_BUF} nor on PATH) and npm is absent to install it")
    proc = _run(
        [npm, "install", "--prefix", str(NPM_PREFIX), "--no-audit", "--no-fund", "--save-exact", BUF_PACKAGE],
        cwd=REPO,
        timeout=600,
    )
    assert proc.returncode == 0, f"npm install {BUF_PACKAGE} failed:\n{proc.stdout}\n{proc.stderr}"
    assert LOCAL_BUF.exists(), f"npm installed {BUF_PACKAGE} but {LOCAL_BUF} is missing"
    return str(LOCAL_BUF)


@pytest.fixture(scope="module")
def v1() -> dict[str, ModuleType]:
    """The real ``pasu.v1`` stubs, regenerated the way the build does it.

    The generated code imports its siblings as ``from pasu.v1 import x_pb2``, so
    only the installed package (not a copy in a tmp dir) can be imported.
    """
    proc = _run([sys.executable, "-m", "pasu.protogen"], cwd=REPO)
    assert proc.returncode == 0, f"python -m pasu.protogen failed:\n{proc.stderr}"
    importlib.invalidate_caches()
    mods = {}
    for stem in PROTO_STEMS:
        mods[f"{stem}_pb2"] = importlib.import_module(f"pasu.v1.{stem}_pb2")
    mods["speech_service_pb2_grpc"] = importlib.import_module("pasu.v1.speech_service_pb2_grpc")
    return mods


def _files(v1: dict[str, ModuleType]) -> list[FileDescriptor]:
    return [m.DESCRIPTOR for name, m in v1.items() if name.endswith("_pb2")]


def _messages(v1: dict[str, ModuleType]) -> Iterator[Descriptor]:
    def walk(d: Descriptor) -> Iterator[Descriptor]:
        if d.GetOptions().map_entry:  # synthetic map<k, v> entries are not ours
            return
        yield d
        for nested in d.nested_types:
            yield from walk(nested)

    for f in _files(v1):
        for d in f.message_types_by_name.values():
            yield from walk(d)


def _enums(v1: dict[str, ModuleType]) -> Iterator[EnumDescriptor]:
    for f in _files(v1):
        yield from f.enum_types_by_name.values()
    for d in _messages(v1):
        yield from d.enum_types


# --- buf ---------------------------------------------------------------------


@pytest.mark.slow
def test_buf_lint(buf: str) -> None:
    proc = _run([buf, "lint"], cwd=PROTO_ROOT)
    assert proc.returncode == 0, f"buf lint failed:\n{proc.stdout}{proc.stderr}"


@pytest.mark.slow
def test_buf_format(buf: str) -> None:
    """One canonical layout, so diffs of the API show only real changes."""
    proc = _run([buf, "format", "--diff", "--exit-code"], cwd=PROTO_ROOT)
    assert proc.returncode == 0, f"run `buf format -w` in proto/:\n{proc.stdout}{proc.stderr}"


# --- generated code ----------------------------------------------------------


def test_generate_into_tmp_matches_package(tmp_path: Path, v1: dict[str, ModuleType]) -> None:
    from pasu import protogen

    out = tmp_path / "v1"
    files = protogen.generate(out=out)
    expected = {f"{s}{suffix}" for s in PROTO_STEMS for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")}
    assert {f.name for f in files} == expected
    real = Path(v1["speech_service_pb2"].__file__).parent
    for f in files:
        if f.suffix == ".py":
            compile(f.read_text(), str(f), "exec")
        # protoc is deterministic: the tmp output must equal what pasu.v1 holds.
        assert f.read_bytes() == (real / f.name).read_bytes(), f"pasu.v1/{f.name} is stale"


def test_offload_request_roundtrip(v1: dict[str, ModuleType]) -> None:
    audio, hyp, rec, svc = (v1[f"{s}_pb2"] for s in ("audio", "hypothesis", "recognition", "speech_service"))
    device_best = hyp.Hypothesis(
        text="wake me up at seven",
        intent="alarm_set",
        token_ids=[5, 17, 42, 9],
        scores=hyp.ScorerScores(decoder=-3.5, ctc=-4.25, length_bonus=4.0, total=-2.9, other={"lm": -6.0}),
        confidence=0.41,
    )
    config = svc.OffloadConfig(
        request_id="0b7c6d1e-retry-safe",
        audio_format=audio.AudioFormat(encoding=audio.AUDIO_ENCODING_LINEAR16, sample_rate_hz=16000),
        reason=svc.OFFLOAD_REASON_LOW_CONFIDENCE,
        device_result=svc.DeviceResult(
            model=hyp.ModelInfo(name="tiny-slu", version="1.2.0", token_list_id="sha256:abc"),
            hypotheses=[device_best],
            confidence=0.41,
            complete=False,
        ),
        decoding_options=rec.DecodingOptions(beam_size=8, nbest=3),
    )
    config.segment.start_offset.FromMilliseconds(12_340)  # end_offset unset: segment still open
    stream = [svc.OffloadRequest(config=config)] + [svc.OffloadRequest(audio=b"\x01\x00" * 800) for _ in range(3)]

    parsed = [svc.OffloadRequest.FromString(m.SerializeToString()) for m in stream]
    assert parsed == stream
    assert [m.WhichOneof("request") for m in parsed] == ["config", "audio", "audio", "audio"]
    got = parsed[0].config
    assert got.device_result.hypotheses[0].scores.ctc == pytest.approx(-4.25)
    assert got.device_result.hypotheses[0].token_ids == [5, 17, 42, 9]
    assert got.segment.start_offset.ToMilliseconds() == 12_340
    assert got.segment.HasField("start_offset") and not got.segment.HasField("end_offset")
    # A ctc-less model leaves its ctc score unset, distinct from a score of 0.
    assert not hyp.ScorerScores(decoder=-1.0, total=-1.0).HasField("ctc")


def test_enum_zero_values_are_unspecified(v1: dict[str, ModuleType]) -> None:
    enums = list(_enums(v1))
    assert {"AudioEncoding", "OffloadReason", "DecoderReuse"} <= {e.name for e in enums}
    for e in enums:
        prefix = re.sub(r"(?<!^)(?=[A-Z])", "_", e.name).upper()  # AudioEncoding -> AUDIO_ENCODING
        assert e.values_by_number[0].name == f"{prefix}_UNSPECIFIED", e.full_name


def test_times_are_durations(v1: dict[str, ModuleType]) -> None:
    duration = duration_pb2.Duration.DESCRIPTOR.full_name
    expected = {
        "pasu.v1.Timing": {"queue_duration", "encode_duration", "decode_duration", "total_duration"},
        "pasu.v1.AudioSegment": {"start_offset", "end_offset"},
        "pasu.v1.InterimResult": {"audio_end_offset"},
    }
    messages = {d.full_name: d for d in _messages(v1)}
    for message, names in expected.items():
        for name in names:
            field = messages[message].fields_by_name[name]
            assert field.message_type is not None and field.message_type.full_name == duration, f"{message}.{name}"
    # No time smuggled in as a bare number, and every time-like name is a Duration.
    for d in messages.values():
        for f in d.fields:
            assert not f.name.endswith(("_ms", "_sec", "_secs", "_seconds", "_us", "_ns")), f"{d.full_name}.{f.name}"
            if f.name.endswith(("_duration", "_offset", "_time")):
                assert f.type == FieldDescriptor.TYPE_MESSAGE and f.message_type.full_name == duration


def test_decoding_options_are_optional(v1: dict[str, ModuleType]) -> None:
    rec = v1["recognition_pb2"]
    opts = rec.DecodingOptions()
    assert not opts.HasField("beam_size") and not opts.HasField("nbest")  # server defaults
    opts.beam_size = 0
    assert opts.HasField("beam_size")  # an explicit 0 is visible, so it can be rejected


def test_service_shape(v1: dict[str, ModuleType]) -> None:
    service = v1["speech_service_pb2"].DESCRIPTOR.services_by_name["SpeechService"]
    shapes = {
        m.name: (m.client_streaming, m.server_streaming, m.input_type.name, m.output_type.name) for m in service.methods
    }
    assert shapes == {
        "Offload": (True, False, "OffloadRequest", "OffloadResponse"),
        "Recognize": (False, False, "RecognizeRequest", "RecognizeResponse"),
        "StreamingRecognize": (True, True, "StreamingRecognizeRequest", "StreamingRecognizeResponse"),
    }
    fields = {"OffloadRequest": ["config", "audio", "device_update"], "StreamingRecognizeRequest": ["config", "audio"]}
    for name, expected in fields.items():
        oneof = v1["speech_service_pb2"].DESCRIPTOR.message_types_by_name[name].oneofs_by_name["request"]
        assert [f.name for f in oneof.fields] == expected


# --- over the wire -----------------------------------------------------------


def test_stubs_over_grpc(v1: dict[str, ModuleType]) -> None:
    """The generated stub and servicer carry each RPC's stream shape end to end."""
    svc, rec, hyp, grpc_mod = (
        v1["speech_service_pb2"],
        v1["recognition_pb2"],
        v1["hypothesis_pb2"],
        v1["speech_service_pb2_grpc"],
    )

    def result(n_bytes: int) -> object:
        return rec.RecognitionResult(hypotheses=[hyp.Hypothesis(text=f"{n_bytes} bytes")])

    class Echo(grpc_mod.SpeechServiceServicer):
        """Answers with the number of audio bytes received, to check the wiring."""

        def Offload(self, request_iterator, context):  # noqa: N802 (generated name)
            first = next(request_iterator)
            assert first.WhichOneof("request") == "config"
            n = sum(len(r.audio) for r in request_iterator)
            return svc.OffloadResponse(
                request_id=first.config.request_id,
                result=result(n),
                decoder_reuse=svc.DECODER_REUSE_RESCORED,
            )

        def Recognize(self, request, context):  # noqa: N802
            return svc.RecognizeResponse(request_id=request.request_id, result=result(len(request.audio)))

        def StreamingRecognize(self, request_iterator, context):  # noqa: N802
            request_id = next(request_iterator).config.request_id
            n = 0
            for r in request_iterator:
                n += len(r.audio)
                interim = rec.InterimResult(hypotheses=[hyp.Hypothesis(text=f"{n} bytes")])
                interim.audio_end_offset.FromMilliseconds(n // 32)
                yield svc.StreamingRecognizeResponse(request_id=request_id, interim_result=interim)
            yield svc.StreamingRecognizeResponse(request_id=request_id, final_result=result(n))

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    grpc_mod.add_SpeechServiceServicer_to_server(Echo(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = grpc_mod.SpeechServiceStub(channel)
            chunks = [b"\x00" * 3200] * 3

            offload = stub.Offload(
                iter(
                    [svc.OffloadRequest(config=svc.OffloadConfig(request_id="r1"))]
                    + [svc.OffloadRequest(audio=c) for c in chunks]
                ),
                timeout=10,
            )
            assert offload.request_id == "r1"
            assert offload.result.hypotheses[0].text == "9600 bytes"
            assert offload.decoder_reuse == svc.DECODER_REUSE_RESCORED

            unary = stub.Recognize(svc.RecognizeRequest(request_id="r2", audio=b"\x00" * 640), timeout=10)
            assert (unary.request_id, unary.result.hypotheses[0].text) == ("r2", "640 bytes")

            replies = list(
                stub.StreamingRecognize(
                    iter(
                        [svc.StreamingRecognizeRequest(config=svc.StreamingRecognizeConfig(request_id="r3"))]
                        + [svc.StreamingRecognizeRequest(audio=c) for c in chunks]
                    ),
                    timeout=10,
                )
            )
            kinds = [r.WhichOneof("result") for r in replies]
            assert kinds == ["interim_result"] * 3 + ["final_result"]
            assert replies[-1].final_result.hypotheses[0].text == "9600 bytes"
            assert {r.request_id for r in replies} == {"r3"}
    finally:
        server.stop(grace=None)
