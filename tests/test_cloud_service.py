"""The cloud worker end to end on 127.0.0.1 with a tiny model: RPCs, batching, retries, limits, lifecycle."""

from __future__ import annotations

import threading
import time
import urllib.request

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pasu.audio import encode_flac, float_to_pcm16, pcm16_to_float
from pasu.cloud import client as C
from pasu.cloud.config import WorkerConfig
from pasu.cloud.server import CloudWorker
from pasu.cloud.service import SERVICE_NAME
from pasu.decoding.options import DecodingOptions
from pasu.decoding.recognizer import Recognizer
from pasu.slu import join_intent
from pasu.v1 import audio_pb2, speech_service_pb2
from pasu.wire import device_result

pytestmark = pytest.mark.timeout(120)

CFG = WorkerConfig(
    port=0,
    metrics_port=0,
    default_beam_size=2,
    max_beam_size=4,
    max_batch_size=8,
    max_batch_wait_ms=20,
    max_queue=8,
    max_message_bytes=64 * 1024,
    max_audio_seconds=5.0,
    interim_interval_s=0.25,
    reuse="rescore",
    reuse_margin=1e9,
    grace_s=2.0,
)


def wait_for(cond, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


@pytest.fixture(scope="module")
def model(tiny_models):
    return tiny_models["conformer"]


@pytest.fixture(scope="module")
def worker(model):
    w = CloudWorker(CFG, model)
    w.start(wait=True, timeout=60)
    yield w
    w.stop(grace=1)


@pytest.fixture(scope="module")
def stub(worker):
    ch = C.channel(f"127.0.0.1:{worker.port}")
    yield C.stub(ch)
    ch.close()


@pytest.fixture(scope="module")
def clips(audio):
    """Short clips, quantized as LINEAR16 carries them, so local and remote decodes see the same samples."""
    return [pcm16_to_float(float_to_pcm16(audio[k][:8000])) for k in sorted(audio)[:6]]


def local_nbest(model, clip, beam=2, nbest=2):
    return Recognizer(model, DecodingOptions(beam_size=beam, nbest=nbest)).recognize([clip])[0]


def assert_same(result, nbest):
    assert [h.text for h in result.hypotheses] == [e.text for e in nbest]
    assert [list(h.token_ids) for h in result.hypotheses] == [e.token_ids for e in nbest]
    for h, e in zip(result.hypotheses, nbest, strict=True):
        assert h.scores.total == pytest.approx(e.score, abs=1e-3)
        assert h.scores.decoder == pytest.approx(e.scores["decoder"], abs=1e-3)
        assert h.scores.ctc == pytest.approx(e.scores["ctc"], abs=1e-3)


def health_status(port: int, service: str = "") -> int:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        return health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


# -- the three RPCs --------------------------------------------------------
def test_recognize_matches_local_decoder(stub, model, clips):
    r = stub.Recognize(C.recognize_request("rec-1", clips[0], nbest=2), timeout=30)
    assert r.request_id == "rec-1"
    assert_same(r.result, local_nbest(model, clips[0]))
    assert r.result.model.name == model.name and len(r.result.model.token_list_id) == 64
    assert (r.result.decoding_options.beam_size, r.result.decoding_options.nbest) == (2, 2)
    t = r.result.timing
    assert t.total_duration.ToNanoseconds() >= t.decode_duration.ToNanoseconds() > 0
    assert t.encode_duration.ToNanoseconds() > 0
    assert sum(h.confidence for h in r.result.hypotheses) == pytest.approx(1.0, abs=1e-4)


def test_beam_above_the_limit_is_clamped(stub, clips):
    r = stub.Recognize(C.recognize_request("rec-clamp", clips[1], beam_size=99, nbest=1), timeout=30)
    assert r.result.decoding_options.beam_size == CFG.max_beam_size


def test_offload_accepts_the_device_hypothesis(stub, model, clips):
    device = local_nbest(model, clips[1])
    sent = device_result(device, model.name, model.version, model.token_list, 0.5)
    r = stub.Offload(C.offload_requests("off-1", clips[1], sent, encoding=C.FLAC, nbest=2), timeout=30)
    assert r.request_id == "off-1"
    assert r.decoder_reuse in (
        speech_service_pb2.DECODER_REUSE_ACCEPTED_DEVICE_HYPOTHESIS,
        speech_service_pb2.DECODER_REUSE_RESCORED,
    )
    top = r.result.hypotheses[0]
    assert join_intent(top.intent, top.text) in [e.text for e in device]


def test_offload_retokenizes_when_token_lists_differ(stub, model, clips):
    device = local_nbest(model, clips[2])
    # no token_list_id: the cloud must use the text (intent label and transcript joined again)
    result = device_result(device, model.name, model.version, None, 0.5)
    r = stub.Offload(C.offload_requests("off-2", clips[2], result), timeout=30)
    assert r.decoder_reuse != speech_service_pb2.DECODER_REUSE_FULL_DECODE
    # a hypothesis the cloud's tokenizer cannot spell (e.g. one cut at the length limit
    # with "<sos/eos>" in its text) is dropped; the rest are re-ranked
    top = r.result.hypotheses[0]
    assert join_intent(top.intent, top.text) in [e.text for e in device if "<" not in e.text]


@pytest.mark.parametrize("how", ["no_hypotheses", "incomplete"])
def test_offload_full_decode(stub, model, clips, how):
    device = local_nbest(model, clips[3])
    result = device_result(
        [] if how == "no_hypotheses" else device,
        model.name,
        model.version,
        model.token_list,
        0.5,
        complete=how != "incomplete",
    )
    r = stub.Offload(C.offload_requests(f"off-{how}", clips[3], result), timeout=30)
    assert r.decoder_reuse == speech_service_pb2.DECODER_REUSE_FULL_DECODE
    assert_same(r.result, device[:1])


def test_streaming_interim_then_final(stub, model, audio):
    clip = pcm16_to_float(float_to_pcm16(audio[sorted(audio)[4]][:12000]))
    msgs = list(stub.StreamingRecognize(C.streaming_requests("str-1", clip, chunk_bytes=4000), timeout=60))
    kinds = [m.WhichOneof("result") for m in msgs]
    assert kinds[-1] == "final_result" and kinds.count("final_result") == 1
    assert kinds.count("interim_result") >= 1
    assert all(m.request_id == "str-1" for m in msgs)
    assert msgs[0].interim_result.audio_end_offset.ToNanoseconds() > 0
    assert_same(msgs[-1].final_result, local_nbest(model, clip, nbest=1))


# -- batching, retries, load -------------------------------------------------
def test_concurrent_requests_share_one_batch_and_equal_alone(worker, stub, model, clips):
    n = 4
    batches = worker.batcher.batches
    with worker.batcher.held():
        futures = [
            stub.Recognize.future(C.recognize_request(f"batch-{i}", clips[i], nbest=2), timeout=60) for i in range(n)
        ]
        wait_for(lambda: worker.batcher.depth == n)
    results = [f.result() for f in futures]
    assert worker.batcher.batches == batches + 1
    for i, r in enumerate(results):
        assert_same(r.result, local_nbest(model, clips[i]))


def test_same_request_id_is_decoded_once(worker, stub, clips):
    searched = worker.batcher.searched
    first = stub.Recognize(C.recognize_request("idem-1", clips[0]), timeout=30)
    again = stub.Recognize(C.recognize_request("idem-1", clips[0]), timeout=30)
    assert again.result.hypotheses == first.result.hypotheses
    assert worker.batcher.searched == searched + 1
    # a retry that arrives while the first attempt is still queued joins it
    with worker.batcher.held():
        a = stub.Recognize.future(C.recognize_request("idem-2", clips[1]), timeout=30)
        wait_for(lambda: worker.batcher.depth == 1)
        b = stub.Recognize.future(C.recognize_request("idem-2", clips[1]), timeout=30)
        wait_for(lambda: worker.metrics.value("pasu_cloud_idempotent_hits_total", {"kind": "in_flight"}) >= 1)
        assert worker.batcher.depth == 1
    assert a.result().result.hypotheses == b.result().result.hypotheses
    assert worker.batcher.searched == searched + 2
    assert worker.metrics.value("pasu_cloud_idempotent_hits_total", {"kind": "done"}) >= 1


def test_queue_full_is_resource_exhausted(model, clips):
    w = CloudWorker(CFG.with_(max_queue=1, metrics_port=None), model)
    w.start(wait=True, timeout=30)
    try:
        s = C.stub(C.channel(f"127.0.0.1:{w.port}"))
        with w.batcher.held():
            first = s.Recognize.future(C.recognize_request("q-1", clips[0]), timeout=30)
            wait_for(lambda: w.batcher.depth == 1)
            t = time.monotonic()
            with pytest.raises(grpc.RpcError) as e:
                s.Recognize(C.recognize_request("q-2", clips[1]), timeout=30)
            assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "queue is full" in e.value.details()
            assert time.monotonic() - t < 2.0
        assert first.result().result.hypotheses
        # the refused request was forgotten: its retry decodes
        assert s.Recognize(C.recognize_request("q-2", clips[1]), timeout=30).result.hypotheses
    finally:
        w.stop(grace=1)


@pytest.mark.parametrize("how", ["deadline", "cancel"])
def test_expired_or_cancelled_calls_are_not_decoded(worker, stub, clips, how):
    m = worker.metrics
    dropped = sum(m.value("pasu_cloud_dropped_total", {"reason": r}) for r in ("deadline", "cancelled"))
    searched = worker.batcher.searched
    with worker.batcher.held():
        f = stub.Recognize.future(
            C.recognize_request(f"gone-{how}", clips[2]), timeout=0.5 if how == "deadline" else 30
        )
        wait_for(lambda: worker.batcher.depth == 1)
        if how == "cancel":
            f.cancel()
        else:
            with pytest.raises(grpc.RpcError) as e:
                f.result()
            assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        # the handler notices within its poll interval and lets go of the job
        wait_for(lambda: worker.batcher._queue[0].drop_reason() is not None)
    wait_for(
        lambda: (
            sum(m.value("pasu_cloud_dropped_total", {"reason": r}) for r in ("deadline", "cancelled")) == dropped + 1
        )
    )
    assert worker.batcher.searched == searched


# -- limits ------------------------------------------------------------------
def _rec(**kw):
    base = dict(
        request_id="lim",
        audio_format=audio_pb2.AudioFormat(encoding=C.LINEAR16, sample_rate_hz=16000),
        audio=b"\x00\x01" * 800,
    )
    base.update(kw)
    return speech_service_pb2.RecognizeRequest(**base)


def _flac_fmt(rate=16000):
    return audio_pb2.AudioFormat(encoding=C.FLAC, sample_rate_hz=rate)


RECOGNIZE_LIMITS = {
    "message size": (_rec(audio=b"\x00" * 70000), "max_message_bytes=65536"),
    "empty request_id": (_rec(request_id=""), "request_id is empty"),
    "encoding unspecified": (_rec(audio_format=audio_pb2.AudioFormat(sample_rate_hz=16000)), "unspecified"),
    "encoding unknown": (_rec(audio_format=audio_pb2.AudioFormat(encoding=7, sample_rate_hz=16000)), "unknown"),
    "rate not allowed": (
        _rec(audio_format=audio_pb2.AudioFormat(encoding=C.LINEAR16, sample_rate_hz=12345)),
        "12345 is not allowed",
    ),
    "rate zero": (_rec(audio_format=audio_pb2.AudioFormat(encoding=C.LINEAR16, sample_rate_hz=0)), "must be > 0"),
    "empty audio": (_rec(audio=b""), "audio is empty"),
    "odd LINEAR16": (_rec(audio=b"\x00" * 1001), "whole 16-bit samples"),
    "not FLAC": (_rec(audio_format=_flac_fmt(), audio=b"RIFF1234"), "'fLaC' marker"),
    "corrupt FLAC": (_rec(audio_format=_flac_fmt(), audio=b"fLaC" + bytes(range(256)) * 4), "corrupt FLAC"),
    "FLAC rate mismatch": (
        _rec(audio_format=_flac_fmt(8000), audio=encode_flac(np.zeros(1600, np.float32))),
        "FLAC header says 16000 Hz",
    ),
    "too long (FLAC)": (
        _rec(audio_format=_flac_fmt(), audio=encode_flac(np.zeros(16000 * 6, np.float32))),
        "longer than max_audio_seconds=5",
    ),
    "beam_size 0": (_rec(decoding_options=C.decoding_options(beam_size=0)), "beam_size must be >= 1, got 0"),
    "nbest 0": (_rec(decoding_options=C.decoding_options(nbest=0)), "nbest must be >= 1, got 0"),
}


@pytest.mark.parametrize("case", list(RECOGNIZE_LIMITS))
def test_recognize_limits(stub, clips, case):
    request, message = RECOGNIZE_LIMITS[case]
    with pytest.raises(grpc.RpcError) as e:
        stub.Recognize(request, timeout=30)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in e.value.details()


def _offload_stream(case: str, clips):
    cfg = speech_service_pb2.OffloadConfig(
        request_id="lim-off", audio_format=audio_pb2.AudioFormat(encoding=C.LINEAR16, sample_rate_hz=16000)
    )
    audio = speech_service_pb2.OffloadRequest(audio=b"\x00\x00" * 400)
    if case == "audio before config":
        return [audio, speech_service_pb2.OffloadRequest(config=cfg)]
    if case == "second config":
        return [speech_service_pb2.OffloadRequest(config=cfg), audio, speech_service_pb2.OffloadRequest(config=cfg)]
    if case == "empty stream":
        return []
    if case == "too long (streamed)":
        chunk = speech_service_pb2.OffloadRequest(audio=b"\x00\x00" * 16000)  # 1 s each
        return [speech_service_pb2.OffloadRequest(config=cfg)] + [chunk] * 6
    if case == "odd chunk":
        return [speech_service_pb2.OffloadRequest(config=cfg), speech_service_pb2.OffloadRequest(audio=b"\x00")]
    if case == "no audio":
        return [speech_service_pb2.OffloadRequest(config=cfg)]
    raise ValueError(case)


STREAM_LIMITS = {
    "audio before config": "audio before config",
    "second config": "second config in the Offload stream (message 3)",
    "empty stream": "stream is empty",
    "too long (streamed)": "longer than max_audio_seconds=5",
    "odd chunk": "whole 16-bit samples",
    "no audio": "audio is empty",
}


@pytest.mark.parametrize("case", list(STREAM_LIMITS))
def test_offload_stream_limits(stub, clips, case):
    with pytest.raises(grpc.RpcError) as e:
        stub.Offload(iter(_offload_stream(case, clips)), timeout=30)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert STREAM_LIMITS[case] in e.value.details()


def test_streaming_recognize_rejects_audio_before_config(stub):
    bad = [speech_service_pb2.StreamingRecognizeRequest(audio=b"\x00\x00")]
    with pytest.raises(grpc.RpcError) as e:
        list(stub.StreamingRecognize(iter(bad), timeout=30))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "audio before config" in e.value.details()


def test_still_serving_after_invalid_requests(worker, stub, clips):
    assert stub.Recognize(C.recognize_request("after-limits", clips[5]), timeout=30).result.hypotheses
    assert worker.metrics.value("pasu_cloud_requests_total", {"rpc": "Recognize", "code": "INVALID_ARGUMENT"}) >= 1
    assert health_status(worker.port) == health_pb2.HealthCheckResponse.SERVING


# -- health, reflection, metrics, lifecycle ------------------------------------
def test_health_and_reflection(worker):
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    for name in ("", SERVICE_NAME):
        assert health_status(worker.port, name) == health_pb2.HealthCheckResponse.SERVING
    with grpc.insecure_channel(f"127.0.0.1:{worker.port}") as ch:
        services = set(ProtoReflectionDescriptorDatabase(ch).get_services())
    assert {"pasu.v1.SpeechService", "grpc.health.v1.Health"} <= services


def test_metrics_endpoint(worker, stub, clips):
    stub.Recognize(C.recognize_request("metrics-1", clips[0]), timeout=30)
    body = urllib.request.urlopen(f"http://127.0.0.1:{worker.metrics_port}/metrics", timeout=5).read().decode()
    for needle in (
        'pasu_cloud_requests_total{code="OK",rpc="Recognize"}',
        'pasu_cloud_requests_total{code="INVALID_ARGUMENT"',
        'pasu_cloud_latency_seconds_bucket{le="0.005",stage="queue"}',
        'stage="encode"',
        'stage="decode"',
        'stage="total"',
        "pasu_cloud_batch_size_bucket",
        "pasu_cloud_queue_depth",
        'pasu_cloud_decoder_reuse_total{outcome="accepted"}',
    ):
        assert needle in body, needle


def test_not_serving_while_the_model_loads(model, clips):
    release = threading.Event()

    def slow_load():
        release.wait(30)
        return model

    w = CloudWorker(CFG.with_(metrics_port=None), slow_load)
    w.start()
    try:
        for name in ("", SERVICE_NAME):
            assert health_status(w.port, name) == health_pb2.HealthCheckResponse.NOT_SERVING
        s = C.stub(C.channel(f"127.0.0.1:{w.port}"))
        with pytest.raises(grpc.RpcError) as e:
            s.Recognize(C.recognize_request("early", clips[0]), timeout=10)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE and "loading" in e.value.details()
        release.set()
        w.wait_ready(30)
        assert health_status(w.port) == health_pb2.HealthCheckResponse.SERVING
        assert s.Recognize(C.recognize_request("later", clips[0]), timeout=30).result.hypotheses
    finally:
        release.set()
        w.stop(grace=1)


def test_graceful_drain_finishes_in_flight_calls(model, clips):
    w = CloudWorker(CFG.with_(metrics_port=None, drain_s=1.0, grace_s=10.0), model)
    w.start(wait=True, timeout=30)
    s = C.stub(C.channel(f"127.0.0.1:{w.port}"))
    with w.batcher.held():
        inflight = s.Recognize.future(C.recognize_request("drain-1", clips[0]), timeout=30)
        wait_for(lambda: w.batcher.depth == 1)
        stopper = threading.Thread(target=w.stop)
        stopper.start()
        time.sleep(0.3)
        for name in ("", SERVICE_NAME):
            assert health_status(w.port, name) == health_pb2.HealthCheckResponse.NOT_SERVING
    assert inflight.result().result.hypotheses  # finished during the grace period
    stopper.join(15)
    assert not stopper.is_alive()
    with pytest.raises(grpc.RpcError) as e:
        s.Recognize(C.recognize_request("drain-2", clips[0]), timeout=5)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE


def test_stop_while_the_model_loads_waits_for_the_loader(model):
    """Stopping mid-load lets the load finish (a process exiting while it runs in torch's
    C++ code aborts instead of exiting 0) and leaves no batcher running."""
    started = threading.Event()

    def slow_load():
        started.set()
        time.sleep(1.0)
        return model

    w = CloudWorker(CFG.with_(metrics_port=None), slow_load)
    w.start()
    assert started.wait(10)
    w.stop(grace=0)
    assert not w._loader.is_alive()
    assert w.batcher is None and w.service.state is None  # the late model never went live
