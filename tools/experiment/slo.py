"""Offload under a response budget: replay each pipeline and policy on a device profile.

An answer is on time when it reaches the user within ``slo_s`` after the end of
speech (the cloud's arrival as in :mod:`sweep`: RTT, bandwidth, upload of the
audio so far). Three device pipelines, from the same cache:

* ``stock``: ESPnet's Speech2Text after the end of speech;
* ``off``: pasu's session with every technique off (its decoder, after speech);
* ``pasu``: pasu's streaming session with every technique on.

Policies: ``eou`` (decide once the local answer is in, on its confidence — the
stock score per token, or pasu's estimator), ``capacity`` (as ``eou``, but
first offload as soon as the expected local finish would miss the budget),
pasu's ``offramp`` (confidence at every pilot from ``min_pilots`` on, then at
the end) and ``offramp_capacity`` (with the capacity check at every chunk and
pilot), and the ``oracle``. Every decision is
:func:`pasu.device.policy.slo_decision`, the rule the agent runs; the expected
local finish uses the pipeline's measured compute rate (s per s of audio) at a
quantile ``q`` over the run's utterances, swept like the threshold.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from pasu.device.policy import DecisionContext, slo_decision
from pasu.tools.experiment.collect import nbest_from_json
from pasu.tools.experiment.profiles import DeviceProfile, replay_stream
from pasu.tools.experiment.sweep import Network, Scorer, cloud_latency, thresholds

PIPELINES = ("stock", "off", "pasu")
RATE_QUANTILES = (0.5, 0.75, 0.9, 0.95, 1.0)
POLICIES = {"stock": ("eou", "capacity"), "off": ("eou", "capacity"), "pasu": ("offramp", "offramp_capacity")}


@dataclass
class Step:
    ctx: DecisionContext
    decided_at: float  # seconds after speech start


@dataclass
class Run:
    """One utterance through one pipeline on one profile: its decision points and local answer."""

    steps: list[Step]
    text: str
    latency_s: float  # local answer, after the end of speech
    rate: float  # final-pass compute per second of audio (for the capacity check)


@dataclass
class SloPoint:
    pipeline: str
    policy: str
    profile: str
    slo_ms: float
    network: str
    threshold: float | None
    rate_quantile: float | None
    offload_rate: float
    accuracy: float
    on_time_rate: float
    bytes_uploaded: int
    correct: list[bool] = field(repr=False)
    offloaded: list[bool] = field(repr=False)
    on_time: list[bool] = field(repr=False)


def confidences(rec: dict, estimator, ran: list[bool]) -> list[float]:
    """pasu's confidence after each pilot that ran (``ran``: per recorded pilot), then at the
    final pass — the estimator fed as the agent feeds it (:mod:`pasu.device.confidence`)."""
    from pasu.device.confidence import FeatureTracker
    from pasu.streaming.session import FinalResult, PilotRecord

    tracker = FeatureTracker()
    out = []
    for p, ok in zip(rec["device"]["pilots"], ran, strict=True):
        if ok:
            tracker.pilot(PilotRecord(p["audio_s"], 0, nbest_from_json(p["nbest"]), 0, 0.0))
            out.append(estimator.score(tracker))
    f = rec["device"]["final"]
    tracker.final(FinalResult(nbest_from_json(f["nbest"]), f["features"], [], 0, 0, 0.0, 0.0))
    out.append(estimator.score(tracker))
    return out


def runs_for(records: dict[str, dict], estimator, profile: DeviceProfile, chunk_s: float) -> dict:
    """pipeline -> utt -> :class:`Run` on ``profile`` (pasu's confidences recomputed without
    the pilots the profile skips)."""
    out: dict[str, dict[str, Run]] = {p: {} for p in PIPELINES}
    for u, r in records.items():
        eos = r["device"]["eos_s"]
        n = len(r["device"]["chunks"])
        for name, chunks, final_s, text, score in (
            ("stock", [[0.0, 0]] * n, r["stock"]["latency_s"], r["stock"]["text"], r["stock"]["score_per_token"]),
            ("off", r["off"]["chunks"], r["off"]["final_s"], r["off"]["text"], r["off"]["score_per_token"]),
        ):
            tl = replay_stream(chunks, final_s, chunk_s, profile.factor)
            steps = [
                Step(DecisionContext("chunk", None, min((i + 1) * chunk_s, eos), 0, backlog_s=b), d)
                for i, (d, b) in enumerate(zip(tl.done_s, tl.behind_s, strict=True))
            ]
            steps += _end_steps(tl, eos, score, 0)
            out[name][u] = Run(steps, text, tl.latency_s, profile.factor * final_s / r["audio_s"])
        d = r["device"]
        tl = replay_stream(d["chunks"], d["final_s"], chunk_s, profile.factor)
        by_chunk: dict[int, list[int]] = {}
        for k, p in enumerate(d["pilots"]):
            by_chunk.setdefault(p["chunk"], []).append(k)
        c = confidences(r, estimator, [tl.pilot_ran[p["chunk"]] for p in d["pilots"]])
        steps, seen = [], 0
        for i, (done, behind) in enumerate(zip(tl.done_s, tl.behind_s, strict=True)):
            for k in by_chunk.get(i, []) if tl.pilot_ran[i] else []:
                seen += 1
                ctx = DecisionContext("pilot", c[seen - 1], d["pilots"][k]["audio_s"], seen, backlog_s=behind)
                steps.append(Step(ctx, done))
            heard = min((i + 1) * chunk_s, eos)
            steps.append(Step(DecisionContext("chunk", None, heard, seen, backlog_s=behind), done))
        steps += _end_steps(tl, eos, c[-1], seen)
        best = d["final"]["nbest"][0]["text"] if d["final"]["nbest"] else ""
        out["pasu"][u] = Run(steps, best, tl.latency_s, profile.factor * d["final_s"] / r["audio_s"])
    return out


def _end_steps(tl, eos: float, final_conf: float, pilots: int) -> list[Step]:
    behind = max(0.0, (tl.done_s[-1] if tl.done_s else eos) - eos)
    return [
        Step(DecisionContext("end", None, eos, pilots, backlog_s=behind), eos + behind),
        Step(DecisionContext("final", final_conf, eos, pilots), eos + tl.latency_s),
    ]


def first_offload(run: Run, threshold: float, rate: float, slo_s: float, min_pilots: int) -> int | None:
    """Index of the step at which the budget rule offloads (None: answered locally)."""
    for k, s in enumerate(run.steps):
        if slo_decision(s.ctx, threshold, rate, slo_s, min_pilots).offload:
            return k
    return None


def _fast_first_offloads(run: Run, ts: list[float], rate: float, slo_s: float, min_pilots: int) -> list[int | None]:
    """:func:`first_offload` for every threshold at once. The rule is "capacity misses OR
    (an acting step's confidence < threshold)", so the capacity step (threshold -inf) and
    the first acting step under each threshold (prefix minimum of confidences at the steps
    where the rule acts with threshold +inf and no capacity check) give the first offload."""
    cap = first_offload(run, -math.inf, rate, slo_s, min_pilots)
    idx, mins, m = [], [], math.inf
    for k, s in enumerate(run.steps):
        if slo_decision(s.ctx, math.inf, 0.0, math.inf, min_pilots).offload:
            m = min(m, s.ctx.confidence if s.ctx.confidence is not None else math.inf)
            idx.append(k)
            mins.append(m)
    out = []
    for t in ts:
        # first acting step whose running minimum is < t (running minima do not increase)
        j = next((idx[i] for i, v in enumerate(mins) if v < t), None)
        out.append(j if cap is None else (cap if j is None else min(cap, j)))
    return out


def sweep_slo(
    records: dict[str, dict],
    refs: dict[str, str],
    estimator,
    profile: DeviceProfile,
    budgets_ms: list[float],
    networks: list[Network],
    chunk_s: float,
    min_pilots: int,
) -> list[SloPoint]:
    """Every pipeline's and policy's operating points on ``profile``, per budget and network."""
    scorer = Scorer(refs)
    utts = list(records)
    runs = runs_for(records, estimator, profile, chunk_s)
    cloud_ok = [scorer.correct(u, records[u]["cloud"]["text"]) for u in utts]
    points: list[SloPoint] = []
    for pipe in PIPELINES:
        rs = [runs[pipe][u] for u in utts]
        local_ok = [scorer.correct(u, r.text) for u, r in zip(utts, rs, strict=True)]
        finals = [r.steps[-1].ctx.confidence for r in rs]
        ts = thresholds([c for c in finals if c is not None and math.isfinite(c)] + _pilot_confs(rs))
        rates = np.array([r.rate for r in rs])
        for slo_ms in budgets_ms:
            slo_s = slo_ms / 1000
            for q in (None, *RATE_QUANTILES):
                rate = 0.0 if q is None else float(np.quantile(rates, q))
                budget = math.inf if q is None else slo_s
                firsts = [_fast_first_offloads(r, ts, rate, budget, min_pilots) for r in rs]
                policy = POLICIES[pipe][0 if q is None else 1]
                for net in networks:
                    for ti, t in enumerate(ts):
                        ks = [f[ti] for f in firsts]
                        points.append(
                            _point(pipe, policy, profile, slo_ms, net, t, q, records, utts, rs, ks, local_ok, cloud_ok)
                        )
            for net in networks:
                points.append(_oracle(pipe, profile, slo_ms, net, records, utts, rs, local_ok, cloud_ok))
    for slo_ms in budgets_ms:  # cloud-only: every utterance sent as it starts
        for net in networks:
            lat = [cloud_latency(records[u], 0.0, net) for u in utts]
            sent = [True] * len(utts)
            points.append(_make("cloud", "cloud", profile, slo_ms, net, None, None, records, utts, cloud_ok, sent, lat))
    return points


def _pilot_confs(rs: list[Run]) -> list[float]:
    return [s.ctx.confidence for r in rs for s in r.steps if s.ctx.stage == "pilot" and s.ctx.confidence is not None]


def _point(pipe, policy, profile, slo_ms, net, t, q, records, utts, rs, ks, local_ok, cloud_ok) -> SloPoint:
    correct, off, lat = [], [], []
    for u, r, k, lok, cok in zip(utts, rs, ks, local_ok, cloud_ok, strict=True):
        if k is None:
            correct.append(lok)
            off.append(False)
            lat.append(r.latency_s)
        else:
            correct.append(cok)
            off.append(True)
            lat.append(cloud_latency(records[u], r.steps[k].decided_at, net))
    return _make(pipe, policy, profile, slo_ms, net, t, q, records, utts, correct, off, lat)


def _oracle(pipe, profile, slo_ms, net, records, utts, rs, local_ok, cloud_ok) -> SloPoint:
    """Offload from the start exactly where it helps: the cloud is on time and the local
    answer is late, or wrong where the cloud's is right."""
    slo_s = slo_ms / 1000
    correct, off, lat = [], [], []
    for u, r, lok, cok in zip(utts, rs, local_ok, cloud_ok, strict=True):
        c_lat = cloud_latency(records[u], 0.0, net)
        go = c_lat <= slo_s and (r.latency_s > slo_s or (cok and not lok))
        correct.append(cok if go else lok)
        off.append(go)
        lat.append(c_lat if go else r.latency_s)
    return _make(pipe, "oracle", profile, slo_ms, net, None, None, records, utts, correct, off, lat)


def _make(pipe, policy, profile, slo_ms, net, t, q, records, utts, correct, off, lat) -> SloPoint:
    on_time = [x <= slo_ms / 1000 for x in lat]
    return SloPoint(
        pipeline=pipe,
        policy=policy,
        profile=profile.name,
        slo_ms=slo_ms,
        network=net.name,
        threshold=t,
        rate_quantile=q,
        offload_rate=float(np.mean(off)),
        accuracy=float(np.mean(correct)),
        on_time_rate=float(np.mean(on_time)),
        bytes_uploaded=int(sum(records[u]["bytes_pcm16"] for u, o in zip(utts, off, strict=True) if o)),
        correct=list(correct),
        offloaded=list(off),
        on_time=on_time,
    )
