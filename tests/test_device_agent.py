"""The device agent end to end with tiny models: CLI contract, policies against a real cloud
worker on 127.0.0.1, fallback when the cloud is dead or hung, retries, train-confidence."""

from __future__ import annotations

import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest

from pasu.audio import read_audio
from pasu.cloud.config import WorkerConfig
from pasu.cloud.server import CloudWorker
from pasu.decoding.options import DecodingOptions
from pasu.device.agent import DeviceAgent
from pasu.device.confidence import SCORE_FEATURES, ConfidenceEstimator
from pasu.device.config import AgentConfig, CloudClientConfig, PolicyConfig
from pasu.device.vad import segment_audio
from pasu.streaming import StreamingOptions
from pasu.v1 import hypothesis_pb2, recognition_pb2, speech_service_pb2, speech_service_pb2_grpc

pytestmark = pytest.mark.timeout(120)

FAST = DecodingOptions(beam_size=2, maxlenratio=0.3)  # tiny random models babble: bound the length
KEYS = ("cmd00", "cmd03", "cmd05")
SEGMENT_KEYS = [
    "text",
    "intent",
    "confidence",
    "source",
    "offloaded",
    "offload_reason",
    "latency_ms",
    "latency_breakdown",
    "fallback",
    "file",
    "segment",
]


@pytest.fixture(scope="module")
def model(tiny_models):
    return tiny_models["conformer"]


@pytest.fixture(scope="module")
def stream(audio):
    """Three bundled clips with a second of silence around each: three segments."""
    silence = np.zeros(16000, np.float32)
    parts = [silence]
    for k in KEYS:
        parts += [audio[k], silence]
    return np.concatenate(parts)


def chunks(x: np.ndarray, n: int = 1600):
    return [x[i : i + n] for i in range(0, x.size, n)]


@pytest.fixture(scope="module")
def worker(model):
    w = CloudWorker(WorkerConfig(port=0, default_beam_size=2, max_beam_size=4, max_batch_wait_ms=5, grace_s=1.0), model)
    w.start(wait=True, timeout=60)
    yield w
    w.stop(grace=0.5)


def agent_config(policy: str, target: str | None, **cloud) -> AgentConfig:
    return AgentConfig(decoding=FAST, policy=PolicyConfig(kind=policy), cloud=CloudClientConfig(target=target, **cloud))


def run(agent: DeviceAgent, x: np.ndarray) -> list[dict]:
    return [r for r in agent.process(chunks(x), "stream") if not r.get("interim")]


# -- the CLI's JSON-lines contract ------------------------------------------------
@pytest.mark.slow
def test_transcribe_json_lines_contract(tiny_model_dirs, audio_files, capsys, tmp_path):
    import soundfile as sf

    from pasu.cli import main

    # one file at another rate: the agent resamples
    a = read_audio(audio_files[1], 22050)
    other = tmp_path / "resampled.wav"
    sf.write(other, a, 22050)
    rc = main(
        [
            "device",
            "transcribe",
            str(audio_files[0]),
            str(other),
            "--model",
            str(tiny_model_dirs["late"]),
            "--beam-size",
            "2",
            "--maxlenratio",
            "0.3",
            "--interim",
        ]
    )
    assert rc == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    finals = [r for r in lines if not r.get("interim")]
    interims = [r for r in lines if r.get("interim")]
    assert [r["file"] for r in finals] == [str(audio_files[0]), str(other)]
    assert interims and all(r["segment"]["end"] is None and "text" in r for r in interims)
    for r in finals:
        assert all(k in r for k in SEGMENT_KEYS)
        assert 0.0 <= r["segment"]["start"] < r["segment"]["end"] <= 3.0
        assert r["source"] == "device" and r["offloaded"] is False and r["fallback"] is False
        assert r["offload_reason"] is None
        assert isinstance(r["text"], str) and 0.0 <= r["confidence"] <= 1.0
        assert r["intent"] is None or r["text"].startswith(r["intent"])
        assert r["latency_ms"] >= 0 and "local_final_ms" in r["latency_breakdown"]


@pytest.mark.slow
def test_transcribe_human_readable(tiny_model_dirs, audio_files, capsys):
    from pasu.cli import main

    assert (
        main(
            [
                "device",
                "transcribe",
                str(audio_files[2]),
                "--model",
                str(tiny_model_dirs["late"]),
                "--beam-size",
                "2",
                "--maxlenratio",
                "0.3",
                "--human",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and "device" in out[0] and not out[0].startswith("{")


# -- policies against a real cloud worker ----------------------------------------
def test_policy_never_keeps_everything_local(model, worker, stream):
    with DeviceAgent(agent_config("never", f"127.0.0.1:{worker.port}"), model) as agent:
        assert agent.client is None
        recs = run(agent, stream)
    assert len(recs) == 3
    assert all(r["source"] == "device" and not r["offloaded"] for r in recs)


def test_policy_always_offloads_everything(model, worker, stream):
    with DeviceAgent(agent_config("always", f"127.0.0.1:{worker.port}"), model) as agent:
        recs = run(agent, stream)
    assert len(recs) == 3
    for r in recs:
        assert r["source"] == "cloud" and r["offloaded"] and not r["fallback"]
        assert r["offload_reason"] == "policy_always" and r["offload_stage"] == "start"
        assert r["cloud"]["model"] == model.name and r["cloud"]["attempts"] == 1
        assert r["text"] and "cloud_wait_ms" in r["latency_breakdown"]
    assert len({r["request_id"] for r in recs}) == 3


def test_policy_threshold_offloads_only_uncertain_segments(model, worker, stream):
    # A fixed-weight estimator: long segments are "confident". Decided at the end only,
    # so each segment's whole length is what the estimator sees.
    lengths = [(s.end - s.start) / 16000 for s in segment_audio(stream)]
    cut = float(np.median(lengths))
    est = ConfidenceEstimator.from_weights({"audio_s": 20.0}, bias=-20.0 * cut)
    cfg = agent_config("threshold", f"127.0.0.1:{worker.port}").with_(
        policy=PolicyConfig(kind="threshold", threshold=0.5, early=False), streaming=StreamingOptions.stock()
    )
    with DeviceAgent(cfg, model, estimator=est) as agent:
        recs = run(agent, stream)
    assert len(recs) == 3 and all(r["text"] for r in recs)  # words: a final without any stays local
    for r, length in zip(recs, lengths, strict=True):
        if length > cut + 0.02:
            assert r["source"] == "device" and not r["offloaded"] and r["confidence"] > 0.5
        elif length < cut - 0.02:
            assert r["source"] == "cloud" and r["offload_reason"] == "low_confidence"
            assert r["offload_stage"] == "final" and r["device_confidence"] < 0.5
    assert {r["source"] for r in recs} == {"device", "cloud"}


def test_early_offload_at_a_pilot(model, worker, stream):
    est = ConfidenceEstimator.from_weights({}, bias=-5.0)  # never confident
    cfg = agent_config("threshold", f"127.0.0.1:{worker.port}").with_(
        policy=PolicyConfig(kind="threshold", min_pilots=1), interim=True
    )
    with DeviceAgent(cfg, model, estimator=est) as agent:
        lines = list(agent.process(chunks(stream), "stream"))
    finals = [r for r in lines if not r.get("interim")]
    assert len(finals) == 3 and any(r.get("interim") for r in lines)
    for r in finals:
        assert r["source"] == "cloud" and r["offload_stage"] == "pilot"


@pytest.mark.parametrize("local_rtf, offloaded", [(10.0, True), (0.0, False)])
def test_policy_latency_offloads_when_the_cloud_is_faster(model, worker, audio, local_rtf, offloaded):
    est = ConfidenceEstimator.from_weights({}, bias=-5.0)  # never confident
    cfg = agent_config("latency", f"127.0.0.1:{worker.port}").with_(
        policy=PolicyConfig(kind="latency", prior_local_rtf=local_rtf, early=False)
    )
    x = np.concatenate([np.zeros(8000, np.float32), audio["cmd06"], np.zeros(8000, np.float32)])
    with DeviceAgent(cfg, model, estimator=est) as agent:
        recs = run(agent, x)
    assert len(recs) == 1 and recs[0]["offloaded"] is offloaded
    assert recs[0]["source"] == ("cloud" if offloaded else "device")
    if offloaded:
        assert recs[0]["offload_reason"] == "latency"


# -- a cloud that fails: dead, hung, flaky -----------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_dead_worker_falls_back_locally(model, stream):
    cfg = agent_config(
        "always", f"127.0.0.1:{free_port()}", deadline_s=0.5, total_deadline_s=1.0, backoff_initial_s=0.02
    )
    with DeviceAgent(cfg, model) as agent:
        recs = run(agent, stream)
    assert len(recs) == 3  # nothing lost
    for r in recs:
        assert r["fallback"] is True and r["source"] == "device" and r["offloaded"] is True
        assert r["latency_ms"] < 1000 + 1500
        assert "UNAVAILABLE" in r["error"] and r["cloud"]["attempts"] >= 1


class _TestService(speech_service_pb2_grpc.SpeechServiceServicer):
    """A hand-written cloud: hangs, or fails its first attempts, and records request ids."""

    def __init__(self, hang_s: float = 0.0, fail_first: int = 0, code=grpc.StatusCode.UNAVAILABLE) -> None:
        self.hang_s, self.fail_first, self.code = hang_s, fail_first, code
        self.request_ids: list[str] = []
        self.lock = threading.Lock()

    def Offload(self, request_iterator, context):
        requests = iter(request_iterator)
        cfg = next(requests).config
        with self.lock:
            self.request_ids.append(cfg.request_id)
            attempt = len(self.request_ids)
        n = sum(len(r.audio) for r in requests)
        if attempt <= self.fail_first:
            context.abort(self.code, "try again")
        end = time.monotonic() + self.hang_s
        while time.monotonic() < end and context.is_active():
            time.sleep(0.01)
        hyp = hypothesis_pb2.Hypothesis(text=f"what is the weather {n}", intent="weather_query", confidence=0.9)
        return speech_service_pb2.OffloadResponse(
            request_id=cfg.request_id,
            decoder_reuse=speech_service_pb2.DECODER_REUSE_FULL_DECODE,
            result=recognition_pb2.RecognitionResult(
                hypotheses=[hyp], model=hypothesis_pb2.ModelInfo(name="test-cloud")
            ),
        )


@pytest.fixture
def test_server():
    servers = []

    def start(service: _TestService) -> int:
        server = grpc.server(ThreadPoolExecutor(max_workers=4))
        speech_service_pb2_grpc.add_SpeechServiceServicer_to_server(service, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        return port

    yield start
    for s in servers:
        s.stop(0)


def test_hung_worker_falls_back_within_the_deadline(model, audio, test_server):
    port = test_server(_TestService(hang_s=30.0))
    x = np.concatenate([np.zeros(8000, np.float32), audio["cmd00"], np.zeros(8000, np.float32)])
    cfg = agent_config("always", f"127.0.0.1:{port}", deadline_s=0.4, total_deadline_s=0.8, max_attempts=2)
    t = time.monotonic()
    with DeviceAgent(cfg, model) as agent:
        recs = run(agent, x)
    assert time.monotonic() - t < 20
    assert len(recs) == 1
    r = recs[0]
    assert r["fallback"] is True and r["source"] == "device" and "DEADLINE_EXCEEDED" in r["error"]
    assert r["latency_ms"] < 800 + 700  # the total deadline, plus scheduling slack


def test_retries_reuse_the_request_id(model, audio, test_server):
    service = _TestService(fail_first=1)
    port = test_server(service)
    x = np.concatenate([np.zeros(8000, np.float32), audio["cmd01"], np.zeros(8000, np.float32)])
    cfg = agent_config("always", f"127.0.0.1:{port}", backoff_initial_s=0.01)
    with DeviceAgent(cfg, model) as agent:
        recs = run(agent, x)
    assert len(recs) == 1
    r = recs[0]
    assert r["source"] == "cloud" and not r["fallback"] and r["cloud"]["attempts"] == 2
    assert len(service.request_ids) == 2 and set(service.request_ids) == {r["request_id"]}
    assert r["intent"] == "weather_query" and r["text"].startswith("weather_query what is the weather")
    # every attempt carried the whole segment (the retry replays it)
    n_bytes = int(r["text"].rsplit(" ", 1)[1])
    assert n_bytes == 2 * round((r["segment"]["end"] - r["segment"]["start"]) * 16000)


def test_errors_that_are_not_transient_are_not_retried(model, audio, test_server):
    service = _TestService(fail_first=5, code=grpc.StatusCode.INVALID_ARGUMENT)
    port = test_server(service)
    x = np.concatenate([np.zeros(8000, np.float32), audio["cmd02"], np.zeros(8000, np.float32)])
    with DeviceAgent(agent_config("always", f"127.0.0.1:{port}"), model) as agent:
        recs = run(agent, x)
    assert len(recs) == 1 and recs[0]["fallback"] and "INVALID_ARGUMENT" in recs[0]["error"]
    assert len(service.request_ids) == 1


# -- train-confidence ----------------------------------------------------------
@pytest.mark.slow
def test_train_confidence_end_to_end(tiny_model_dirs, audio_files, references, tmp_path, capsys):
    from pasu.cli import main

    data = tmp_path / "data"
    data.mkdir()
    files = audio_files[:8]
    (data / "wav.scp").write_text("".join(f"{f.stem} {f}\n" for f in files))
    # A fake intent label: for every other clip, the word the tiny model says first (so that
    # both classes occur), for the others a label it never says.
    from pasu.decoding.recognizer import Recognizer
    from pasu.models import load_model
    from pasu.streaming import StreamingSession

    rec = Recognizer(load_model(tiny_model_dirs["conformer"]), FAST)
    lines = []
    for i, f in enumerate(files):
        intent = "fake_intent"
        if i % 2 == 0:
            session = StreamingSession(rec, StreamingOptions())
            for c in chunks(read_audio(f)):
                session.feed(c)
            intent = (session.finalize().best.text.split() or ["x"])[0]
        lines.append(f"{f.stem} {intent} {references[f.stem]}\n")
    (data / "text").write_text("".join(lines))
    halves = []  # trained on two pooled data dirs (--data twice), tested on the whole
    for k in (0, 1):
        half = tmp_path / f"half{k}"
        half.mkdir()
        (half / "wav.scp").write_text("".join(f"{f.stem} {f}\n" for f in files[4 * k : 4 * k + 4]))
        (half / "text").write_text("".join(lines[4 * k : 4 * k + 4]))
        halves += ["--data", str(half)]
    out = tmp_path / "conf" / "estimator.pt"
    cache = tmp_path / "cache"
    common = [
        "device",
        "train-confidence",
        "--model",
        str(tiny_model_dirs["conformer"]),
        *halves,
        "--beam-size",
        "2",
        "--maxlenratio",
        "0.3",
        "--epochs",
        "60",
        "--features",
        "scores",
        "--eval-fraction",
        "0.25",
        "--test",
        str(data),
        "--limit",
        "8",
        "--cache",
        str(cache),
    ]
    rc = main([*common, "--out", str(out), "--kind", "cnn"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "ECE" in printed and "AUROC" in printed
    summary = json.loads(printed.strip().splitlines()[-1])
    assert summary["ece"] is not None and 0.0 <= summary["ece"] <= 1.0
    est = ConfidenceEstimator.load(out)
    assert est.net.kind == "cnn" and est.net.uses == SCORE_FEATURES
    meta = json.loads(Path(str(out) + ".json").read_text())
    assert meta["utterances"] == {"train": 6, "eval": 2}
    assert meta["data"] == [str(tmp_path / "half0"), str(tmp_path / "half1")]
    assert Path(meta["reliability_diagram"]).read_bytes()[:4] == b"\x89PNG"
    assert meta["test"]["utterances"] == 8 and "auroc" in meta["test"]["metrics"]["all_steps"]
    assert Path(meta["test"]["reliability_diagram"]).read_bytes()[:4] == b"\x89PNG"
    assert 0.0 <= summary["test_ece"] <= 1.0
    # --cache: one file of decoded examples per data dir; a second run with another estimator
    # kind decodes nothing (the files stay as they were) and sees the same utterances
    cached = {p: p.stat().st_mtime_ns for p in cache.glob("examples-*.npz")}
    assert len(cached) == 3
    rc = main([*common, "--out", str(tmp_path / "conf" / "mlp.pt"), "--kind", "mlp"])
    assert rc == 0
    capsys.readouterr()
    assert {p: p.stat().st_mtime_ns for p in cache.glob("examples-*.npz")} == cached
    meta_mlp = json.loads((tmp_path / "conf" / "mlp.pt.json").read_text())
    assert meta_mlp["utterances"] == meta["utterances"] and meta_mlp["test"]["utterances"] == 8
    assert meta_mlp["metrics"]["eval"]["all_steps"]["n"] == meta["metrics"]["eval"]["all_steps"]["n"]
    # --label cloud reuses the device's decodes; only the cloud's answers are new, one file per dir
    rc = main(
        [
            *common,
            "--out",
            str(tmp_path / "conf" / "cloud.pt"),
            "--label",
            "cloud",
            "--cloud-model",
            str(tiny_model_dirs["branchformer"]),
        ]
    )
    assert rc == 0
    capsys.readouterr()
    assert {p: p.stat().st_mtime_ns for p in cache.glob("examples-*.npz")} == cached
    answers = sorted(cache.glob("cloud-*.json"))
    assert len(answers) == 3 and sum(len(json.loads(a.read_text())) for a in answers) == 8 + 8
    assert json.loads((tmp_path / "conf" / "cloud.pt.json").read_text())["options"]["label"] == "cloud"
    # shipped beside a model, the estimator is that model's default
    import shutil

    from pasu.device.confidence import SHIPPED_NAME, estimator_for

    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dirs["conformer"], model_dir)
    assert estimator_for(model_dir).net.kind != "cnn"  # the built-in prior
    shutil.copyfile(out, model_dir / SHIPPED_NAME)
    shutil.copyfile(str(out) + ".json", str(model_dir / SHIPPED_NAME) + ".json")
    assert estimator_for(model_dir).net.kind == "cnn"
    # usable by the agent
    cfg = AgentConfig(decoding=FAST, confidence=out)
    with DeviceAgent(cfg, load_model(tiny_model_dirs["conformer"])) as agent:
        recs = run(agent, read_audio(audio_files[0]))
    assert len(recs) == 1 and 0.0 <= recs[0]["confidence"] <= 1.0


def test_cloud_label_marks_only_what_the_cloud_would_fix(tiny_models, audio_files):
    """``--label cloud``: an utterance is 0 exactly where the cloud's intent is right and the
    device's is not. References are built so that both cases occur: the intent is the
    cloud's first word on odd clips where the two models disagree, else the device's."""
    from pasu.decoding.recognizer import Recognizer
    from pasu.streaming import StreamingSession
    from pasu.tools.train.confidence import TrainOptions, collect_cached, label

    device, cloud = tiny_models["conformer"], tiny_models["branchformer"]
    files = audio_files[:6]
    first = {}
    for f in files:
        session = StreamingSession(Recognizer(device, FAST), StreamingOptions())
        for c in chunks(read_audio(f)):
            session.feed(c)
        d = (session.finalize().best.text.split() or ["<none>"])[0]
        c_ = (Recognizer(cloud, FAST).recognize([read_audio(f)])[0][0].text.split() or ["<none>"])[0]
        first[f.stem] = (d, c_)
    data = [
        (f.stem, f, f"{first[f.stem][1] if i % 2 and first[f.stem][0] != first[f.stem][1] else first[f.stem][0]} w")
        for i, f in enumerate(files)
    ]
    expected = [0.0 if i % 2 and first[f.stem][0] != first[f.stem][1] else 1.0 for i, f in enumerate(files)]
    assert 0.0 in expected and 1.0 in expected  # both cases, or the test proves nothing
    options = TrainOptions(label="cloud", decoding=FAST)
    ex = collect_cached(device, data, options, None, cloud=cloud)
    assert [float(ex.y[ex.final][ex.utt[ex.final] == k][0]) for k in range(len(files))] == expected
    with pytest.raises(ValueError, match="cloud"):
        collect_cached(device, data, options, None)
    # the device's decodes are label-free: relabelling them by the device's own intent
    # gives 1 exactly where its first word is the reference's
    own = label(ex, "intent")
    assert [float(own.y[own.final][own.utt[own.final] == k][0]) for k in range(len(files))] == [
        1.0 if data[k][2].split()[0] == first[f.stem][0] else 0.0 for k, f in enumerate(files)
    ]
