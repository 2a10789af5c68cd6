"""The device's Offload client against a real cloud worker with mutual TLS and a bearer
token, through a ``dns:///`` target with round-robin load balancing."""

from __future__ import annotations

import numpy as np
import pytest

from pasu.cloud.config import WorkerConfig
from pasu.cloud.server import CloudWorker
from pasu.decoding.options import DecodingOptions
from pasu.device.agent import DeviceAgent
from pasu.device.config import AgentConfig, CloudClientConfig, PolicyConfig

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def secure_worker(tiny_models, certs):
    cfg = WorkerConfig(
        port=0,
        default_beam_size=2,
        max_beam_size=4,
        max_batch_wait_ms=5,
        grace_s=1.0,
        tls_cert=certs / "server.pem",
        tls_key=certs / "server.key",
        tls_client_ca=certs / "ca.pem",
        bearer_tokens=("s3cret-token",),
    )
    w = CloudWorker(cfg, tiny_models["conformer"])
    w.start(wait=True, timeout=60)
    yield w
    w.stop(grace=0.5)


def _config(port, certs, **cloud) -> AgentConfig:
    cfg = AgentConfig(
        decoding=DecodingOptions(beam_size=2, maxlenratio=0.3),
        policy=PolicyConfig(kind="always"),
        cloud=CloudClientConfig(
            target=f"dns:///127.0.0.1:{port}",
            root_cert=certs / "ca.pem",
            client_cert=certs / "client.pem",
            client_key=certs / "client.key",
            deadline_s=5.0,
            total_deadline_s=8.0,
            **cloud,
        ),
    )
    return cfg


def test_mtls_and_bearer_token(tiny_models, audio, secure_worker, certs):
    model = tiny_models["conformer"]
    x = np.concatenate([np.zeros(8000, np.float32), audio["cmd04"], np.zeros(8000, np.float32)])
    chunks = [x[i : i + 1600] for i in range(0, x.size, 1600)]
    with DeviceAgent(_config(secure_worker.port, certs, bearer_token="s3cret-token"), model) as agent:
        ok = list(agent.process(chunks, "s"))
    assert len(ok) == 1 and ok[0]["source"] == "cloud" and not ok[0]["fallback"]
    with DeviceAgent(_config(secure_worker.port, certs, bearer_token="wrong"), model) as agent:
        bad = list(agent.process(chunks, "s"))
    assert len(bad) == 1 and bad[0]["fallback"] and "UNAUTHENTICATED" in bad[0]["error"]
    assert bad[0]["cloud"]["attempts"] == 1  # not a transient error: no retry
