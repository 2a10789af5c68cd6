"""Cloud worker parts on their own: config, audio checks, retry cache, decoder reuse, logs, CLI, bench."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from pasu.cloud import reuse
from pasu.cloud.audio_input import InvalidRequest, check_finite
from pasu.cloud.batcher import Batcher, pad
from pasu.cloud.config import WorkerConfig
from pasu.cloud.idempotency import IdempotencyCache
from pasu.cloud.jobs import Job, Outcome
from pasu.cloud.logs import JsonFormatter
from pasu.cloud.metrics import WorkerMetrics
from pasu.decoding.options import DecodingOptions
from pasu.decoding.recognizer import Recognizer

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def model(tiny_models):
    return tiny_models["conformer"]


@pytest.mark.parametrize(
    "bad",
    [
        dict(max_batch_size=0),
        dict(max_queue=0),
        dict(default_beam_size=30),
        dict(reuse="always"),
        dict(tls_cert="c.pem"),
        dict(tls_client_ca="ca.pem"),
        dict(bearer_tokens=("",)),
        dict(allowed_sample_rates=()),
    ],
)
def test_config_rejects_nonsense(bad):
    with pytest.raises(ValueError):
        WorkerConfig(**bad)


def test_config_never_prints_tokens():
    assert "tok" not in repr(WorkerConfig(bearer_tokens=("tok",)))


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_samples_are_invalid(value):
    a = np.zeros(100, np.float32)
    a[10] = value
    with pytest.raises(InvalidRequest, match="NaN or Inf"):
        check_finite(a)


def test_idempotency_cache_ttl_lru_and_failures():
    now = [0.0]
    cache = IdempotencyCache(ttl_s=10, max_entries=2, clock=lambda: now[0])

    def finished(text):
        job = Job(samples=np.zeros(1, np.float32), options=DecodingOptions())
        job.future.set_result(Outcome(nbest=[], options=job.options, reuse=None, batch_size=len(text)))
        return job

    job, joined = cache.join_or_submit(("R", "a"), lambda: finished("a"))
    assert not joined and cache.lookup(("R", "a")) is job.future.result()
    assert cache.join_or_submit(("R", "a"), lambda: pytest.fail("decoded twice")) == (job, True)
    assert cache.lookup(("Offload", "a")) is None  # ids are per RPC
    now[0] = 11.0
    assert cache.lookup(("R", "a")) is None  # expired
    for k in "bcd":
        cache.join_or_submit(("R", k), lambda k=k: finished(k))
    assert len(cache) == 2 and cache.lookup(("R", "b")) is None  # least recently used evicted
    failing = Job(samples=np.zeros(1, np.float32), options=DecodingOptions())
    cache.join_or_submit(("R", "x"), lambda: failing)
    failing.future.set_exception(RuntimeError("boom"))
    assert cache.lookup(("R", "x")) is None and ("R", "x") not in cache._entries


def test_token_list_id_is_stable(model):
    tid = reuse.token_list_id(model.token_list)
    assert tid == reuse.token_list_id(list(model.token_list)) and len(tid) == 64
    assert tid != reuse.token_list_id(model.token_list[:-1])


def test_rescore_equals_beam_search_scores(model, audio):
    rec = Recognizer(model, DecodingOptions(beam_size=3, nbest=3, penalty=0.5))
    clips = [audio[k][:n] for k, n in zip(sorted(audio)[6:9], (6000, 9000, 12000), strict=True)]
    encs = [rec.encode([c]) for c in clips]
    nbests = [rec.decode(e)[0] for e in encs]
    maxlens = [int(e.lengths[0]) for e in encs]
    # rows of several utterances in one pass, as the batcher does
    seqs = [h.token_ids for nb in nbests for h in nb]
    rows = [u for u, nb in enumerate(nbests) for _ in nb]
    scored = reuse.rescore(rec, pad(encs), seqs, rows)
    hyps = [(h, maxlens[u]) for u, nb in enumerate(nbests) for h in nb]
    compared = 0
    for (h, maxlen), s in zip(hyps, scored, strict=True):
        if len(h.yseq) - 2 >= maxlen:  # cut at the length limit: the search never scored its <eos>
            continue
        compared += 1
        assert s.score == pytest.approx(h.score, abs=1e-3)
        for k in ("decoder", "ctc", "length_bonus"):
            assert s.scores[k] == pytest.approx(h.scores[k], abs=1e-3)
    assert compared >= 3


def test_decide_accepts_only_within_margin(model, audio):
    rec = Recognizer(model, DecodingOptions(beam_size=2, nbest=2))
    enc = rec.encode([audio[sorted(audio)[9]][:8000]])
    dev = [[h.token_ids for h in rec.decode(enc)[0]]]
    loose = reuse.decide(rec, enc, dev, margin=1e9, nbest=2)[0]
    assert loose.outcome in (reuse.ACCEPTED, reuse.RESCORED) and loose.nbest
    strict = reuse.decide(rec, enc, dev, margin=min(-1.0, -loose.gap - 1), nbest=2)[0]
    assert strict.outcome == reuse.FULL_DECODE and not strict.nbest


def test_reuse_off_always_decodes(model, audio):
    cfg = WorkerConfig(reuse="off", max_batch_wait_ms=0)
    b = Batcher(model, cfg, WorkerMetrics())
    b.start()
    try:
        opts = DecodingOptions(beam_size=2, nbest=1)
        clip = audio[sorted(audio)[10]][:6000]
        dev = Recognizer(model, opts).recognize([clip])[0]
        job = Job(samples=clip, options=opts, device_seqs=[dev[0].token_ids])
        job.attach(None)
        b.submit(job)
        out = job.future.result(timeout=60)
        assert out.reuse == reuse.FULL_DECODE and b.searched == 1
        assert out.nbest[0].token_ids == dev[0].token_ids
    finally:
        b.stop()


def test_encode_failures_are_invalid_argument_only_for_bad_input(model, audio, monkeypatch, caplog):
    """Audio the model cannot take is the client's to fix; anything else (out of memory, a bug) is
    INTERNAL, logged with its traceback; either way only that request fails."""
    import grpc

    from pasu.cloud.service import status_for

    real_encode = Recognizer.encode

    def encode(self, speech):
        if len(speech[0]) == 7777:
            raise RuntimeError("CUDA out of memory (simulated)")
        return real_encode(self, speech)

    monkeypatch.setattr(Recognizer, "encode", encode)
    clip = audio[sorted(audio)[10]]
    opts = DecodingOptions(beam_size=2, nbest=1)
    # 100 samples: shorter than the STFT window; 900: too short for the subsampling
    jobs = {n: Job(samples=clip[:n], options=opts, request_id=f"r{n}") for n in (100, 900, 7777, 8000)}
    b = Batcher(model, WorkerConfig(max_batch_wait_ms=0), WorkerMetrics())
    with b.held():  # one batch: a failed encode must not fail its neighbours
        for job in jobs.values():
            job.attach(None)
            b.submit(job)
        b.start()
    try:
        codes = {n: status_for(e)[0] if (e := job.future.exception(timeout=60)) else None for n, job in jobs.items()}
    finally:
        b.stop()
    assert codes == {
        100: grpc.StatusCode.INVALID_ARGUMENT,
        900: grpc.StatusCode.INVALID_ARGUMENT,
        7777: grpc.StatusCode.INTERNAL,
        8000: None,
    }
    assert "short" in str(jobs[100].future.exception()) and "short" in str(jobs[900].future.exception())
    assert jobs[8000].future.result().nbest
    failed = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(failed) == 1 and failed[0].exc_info and "out of memory" in str(failed[0].exc_info[1])


def test_json_log_lines_carry_request_fields():
    record = logging.LogRecord("pasu.cloud.service", logging.INFO, __file__, 1, "request", (), None)
    record.request_id, record.rpc, record.status, record.total_s = "r-1", "Recognize", "OK", 0.25
    line = json.loads(JsonFormatter().format(record))
    assert line["msg"] == "request" and line["request_id"] == "r-1" and line["status"] == "OK"
    assert line["rpc"] == "Recognize" and line["total_s"] == 0.25 and line["level"] == "INFO"


@pytest.mark.slow
def test_bench_cloud_in_process(capsys, tmp_path, tiny_model_dirs):
    import argparse

    from pasu.tools.bench.cloud import register_bench

    p = argparse.ArgumentParser()
    register_bench(p.add_subparsers())
    args = p.parse_args(
        [
            "cloud",
            "--serve-model",
            str(tiny_model_dirs["conformer"]),
            "--concurrency",
            "2",
            "--requests",
            "3",
            "--beam-size",
            "1",
            "--rpc",
            "offload",
            "--reuse",
            "compare",
            "--device-beam",
            "1",
            "--audio",
            *[str(f) for f in sorted(__import__("pasu.resources", fromlist=["x"]).example_audio(2))],
            "--text",
            str(__import__("pasu.resources", fromlist=["x"]).AUDIO_DIR / "text"),
        ]
    )
    assert args.func(args) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"requests", "errors", "throughput_rps", "p50_s", "p99_s"} <= set(last)
    assert last["requests"] == 3 and last["errors"] == 0 and "reuse_compare" in last
    reuse = last["reuse_compare"]  # scored against the clips' transcripts
    assert reuse["scored"] == 2 and "accuracy_cost_points_rescore" in reuse and 0 <= reuse["intent_acc_off"] <= 1


def test_bench_refuses_non_loopback_targets():
    import argparse

    from pasu.tools.bench.cloud import register_bench

    p = argparse.ArgumentParser()
    register_bench(p.add_subparsers())
    args = p.parse_args(["cloud", "--target", "example.com:443", "--requests", "1"])
    with pytest.raises(SystemExit, match="loopback"):
        args.func(args)


def test_cli_serve_stops_gracefully_on_sigterm(tiny_model_dirs):
    cmd = [
        sys.executable,
        "-m",
        "pasu.cli",
        "cloud",
        "serve",
        "--model",
        str(tiny_model_dirs["conformer"]),
        "--port",
        "0",
        "--grace",
        "1",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert "listening on 127.0.0.1:" in line, line
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=60)
        err = proc.stderr.read()
        assert rc == 0, err
        events = [json.loads(x)["msg"] for x in err.splitlines() if x.startswith("{")]
        assert "draining" in events and "stopped" in events
    finally:
        if proc.poll() is None:
            proc.kill()
