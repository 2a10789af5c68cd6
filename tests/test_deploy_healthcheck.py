"""deploy/docker/healthcheck.py (the image's `pasu-healthcheck`) against real workers on 127.0.0.1.

It is what Docker's HEALTHCHECK, Compose and the TLS component's exec probes run,
so it is run here the same way: as a separate process, judged by its exit status.
Also: the series the autoscaling rule reads really appear on a worker's /metrics.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from pasu.audio import float_to_pcm16, pcm16_to_float
from pasu.cloud import client as C
from pasu.cloud.config import WorkerConfig
from pasu.cloud.server import CloudWorker
from pasu.models import load_model

pytestmark = pytest.mark.timeout(120)

SCRIPT = Path(__file__).resolve().parent.parent / "deploy" / "docker" / "healthcheck.py"
TOKEN = "token-for-the-healthcheck-test"
CFG = WorkerConfig(port=0, default_beam_size=1, max_batch_wait_ms=0, grace_s=1.0)


def probe(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PASU_HEALTH_")}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=30, env={**clean, **(env or {})}
    )


@pytest.fixture(scope="module")
def gate():
    return threading.Event()


@pytest.fixture(scope="module")
def worker(tiny_model_dirs, gate):
    """Bearer tokens on, /metrics on; the model loads only when the test opens the gate."""

    def slow_load():
        if not gate.wait(60):
            raise TimeoutError("gate never opened")
        return load_model(tiny_model_dirs["conformer"])

    w = CloudWorker(CFG.with_(bearer_tokens=(TOKEN,), metrics_port=0), slow_load)
    w.start()
    yield w
    w.stop(grace=1, drain=0)


def test_not_serving_while_the_model_loads_then_serving(worker, gate):
    addr = f"127.0.0.1:{worker.port}"
    r = probe("--addr", addr)
    assert r.returncode == 1 and "NOT_SERVING" in r.stderr, r
    gate.set()
    worker.wait_ready(timeout=60)
    r = probe("--addr", addr)  # no bearer token: health checks are exempt
    assert r.returncode == 0 and "SERVING" in r.stdout, r
    assert probe("--addr", addr, "--service", "").returncode == 0
    assert probe("--quiet", env={"PASU_HEALTH_ADDR": addr}).stdout == ""  # flags' environment defaults
    assert probe(env={"PASU_HEALTH_ADDR": addr}).returncode == 0


def test_unknown_service_and_nothing_listening_fail(worker, gate):
    gate.set()
    worker.wait_ready(timeout=60)
    r = probe("--addr", f"127.0.0.1:{worker.port}", "--service", "no.such.Service")
    assert r.returncode == 1 and "NOT_FOUND" in r.stderr
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    t = time.monotonic()
    r = probe("--addr", f"127.0.0.1:{free}", "--timeout", "2")
    assert r.returncode == 1 and ("UNAVAILABLE" in r.stderr or "DEADLINE_EXCEEDED" in r.stderr), r
    assert time.monotonic() - t < 15


def test_queue_time_series_for_the_autoscaler_are_on_metrics(worker, gate, audio):
    gate.set()
    worker.wait_ready(timeout=60)
    clip = pcm16_to_float(float_to_pcm16(audio[sorted(audio)[0]][:4000]))
    with C.channel(f"127.0.0.1:{worker.port}") as ch:
        r = C.stub(ch).Recognize(
            C.recognize_request("hpa-1", clip), timeout=30, metadata=(("authorization", f"Bearer {TOKEN}"),)
        )
    assert r.result.hypotheses
    with urllib.request.urlopen(f"http://127.0.0.1:{worker.metrics_port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    # deploy/monitoring/prometheus-adapter-values.yaml: rate(_sum) / rate(_count) of stage="queue"
    for series in ('pasu_cloud_latency_seconds_sum{stage="queue"}', 'pasu_cloud_latency_seconds_count{stage="queue"}'):
        line = next(ln for ln in text.splitlines() if ln.startswith(series))
        assert float(line.split()[-1]) >= (1.0 if "count" in series else 0.0)
    assert 'pasu_cloud_requests_total{code="OK",rpc="Recognize"} 1.0' in text


def test_draining_worker_is_not_serving(tiny_models):
    w = CloudWorker(CFG, tiny_models["conformer"])
    w.start(wait=True, timeout=60)
    addr = f"127.0.0.1:{w.port}"
    try:
        assert probe("--addr", addr).returncode == 0
        stopper = threading.Thread(target=w.stop, kwargs={"grace": 1.0, "drain": 3.0})
        stopper.start()
        r = probe("--addr", addr)  # inside the drain: still accepting, but NOT_SERVING
        assert r.returncode == 1 and "NOT_SERVING" in r.stderr, r
        stopper.join(timeout=15)
    finally:
        w.stop(grace=0, drain=0)


# -- TLS (what the TLS component's exec probes do) -----------------------------------
def _openssl(*args: str, cwd) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not found")
    d = tmp_path_factory.mktemp("certs")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl(
        "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "1", "-subj", "/CN=pasu test CA", cwd=d
    )
    (d / "server.ext").write_text(
        "subjectAltName=DNS:pasu-cloud-headless.pasu.svc.cluster.local\nextendedKeyUsage=serverAuth,clientAuth\n"
    )
    _openssl("req", *ec, "-keyout", "tls.key", "-out", "server.csr", "-subj", "/CN=pasu-cloud", cwd=d)
    _openssl(
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "tls.crt",
        "-days",
        "1",
        "-extfile",
        "server.ext",
        cwd=d,
    )
    return d


@pytest.mark.parametrize("mutual", [False, True], ids=["tls", "mtls"])
def test_tls_probe_as_the_tls_component_runs_it(tiny_models, certs, mutual):
    cfg = CFG.with_(
        tls_cert=certs / "tls.crt", tls_key=certs / "tls.key", tls_client_ca=(certs / "ca.crt") if mutual else None
    )
    w = CloudWorker(cfg, tiny_models["conformer"])
    w.start(wait=True, timeout=60)
    try:
        # the environment deploy/k8s/components/tls/deployment-patch.yaml sets
        env = {
            "PASU_HEALTH_ADDR": f"127.0.0.1:{w.port}",
            "PASU_HEALTH_TLS_CA": str(certs / "ca.crt"),
            "PASU_HEALTH_TLS_SERVER_NAME": "pasu-cloud-headless.pasu.svc.cluster.local",
        }
        if mutual:  # the server's own key pair doubles as the probe's client certificate
            env |= {"PASU_HEALTH_TLS_CERT": str(certs / "tls.crt"), "PASU_HEALTH_TLS_KEY": str(certs / "tls.key")}
        r = probe("--service", "pasu.v1.SpeechService", env=env)
        assert r.returncode == 0, r
        assert probe("--addr", env["PASU_HEALTH_ADDR"], "--timeout", "2").returncode == 1  # plaintext to TLS
        if mutual:
            no_cert = {k: v for k, v in env.items() if "TLS_CERT" not in k and "TLS_KEY" not in k}
            assert probe("--timeout", "2", env=no_cert).returncode == 1
    finally:
        w.stop(grace=0, drain=0)
