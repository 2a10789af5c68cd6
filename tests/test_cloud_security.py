"""Bearer tokens, TLS and mutual TLS, end to end on 127.0.0.1 (certificates made here by openssl)."""

from __future__ import annotations

import logging

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pasu.audio import float_to_pcm16, pcm16_to_float
from pasu.cloud import client as C
from pasu.cloud.config import WorkerConfig
from pasu.cloud.server import CloudWorker

pytestmark = pytest.mark.timeout(120)

CFG = WorkerConfig(port=0, default_beam_size=1, max_batch_wait_ms=0, grace_s=1.0)
TOKEN = "s3cret-token-for-tests"


@pytest.fixture(scope="module")
def clip(audio):
    return pcm16_to_float(float_to_pcm16(audio[sorted(audio)[0]][:4000]))


@pytest.fixture(scope="module")
def model(tiny_models):
    return tiny_models["conformer"]


def _serve(config, model):
    w = CloudWorker(config, model)
    w.start(wait=True, timeout=30)
    return w


# -- bearer tokens --------------------------------------------------------------
@pytest.fixture(scope="module")
def auth_worker(model):
    w = _serve(CFG.with_(bearer_tokens=(TOKEN, "another-token")), model)
    yield w
    w.stop(grace=1)


@pytest.mark.parametrize(
    "metadata,why",
    [
        ((), "missing"),
        ((("authorization", "Bearer wrong"),), "invalid bearer token"),
        ((("authorization", TOKEN),), "must be 'Bearer <token>'"),
    ],
)
def test_missing_or_wrong_token_is_unauthenticated(auth_worker, clip, metadata, why, caplog):
    caplog.set_level(logging.INFO)
    with grpc.insecure_channel(f"127.0.0.1:{auth_worker.port}") as ch:
        with pytest.raises(grpc.RpcError) as e:
            C.stub(ch).Recognize(C.recognize_request("auth-bad", clip), metadata=metadata, timeout=10)
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert why in e.value.details()
    assert TOKEN not in caplog.text and "wrong" not in caplog.text


def test_right_token_is_served_and_health_needs_none(auth_worker, clip, caplog):
    caplog.set_level(logging.DEBUG)
    with grpc.insecure_channel(f"127.0.0.1:{auth_worker.port}") as ch:
        r = C.stub(ch).Recognize(
            C.recognize_request("auth-ok", clip), metadata=(("authorization", f"Bearer {TOKEN}"),), timeout=30
        )
        assert r.result.hypotheses
        status = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5).status
    assert status == health_pb2.HealthCheckResponse.SERVING
    assert TOKEN not in caplog.text
    assert TOKEN not in repr(auth_worker.config)


# -- TLS / mTLS -----------------------------------------------------------------
def _recognize(port, clip, root=None, client=None):
    ch = C.channel(f"127.0.0.1:{port}", root_cert=root, client_cert=client)
    try:
        return C.stub(ch).Recognize(C.recognize_request("tls", clip), timeout=15)
    finally:
        ch.close()


def test_tls(model, certs, clip):
    w = _serve(CFG.with_(tls_cert=certs / "server.pem", tls_key=certs / "server.key"), model)
    try:
        assert _recognize(w.port, clip, root=(certs / "ca.pem").read_bytes()).result.hypotheses
        with pytest.raises(grpc.RpcError) as e:  # plaintext to a TLS port
            _recognize(w.port, clip)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        w.stop(grace=1)


def test_mutual_tls(model, certs, clip):
    w = _serve(
        CFG.with_(tls_cert=certs / "server.pem", tls_key=certs / "server.key", tls_client_ca=certs / "ca.pem"), model
    )
    root = (certs / "ca.pem").read_bytes()
    try:
        client = ((certs / "client.key").read_bytes(), (certs / "client.pem").read_bytes())
        assert _recognize(w.port, clip, root=root, client=client).result.hypotheses
        with pytest.raises(grpc.RpcError) as e:  # no client certificate
            _recognize(w.port, clip, root=root)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        w.stop(grace=1)
