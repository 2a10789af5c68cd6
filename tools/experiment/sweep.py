"""Replay offload policies over cached per-utterance results (no recomputation).

Time is measured from the end of speech. An offload decided at time ``t_d``
(on the device's simulated clock) uploads the audio heard so far, then streams
the rest as it is spoken; the cloud computes once the segment is complete, and
its answer arrives after one round trip:

    cloud answer = max(end of speech, t_d + bytes / bandwidth) + RTT + cloud compute
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from pasu.device.config import PolicyConfig
from pasu.tools import scoring
from pasu.tools.experiment.collect import nbest_from_json

PCM_BYTES_PER_S = 32000  # 16 kHz, 16-bit mono: what the device uploads


@dataclass(frozen=True)
class Network:
    rtt_s: float = 0.1
    mbit_s: float = 10.0

    @property
    def bytes_per_s(self) -> float:
        return self.mbit_s * 1e6 / 8

    @property
    def name(self) -> str:
        return f"{int(self.rtt_s * 1000)}ms/{self.mbit_s:g}Mbit"


@dataclass
class Point:
    policy: str
    network: str
    threshold: float | None
    offload_rate: float
    accuracy: float
    wer: float
    latency_p50_s: float
    latency_p90_s: float
    bytes_uploaded: int
    # per utterance, in the records' order (not in the CSV): what the plots and the
    # bootstrap of the headline (interval.py) recompute from
    latencies: list[float]
    correct: list[bool]
    offloaded: list[bool]


class Scorer:
    """Correctness of a hypothesis against the run's references (:mod:`pasu.tools.scoring`):
    the intent when every reference carries one, else the exact words."""

    def __init__(self, refs: dict[str, str]) -> None:
        self.refs = refs
        self.intents = scoring.labelled(refs.values())

    def correct(self, utt: str, text: str) -> bool:
        return scoring.correct(text, self.refs.get(utt, ""), self.intents)

    def wer(self, pairs: list[tuple[str, str]]) -> float:
        return scoring.wer([t for _, t in pairs], [self.refs.get(u, "") for u, _ in pairs], self.intents)


def cloud_latency(rec: dict, decided_at: float, net: Network) -> float:
    """End of speech -> cloud answer, for an offload decided at ``decided_at`` (seconds after speech start)."""
    eos = rec["device"]["eos_s"]
    upload_done = max(eos, decided_at + rec["bytes_pcm16"] / net.bytes_per_s)
    return upload_done + net.rtt_s + rec["cloud"]["compute_s"] - eos


def _point(policy, net, thr, records, scorer, choices) -> Point:
    """``choices``: utt -> (text, latency, bytes, offloaded)."""
    utts = list(records)
    lat = [choices[u][1] for u in utts]
    correct = [scorer.correct(u, choices[u][0]) for u in utts]
    offloaded = [bool(choices[u][3]) for u in utts]
    return Point(
        policy=policy,
        network=net.name,
        threshold=thr,
        offload_rate=float(np.mean(offloaded)),
        accuracy=float(np.mean(correct)),
        wer=scorer.wer([(u, choices[u][0]) for u in utts]),
        latency_p50_s=float(np.percentile(lat, 50)),
        latency_p90_s=float(np.percentile(lat, 90)),
        bytes_uploaded=int(sum(choices[u][2] for u in utts)),
        latencies=lat,
        correct=correct,
        offloaded=offloaded,
    )


def _local(rec: dict) -> tuple[str, float, int, bool]:
    final = rec["device"]["final"]["nbest"]
    return (final[0]["text"] if final else "", rec["device"]["latency_s"], 0, False)


def _cloud_at(rec: dict, decided_at: float, net: Network) -> tuple[str, float, int, bool]:
    return (rec["cloud"]["text"], cloud_latency(rec, decided_at, net), rec["bytes_pcm16"], True)


def pilot_confidences(records: dict[str, dict], estimator) -> dict[str, list[tuple[float, float, int]]]:
    """Per utterance: (decision time, confidence, step) at each pilot (step 1, 2, ...), then
    at the final pass (step 0)."""
    from pasu.device.confidence import FeatureTracker
    from pasu.streaming.session import FinalResult, PilotRecord

    out = {}
    for utt, rec in records.items():
        tracker = FeatureTracker()
        steps = []
        for k, p in enumerate(rec["device"]["pilots"], start=1):
            tracker.pilot(PilotRecord(p["audio_s"], 0, nbest_from_json(p["nbest"]), 0, 0.0))
            steps.append((p["done_s"], estimator.score(tracker), k))
        f = rec["device"]["final"]
        tracker.final(FinalResult(nbest_from_json(f["nbest"]), f["features"], [], 0, 0, 0.0, 0.0))
        steps.append((rec["device"]["eos_s"] + rec["device"]["latency_s"], estimator.score(tracker), 0))
        out[utt] = steps
    return out


def thresholds(values: list[float], n: int = 41) -> list[float]:
    qs = np.quantile(np.array(values, dtype=np.float64), np.linspace(0, 1, n))
    return sorted(set([float("-inf")] + [float(q) + 1e-12 for q in qs] + [float("inf")]))


def sweep(
    records: dict[str, dict],
    refs: dict[str, str],
    estimator,
    networks: list[Network],
    seed: int = 0,
    progress: Callable | None = None,
    min_pilots: int = PolicyConfig().min_pilots,
) -> list[Point]:
    """Every policy's operating points; pasu's offramps decide as the device agent does:
    at each pilot from ``min_pilots`` on, then at the end."""
    scorer = Scorer(refs)
    utts = list(records)
    conf = pilot_confidences(records, estimator)
    local_median = float(np.median([records[u]["device"]["latency_s"] for u in utts]))
    points: list[Point] = []
    for net in networks:
        points.append(_point("local", net, None, records, scorer, {u: _local(records[u]) for u in utts}))
        points.append(_point("cloud", net, None, records, scorer, {u: _cloud_at(records[u], 0.0, net) for u in utts}))
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(utts))
        for rate in np.linspace(0, 1, 21):
            chosen = {utts[i] for i in order[: int(round(rate * len(utts)))]}
            choices = {
                u: _cloud_at(records[u], records[u]["device"]["eos_s"], net) if u in chosen else _local(records[u])
                for u in utts
            }
            points.append(_point("random", net, float(rate), records, scorer, choices))
        # end-of-utterance baseline: full local (stock) decode, then decide from its own score
        stock = {u: records[u]["stock"]["score_per_token"] for u in utts}
        for t in thresholds(list(stock.values())):
            choices = {}
            for u in utts:
                r = records[u]
                if stock[u] < t:
                    eou = r["device"]["eos_s"] + r["stock"]["latency_s"]
                    text, lat, b, _ = _cloud_at(r, eou, net)
                    choices[u] = (text, lat, b, True)
                else:
                    choices[u] = (r["stock"]["text"], r["stock"]["latency_s"], 0, False)
            points.append(_point("baseline_eou", net, t, records, scorer, choices))
        # pasu offramps: the first step whose confidence is below t offloads, then and there
        all_conf = [c for steps in conf.values() for _, c, k in steps if _acts(k, min_pilots)]
        for t in thresholds(all_conf):
            points.append(
                _point("pasu_offramp", net, t, records, scorer, _offramp(records, conf, t, net, min_pilots=min_pilots))
            )
            points.append(
                _point(
                    "pasu_latency",
                    net,
                    t,
                    records,
                    scorer,
                    _offramp(records, conf, t, net, local_median=local_median, min_pilots=min_pilots),
                )
            )
        if progress:
            progress()
    return points


def _acts(step: int, min_pilots: int) -> bool:
    """Whether the offramp decides at this step: the final pass (0), or a pilot from ``min_pilots`` on."""
    return step == 0 or step >= min_pilots


def _offramp(records, conf, t, net, local_median: float | None = None, min_pilots: int = 1):
    """Offload at the first step below ``t`` (pilots from ``min_pilots`` on, then the final
    pass); with ``local_median``, only where the cloud is expected to be faster."""
    choices = {}
    for u, steps in conf.items():
        r = records[u]
        choice = _local(r)
        for decided_at, c, k in steps:
            if c >= t or not _acts(k, min_pilots):
                continue
            if local_median is not None:
                expected_cloud = cloud_latency(r, decided_at, net)
                if expected_cloud > local_median + max(0.0, decided_at - r["device"]["eos_s"]):
                    continue
            choice = _cloud_at(r, decided_at, net)
            break
        choices[u] = choice
    return choices
