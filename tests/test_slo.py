"""Offload under a response budget: the one decision rule, device profiles, the replay, and
the live agent deciding as the replay does (tiny models, a real cloud worker on 127.0.0.1)."""

from __future__ import annotations

import gzip
import math
import random

import numpy as np
import pytest

from pasu.cloud.config import WorkerConfig
from pasu.cloud.server import CloudWorker
from pasu.decoding.options import DecodingOptions
from pasu.device.agent import DeviceAgent
from pasu.device.config import AgentConfig, CloudClientConfig, PolicyConfig
from pasu.device.policy import DecisionContext, OffloadPolicy, slo_decision
from pasu.slu import split_intent
from pasu.tools.experiment.profiles import PROFILES, device_profile, replay_stream
from pasu.tools.experiment.slo import Run, Step, _fast_first_offloads, first_offload

pytestmark = pytest.mark.timeout(300)

FAST = DecodingOptions(beam_size=2, maxlenratio=0.3)
KEYS = ("cmd00", "cmd05", "cmd02")


def test_slo_rule_capacity_first_then_confidence():
    rate, slo = 0.1, 0.3  # the local answer misses the budget once 3 s of audio are heard
    short = DecisionContext("chunk", None, 1.0, 0)
    assert not slo_decision(short, 0.5, rate, slo).offload
    d = slo_decision(DecisionContext("chunk", None, 3.1, 0), 0.5, rate, slo)
    assert d.offload and d.reason == "latency"
    # a backlog counts: 1 s of audio, 0.25 s behind
    assert slo_decision(DecisionContext("pilot", 0.9, 1.0, 1, backlog_s=0.25), 0.5, rate, slo).reason == "latency"
    # confidence: at pilots from min_pilots on, and at the final pass (never at a chunk or the end)
    assert not slo_decision(DecisionContext("pilot", 0.1, 1.0, 1), 0.5, rate, slo, min_pilots=2).offload
    assert slo_decision(DecisionContext("pilot", 0.1, 1.0, 2), 0.5, rate, slo, min_pilots=2).reason == "low_confidence"
    assert not slo_decision(DecisionContext("end", 0.1, 1.0, 2), 0.5, rate, slo).offload
    assert slo_decision(DecisionContext("final", 0.1, 1.0, 2), 0.5, rate, slo).offload
    assert not slo_decision(DecisionContext("final", 0.1, 1.0, 2, words=False), 0.5, rate, slo).offload
    # the final pass is done: its time is spent, no capacity check there
    assert not slo_decision(DecisionContext("final", 0.9, 9.0, 2), 0.5, rate, slo).offload
    # the agent's policy object answers with the same rule, at its fixed (profiled) rate
    pol = OffloadPolicy(PolicyConfig(kind="slo", slo_ms=300, local_rtf=rate, threshold=0.5))
    assert pol.decide(DecisionContext("chunk", None, 3.1, 0)).reason == "latency"
    pol.link.observe_local(5.0, 1.0)  # a fixed rate is not re-estimated
    assert pol.link.local_rtf == rate
    # the other policies never act at the new stages
    assert not OffloadPolicy(PolicyConfig(kind="threshold")).decide(DecisionContext("end", 0.0, 9.0, 3)).offload


def test_device_profiles():
    assert {"xavier", "phone", "rpi5"} <= set(PROFILES) and all(p.factor >= 1 for p in PROFILES.values())
    assert device_profile("xavier") is PROFILES["xavier"]
    assert device_profile("2.5").factor == 2.5
    for bad in ("pentium", "0", "-1"):
        with pytest.raises(ValueError):
            device_profile(bad)


def test_replay_stream_scales_compute_and_skips_pilots_due_while_behind():
    chunks = [[0.01, 0], [0.05, 1], [0.01, 0], [0.05, 1], [0.01, 0]]
    host = replay_stream(chunks, 0.02, 0.16, 1.0)
    assert host.pilot_ran == [False, True, False, True, False]
    assert host.latency_s == pytest.approx(0.01 + 0.02)  # the last chunk's work, then the final pass
    slow = replay_stream(chunks, 0.02, 0.16, 4.0)  # a pilot chunk takes 0.2 s > 0.16 s of audio
    assert slow.behind_s[1] == pytest.approx(0.2)
    assert slow.pilot_ran[3] is True  # caught up by then
    assert slow.latency_s == pytest.approx(0.88 + 0.08 - 0.8)
    slower = replay_stream(chunks, 0.02, 0.16, 8.0)
    assert slower.pilot_ran[3] is False  # due while behind: skipped, charged as a plain chunk
    assert slower.latency_s == pytest.approx(0.96 + 0.16 - 0.8)


def test_fast_replay_equals_the_rule_step_by_step():
    rng = random.Random(0)
    for _ in range(200):
        steps, pilots = [], 0
        for i in range(rng.randint(1, 12)):
            if rng.random() < 0.4:
                pilots += 1
                steps.append(
                    Step(DecisionContext("pilot", rng.random(), 0.16 * i, pilots, backlog_s=rng.random() * 0.1), 0)
                )
            steps.append(Step(DecisionContext("chunk", None, 0.16 * (i + 1), pilots, backlog_s=rng.random() * 0.1), 0))
        steps += [
            Step(DecisionContext("end", None, 2.0, pilots), 0),
            Step(DecisionContext("final", rng.random(), 2.0, pilots), 0),
        ]
        run = Run(steps, "", 0.1, 0.0)
        ts = [-math.inf, 0.2, 0.5, 0.8, math.inf]
        rate, slo, mp = rng.choice([0.0, 0.05, 0.2]), rng.choice([0.2, 0.3, math.inf]), rng.choice([1, 2])
        assert _fast_first_offloads(run, ts, rate, slo, mp) == [first_offload(run, t, rate, slo, mp) for t in ts]


# -- the live agent and the replay decide the same way ----------------------------------------


@pytest.fixture(scope="module")
def model(tiny_models):
    return tiny_models["conformer"]


@pytest.fixture(scope="module")
def worker(model):
    w = CloudWorker(WorkerConfig(port=0, default_beam_size=2, max_beam_size=4, max_batch_wait_ms=5, grace_s=1.0), model)
    w.start(wait=True, timeout=60)
    yield w
    w.stop(grace=0.5)


def _run_agent(model, worker, policy: PolicyConfig, audio) -> list[tuple[list[dict], dict]]:
    """Each clip alone (a second of silence around it): its interim (pilot) records and its answer."""
    cfg = AgentConfig(
        decoding=FAST, policy=policy, interim=True, cloud=CloudClientConfig(target=f"127.0.0.1:{worker.port}")
    )
    silence = np.zeros(16000, np.float32)
    out = []
    with DeviceAgent(cfg, model) as agent:
        for k in KEYS:
            x = np.concatenate([silence, audio[k], silence])
            recs = list(agent.process([x[i : i + 1600] for i in range(0, x.size, 1600)], k))
            finals = [r for r in recs if not r.get("interim")]
            assert len(finals) == 1, k
            out.append(([r for r in recs if r.get("interim")], finals[0]))
    return out


def _replay_run(interims: list[dict], final: dict, frame_s: float = 0.032) -> Run:
    """The replay's view of one segment from what the agent reported: a capacity check per VAD
    frame (backlog 0: the agent decodes inline), its pilots, the end, the final pass."""
    heard = final["segment"]["end"] - final["segment"]["start"]
    events = [(p["audio_s"], 0, p) for p in interims]
    events += [(frame_s * (i + 1), 1, None) for i in range(int(heard / frame_s))]
    steps, seen = [], 0
    for at, _, p in sorted(events, key=lambda e: (e[0], e[1])):
        if p is not None:
            seen += 1
            steps.append(Step(DecisionContext("pilot", p["confidence"], at, seen), 0))
        else:
            steps.append(Step(DecisionContext("chunk", None, at, seen), 0))
    words = bool(split_intent(final["text"])[1].strip()) if not final["offloaded"] else True
    steps += [
        Step(DecisionContext("end", None, heard, seen), 0),
        Step(DecisionContext("final", final["device_confidence"], heard, seen, words=words), 0),
    ]
    return Run(steps, final["text"], 0.0, 0.0)


@pytest.mark.slow
def test_agent_and_replay_make_the_same_offload_decisions(model, worker, audio):
    rate = 0.1  # a profiled compute rate: the slo policy's capacity check is deterministic
    probe = _run_agent(model, worker, PolicyConfig(kind="slo", slo_ms=1e6, local_rtf=rate, threshold=0.0), audio)
    assert not any(f["offloaded"] for _, f in probe)  # no budget to miss, no threshold to cross
    assert sum(len(interims) for interims, _ in probe) >= 2, "the tiny model ran no pilots"
    # the tiny model's confidences are near 0; the reports round them to 4 decimals, so the
    # threshold sits well away from every reported value
    low = 10 * max([p["confidence"] for interims, _ in probe for p in interims] + [1e-4])
    lengths = sorted(f["segment"]["end"] - f["segment"]["start"] for _, f in probe)
    cut = (lengths[0] + lengths[1]) / 2  # the shortest clip fits the budget, the others do not
    reasons = set()
    for slo_ms, threshold in ((1e6, low), (1000 * rate * cut, 0.0), (1000 * rate * cut, low)):
        policy = PolicyConfig(kind="slo", slo_ms=slo_ms, local_rtf=rate, threshold=threshold)
        for interims, final in _run_agent(model, worker, policy, audio):
            run = _replay_run(interims, final)
            k = first_offload(run, threshold, rate, slo_ms / 1000, policy.min_pilots)
            assert final["offloaded"] == (k is not None), (slo_ms, threshold, final)
            if k is not None:
                reason = slo_decision(run.steps[k].ctx, threshold, rate, slo_ms / 1000, policy.min_pilots).reason
                assert final["offload_reason"] == reason
                assert final["source"] in ("cloud", "device")  # device: a fallback
                reasons.add(reason)
    assert reasons == {"latency", "low_confidence"}  # both halves of the rule were exercised


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_slo_experiment_cli(tiny_model_dirs, audio_files, tmp_path):
    """`pasu experiment offload --slo-ms`: the budget framing end to end on four clips."""
    import json
    import os
    import subprocess
    import sys

    from pasu.resources import AUDIO_DIR

    d = tmp_path / "data"
    d.mkdir()
    texts = dict(line.split(" ", 1) for line in (AUDIO_DIR / "text").read_text().splitlines() if line.strip())
    files = audio_files[:4]
    (d / "wav.scp").write_text("".join(f"{f.stem} {f}\n" for f in files))
    (d / "text").write_text("".join(f"{f.stem} general_quirky {texts[f.stem]}\n" for f in files))
    out = tmp_path / "exp"
    cmd = [sys.executable, "-m", "pasu.cli", "experiment", "offload", "--data", str(d), "--out", str(out)]
    cmd += ["--device-model", str(tiny_model_dirs["late"]), "--cloud-model", str(tiny_model_dirs["conformer"])]
    cmd += ["--rtt-ms", "100", "--mbit", "10", "--slo-ms", "300", "--slo-ms", "800", "--slo-only", "--resamples", "50"]
    cmd += ["--device-profile", "xavier", "--device-profile", "3"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=os.environ.copy())
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    keys = {
        "slo_ms", "device_profile", "offload_rate_stock", "offload_rate_pasu", "offload_ratio_slo",
        "offload_ratio_slo_ci95", "offload_ratio_slo_vs_off", "offload_rate_off", "on_time_rate_stock",
        "on_time_rate_pasu", "accuracy_stock", "accuracy_pasu",
    }  # fmt: skip
    assert [(e["device_profile"], e["slo_ms"]) for e in summary["slo"]] == [
        ("xavier", 300.0), ("xavier", 800.0), ("x3", 300.0), ("x3", 800.0)
    ]  # fmt: skip
    assert all(set(e) == keys for e in summary["slo"])
    rows = gzip.decompress((out / "slo_points.csv.gz").read_bytes()).decode().splitlines()
    assert rows[0].split(",")[:5] == ["profile", "slo_ms", "network", "pipeline", "policy"]
    pipes = {tuple(row.split(",")[3:5]) for row in rows[1:]}
    assert {("stock", "eou"), ("stock", "capacity"), ("off", "capacity"), ("pasu", "offramp_capacity")} <= pipes
    assert ("pasu", "oracle") in pipes and ("cloud", "cloud") in pipes
    assert (out / "slo_offload_vs_budget_100ms_10Mbit.png").stat().st_size > 1000
    # the cache records what the three pipelines need
    rec = json.loads(next(p for p in (out / "cache" / "device").glob("*.json") if p.name != "key.json").read_text())
    assert {"stock", "off", "device"} <= set(rec) and rec["off"]["chunks"] and rec["device"]["chunks"]
