"""Decoder reuse ``seed``: the cloud continues the device's latest hypothesis (real worker on
127.0.0.1, tiny model), and the device agent sends it its later pilots while audio streams."""

from __future__ import annotations

import numpy as np
import pytest

from pasu.audio import float_to_pcm16, pcm16_to_float
from pasu.cloud import client as C
from pasu.cloud import reuse
from pasu.cloud.config import WorkerConfig
from pasu.cloud.server import CloudWorker
from pasu.decoding.options import DecodingOptions
from pasu.decoding.recognizer import Recognizer
from pasu.device.agent import DeviceAgent
from pasu.device.confidence import ConfidenceEstimator
from pasu.device.config import AgentConfig, CloudClientConfig, PolicyConfig
from pasu.v1 import speech_service_pb2
from pasu.wire import device_result

pytestmark = pytest.mark.timeout(180)

OPTS = DecodingOptions(beam_size=2, nbest=1)
SEEDED = speech_service_pb2.DECODER_REUSE_SEEDED_BEAM
FULL = speech_service_pb2.DECODER_REUSE_FULL_DECODE


@pytest.fixture(scope="module")
def model(tiny_models):
    return tiny_models["conformer"]


@pytest.fixture(scope="module")
def worker(model):
    w = CloudWorker(WorkerConfig(port=0, default_beam_size=2, max_batch_wait_ms=5, reuse="seed", grace_s=1.0), model)
    w.start(wait=True, timeout=60)
    yield w
    w.stop(grace=0.5)


@pytest.fixture(scope="module")
def stub(worker):
    ch = C.channel(f"127.0.0.1:{worker.port}")
    yield C.stub(ch)
    ch.close()


@pytest.fixture(scope="module")
def clip(audio):
    return pcm16_to_float(float_to_pcm16(audio[sorted(audio)[0]]))


def counter(worker, name: str, **labels) -> float:
    value = worker.metrics.registry.get_sample_value(name, labels or None)
    return value or 0.0


def test_seed_keeps_what_the_cloud_confirms_and_cuts_the_rest(model, clip):
    rec = Recognizer(model, OPTS)
    enc = rec.encode([clip])
    best = rec.decode(enc)[0][0].token_ids
    assert len(best) >= 3
    whole = reuse.seed(rec, enc, [best])
    assert whole is not None and len(whole.prefix) >= 1 and whole.prefix == best[: len(whole.prefix)]
    # a token the cloud would never pick first at position 0 is not confirmed: nothing to seed
    first = rec.decode(enc, prefixes=[[]])[0][0].token_ids[0]
    wrong = next(t for t in range(2, len(model.token_list) - 1) if t != first)
    cut = reuse.seed(rec, enc, [[best[0], wrong, wrong, wrong]])
    assert cut is None or len(cut.prefix) <= 2


def test_seed_tolerance_keeps_the_device_tokens_the_cloud_nearly_picks(model, clip):
    """``reuse_tolerance``: a device hypothesis the cloud cuts strictly is kept further (all of
    it at a tolerance no score reaches), and the config refuses a negative tolerance."""
    rec = Recognizer(model, OPTS)
    enc = rec.encode([clip])
    best = rec.decode(enc)[0][0].token_ids
    for wrong in range(2, len(model.token_list) - 1):  # a third token the cloud does not confirm
        device = [*best[:2], wrong, *best[3:]]
        strict = reuse.seed(rec, enc, [device])
        if wrong != best[2] and (strict is None or len(strict.prefix) < 3):
            break
    loose = reuse.seed(rec, enc, [device], tolerance=1e6)
    assert loose is not None and loose.prefix == device
    assert strict is None or len(strict.prefix) < len(device)
    assert loose.tolerated == len(device) - (len(strict.prefix) if strict else 0)
    with pytest.raises(ValueError, match="reuse_tolerance"):
        WorkerConfig(reuse_tolerance=-1.0)


def test_offload_seeds_the_search_with_the_devices_latest_update(worker, stub, model, clip):
    rec = Recognizer(model, OPTS)
    own = rec.recognize([clip])[0]
    before = counter(worker, "pasu_cloud_device_updates_total")
    early = device_result([], model.name, model.version, model.token_list, 0.2, complete=False)
    later = device_result(own, model.name, model.version, model.token_list, 0.2, complete=False)
    r = stub.Offload(C.offload_requests("seed-1", clip, early, update=later), timeout=60)
    assert counter(worker, "pasu_cloud_device_updates_total") == before + 1
    assert r.decoder_reuse == SEEDED  # the config had no hypotheses: the update was used
    top = r.result.hypotheses[0]
    assert list(top.token_ids) == own[0].token_ids  # continuing its own best finds it again


def test_offload_without_a_confirmed_token_searches_from_scratch(stub, model, clip):
    rec = Recognizer(model, OPTS)
    own = rec.recognize([clip])[0]
    first = own[0].token_ids[0]
    wrong = next(t for t in range(2, len(model.token_list) - 1) if t != first)
    bogus = device_result(own, model.name, model.version, model.token_list, 0.2, complete=False)
    del bogus.hypotheses[0].token_ids[:]
    bogus.hypotheses[0].token_ids.extend([wrong, wrong])
    r = stub.Offload(C.offload_requests("seed-2", clip, bogus), timeout=60)
    if r.decoder_reuse == FULL:
        assert list(r.result.hypotheses[0].token_ids) == own[0].token_ids
    else:  # the tiny model happened to confirm `wrong` first: then it is its own best start
        assert r.decoder_reuse == SEEDED


def test_the_agent_sends_its_later_pilots_to_the_cloud(worker, model, audio):
    silence = np.zeros(16000, np.float32)
    x = np.concatenate([silence, audio[sorted(audio)[1]], audio[sorted(audio)[2]], silence])
    est = ConfidenceEstimator.from_weights({}, bias=-5.0)  # never confident: offload at the first pilot
    cfg = AgentConfig(
        decoding=DecodingOptions(beam_size=2, maxlenratio=0.3),
        policy=PolicyConfig(kind="threshold", min_pilots=1),
        cloud=CloudClientConfig(target=f"127.0.0.1:{worker.port}"),
    )
    before = counter(worker, "pasu_cloud_device_updates_total")
    with DeviceAgent(cfg, model, estimator=est) as agent:
        lines = agent.process([x[i : i + 1600] for i in range(0, x.size, 1600)], "s")
        recs = [r for r in lines if not r.get("interim")]
    assert recs and all(r["source"] == "cloud" and r["offload_stage"] == "pilot" for r in recs)
    assert counter(worker, "pasu_cloud_device_updates_total") > before
    assert {r["cloud"]["decoder_reuse"] for r in recs} <= {"seeded_beam", "full_decode"}


def test_seed_never_breaks_up_a_batch(model, audio):
    """Seeding runs one utterance at a time, so a batch with company searches from scratch."""
    from pasu.cloud.batcher import Batcher
    from pasu.cloud.jobs import Job
    from pasu.cloud.metrics import WorkerMetrics

    b = Batcher(model, WorkerConfig(reuse="seed", max_batch_wait_ms=0), WorkerMetrics())
    b.start()
    try:
        clips = [audio[k][:8000] for k in sorted(audio)[3:5]]
        jobs = []
        with b.held():
            for clip in clips:
                own = Recognizer(model, OPTS).recognize([clip])[0]
                job = Job(samples=clip, options=OPTS, device_seqs=[own[0].token_ids])
                job.attach(None)
                b.submit(job)
                jobs.append(job)
        outs = [j.future.result(timeout=60) for j in jobs]
        assert [o.reuse for o in outs] == [reuse.FULL_DECODE] * 2 and b.batches == 1 and b.searched == 2
        rec = Recognizer(model, OPTS)
        clip, own = next(  # a clip whose own best the tiny model confirms from its first token
            (c, best)
            for c in (audio[k][:8000] for k in sorted(audio)[:10])
            if reuse.seed(rec, rec.encode([c]), [best := rec.recognize([c])[0][0].token_ids]) is not None
        )
        alone = Job(samples=clip, options=OPTS, device_seqs=[own])
        alone.attach(None)
        b.submit(alone)
        out = alone.future.result(timeout=60)
        assert out.reuse == reuse.SEEDED and out.seed_tokens >= 1
        assert out.nbest[0].token_ids == own
    finally:
        b.stop(timeout=10)
