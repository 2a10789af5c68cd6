"""Client-side round_robin over several cloud workers: what the headless Service gives devices.

In Kubernetes a device dials ``dns:///pasu-cloud-headless.NAMESPACE.svc.cluster.local:50051``
with the ``round_robin`` policy: the DNS resolver returns one address per ready pod and
gRPC spreads *requests* (not connections) over them. Here the same policy gets the
address list from an ``ipv4:`` target instead of DNS — three real workers on
127.0.0.1 — and we check the spread, a graceful stop with a drain (the worker's
health turns NOT_SERVING, the client's health checking takes it out of the rotation
while it still serves), and that every request succeeds throughout.
"""

from __future__ import annotations

import json
import threading
import time

import grpc
import pytest

from pasu.audio import float_to_pcm16, pcm16_to_float
from pasu.cloud import client as C
from pasu.cloud.config import WorkerConfig
from pasu.cloud.server import CloudWorker
from pasu.cloud.service import SERVICE_NAME

pytestmark = pytest.mark.timeout(120)

CFG = WorkerConfig(port=0, default_beam_size=1, max_beam_size=2, max_batch_size=4, max_batch_wait_ms=0, grace_s=5.0)
OK = {"rpc": "Recognize", "code": "OK"}

# What deploy/README.md tells device clients to use: round_robin, plus client-side
# health checking so a draining (NOT_SERVING) worker leaves the rotation at once.
SERVICE_CONFIG = {
    "loadBalancingConfig": [{"round_robin": {}}],
    "healthCheckConfig": {"serviceName": SERVICE_NAME},
}


def served(worker: CloudWorker) -> int:
    return int(worker.metrics.value("pasu_cloud_requests_total", OK))


def wait_for(cond, timeout: float) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


@pytest.fixture(scope="module")
def clip(audio):
    return pcm16_to_float(float_to_pcm16(audio[sorted(audio)[0]][:6000]))


@pytest.fixture()
def workers(tiny_model_dirs):
    ws = [CloudWorker(CFG, tiny_model_dirs["conformer"]) for _ in range(3)]
    try:
        for w in ws:
            w.start()
        for w in ws:
            w.wait_ready(timeout=60)
        yield ws
    finally:
        for w in ws:
            w.stop(grace=1, drain=0)


def recognize(stub, clip, request_id: str):
    return stub.Recognize(C.recognize_request(request_id, clip), timeout=30)


def test_round_robin_spreads_and_survives_a_graceful_stop(workers, clip):
    target = "ipv4:" + ",".join(f"127.0.0.1:{w.port}" for w in workers)
    options = [("grpc.lb_policy_name", "round_robin"), ("grpc.service_config", json.dumps(SERVICE_CONFIG))]
    with grpc.insecure_channel(target, options=options) as channel:
        grpc.channel_ready_future(channel).result(timeout=10)  # READY as soon as one worker is
        time.sleep(0.5)  # let the other two connect and pass their first health check (loopback: ms)
        stub = C.stub(channel)

        # 1. twelve requests, one at a time, over ONE channel: every worker gets its share
        for i in range(12):
            assert recognize(stub, clip, f"lb-{i}").result.hypotheses
        counts = [served(w) for w in workers]
        assert sum(counts) == 12
        print(f"requests per worker: {counts}")
        assert min(counts) >= 3, f"requests per worker {counts}: round_robin did not spread them"

        # 2. stop worker 0 as Kubernetes would (SIGTERM → NOT_SERVING, drain, grace) while
        #    requests keep coming; the client's health check removes it from the rotation
        stopping = workers[0]
        before = [served(w) for w in workers]
        stopper = threading.Thread(target=stopping.stop, kwargs={"grace": 2.0, "drain": 1.0})
        stopper.start()
        wait_for(lambda: stopping._stopped.is_set(), timeout=5)
        time.sleep(0.3)  # the health Watch stream delivers NOT_SERVING to the client
        during = [recognize(stub, clip, f"drain-{i}") for i in range(3)]  # inside the 1 s drain
        stopper.join(timeout=15)
        assert not stopper.is_alive()

        # 3. the stopped worker is gone for good: six more requests, all answered by the other two
        after = [recognize(stub, clip, f"after-{i}") for i in range(6)]
        assert all(r.result.hypotheses for r in during + after)
        final = [served(w) for w in workers]
        print(f"after the stop: {before} → {final}")
        assert final[0] == before[0], "a draining (NOT_SERVING) worker still got requests"
        assert final[1] - before[1] + final[2] - before[2] == 9
        assert final[1] > before[1] and final[2] > before[2], f"{before} → {final}: not spread over the two left"
