"""The offload experiment end to end on a handful of utterances (tiny models, real audio)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest

from pasu.resources import AUDIO_DIR


@pytest.fixture()
def data_dir(tmp_path, audio_files):
    d = tmp_path / "data"
    d.mkdir()
    texts = dict(line.split(" ", 1) for line in (AUDIO_DIR / "text").read_text().splitlines() if line.strip())
    files = audio_files[:4]
    (d / "wav.scp").write_text("".join(f"{f.stem} {f}\n" for f in files))
    # SLURP-style references: intent label first
    (d / "text").write_text("".join(f"{f.stem} general_quirky {texts[f.stem]}\n" for f in files))
    return d


@pytest.mark.slow
def test_offload_experiment_end_to_end(tiny_model_dirs, data_dir, tmp_path):
    out = tmp_path / "exp"
    cmd = [
        sys.executable,
        "-m",
        "pasu.cli",
        "experiment",
        "offload",
        "--data",
        str(data_dir),
        "--out",
        str(out),
        "--device-model",
        str(tiny_model_dirs["late"]),
        "--cloud-model",
        str(tiny_model_dirs["conformer"]),
        "--rtt-ms",
        "100",
        "--mbit",
        "10",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=os.environ.copy())
    assert r.returncode == 0, r.stderr[-2000:]
    last = json.loads(r.stdout.strip().splitlines()[-1])
    for key in (
        "offload_rate_baseline",
        "offload_rate_pasu",
        "offload_ratio",
        "target_accuracy",
        "latency_p50_baseline_s",
        "latency_p50_pasu_s",
    ):
        assert key in last
    rows = list(csv.DictReader(open(out / "points.csv")))
    by_policy = {}
    for row in rows:
        by_policy.setdefault(row["policy"], []).append(row)
    assert set(by_policy) == {"local", "cloud", "random", "baseline_eou", "pasu_offramp", "pasu_latency"}
    assert float(by_policy["cloud"][0]["offload_rate"]) == 1.0
    assert float(by_policy["local"][0]["offload_rate"]) == 0.0
    assert int(by_policy["local"][0]["bytes_uploaded"]) == 0
    assert int(by_policy["cloud"][0]["bytes_uploaded"]) > 0
    for pol in ("baseline_eou", "pasu_offramp", "random"):
        rates = [float(r["offload_rate"]) for r in by_policy[pol]]
        assert min(rates) == 0.0 and max(rates) == 1.0  # the sweeps span never..always
        for r in by_policy[pol]:
            if float(r["offload_rate"]) == 1.0 and pol != "random":
                assert float(r["accuracy"]) == float(by_policy["cloud"][0]["accuracy"])
    for png in ("accuracy_vs_offload_100ms_10Mbit.png", "latency_cdf_100ms_10Mbit.png", "reliability.png"):
        assert (out / png).stat().st_size > 1000
    assert (out / "summary.md").read_text().startswith("# Offload experiment")
    # the cloud's gain: per signal the bins cover every utterance and add up to wins minus losses;
    # the oracle offloads only the cloud's wins, so no policy reaches the target with less
    summary = json.loads((out / "summary.json").read_text())
    for name in ("pasu final confidence", "pasu least confident pilot"):
        bins = summary["gain_by_bin"][name]
        assert sum(b["n"] for b in bins) == 4
        assert sum(b["net_gain"] for b in bins) == summary["cloud_wins"] - summary["cloud_losses"]
    if summary["oracle_offload_rate"] is not None:
        assert summary["oracle_offload_rate"] <= summary["cloud_wins"] / 4
        for key in ("offload_rate_baseline", "offload_rate_pasu"):
            assert summary[key] is None or summary["oracle_offload_rate"] <= summary[key] + 1e-9
    assert set(summary["auroc"]) == set(summary["gain_by_bin"])
    for key in ("offload_rate_baseline_ci95", "offload_rate_pasu_ci95"):  # the headline's bootstrap
        lo, hi = summary[key]
        assert 0.0 <= lo <= hi <= 1.0
    assert summary["bootstrap_resamples"] == 1000
    assert "Where the cloud's gain lies" in (out / "summary.md").read_text()

    # resumable: a second run reuses the cache (no new device/cloud work) and gives the same summary
    def stamps(side: str) -> dict:
        return {p: p.stat().st_mtime_ns for p in (out / "cache" / side).glob("*.json") if p.name != "key.json"}

    device_stamps, cloud_stamps = stamps("device"), stamps("cloud")
    assert len(device_stamps) == 4 and len(cloud_stamps) == 4
    r2 = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert json.loads(r2.stdout.strip().splitlines()[-1])["offload_rate_pasu"] == last["offload_rate_pasu"]
    assert stamps("device") == device_stamps and stamps("cloud") == cloud_stamps
    # another device model: its side starts afresh instead of mixing two models' answers; the
    # cloud's answers do not depend on the device and stay
    swapped = [a if a != str(tiny_model_dirs["late"]) else str(tiny_model_dirs["conformer"]) for a in cmd]
    r3 = subprocess.run(swapped, capture_output=True, text=True, timeout=900)
    assert r3.returncode == 0, r3.stderr[-2000:]
    assert "starting it afresh" in r3.stderr
    assert all(p.stat().st_mtime_ns != t for p, t in device_stamps.items())
    assert stamps("cloud") == cloud_stamps


def test_oracle_offloads_only_the_clouds_wins():
    from pasu.tools.experiment.gain import gain_by_bins, oracle_offload_rate

    local = {"a": True, "b": False, "c": False, "d": False}
    cloud = {"a": False, "b": True, "c": True, "d": False}
    assert oracle_offload_rate(local, cloud, target=0.25) == 0.0  # already there
    assert oracle_offload_rate(local, cloud, target=0.5) == 0.25  # one win: b or c
    assert oracle_offload_rate(local, cloud, target=0.75) == 0.5
    assert oracle_offload_rate(local, cloud, target=1.0) is None  # d: nobody gets it
    bins = gain_by_bins({"a": 0.9, "b": 0.1, "c": 0.2, "d": 0.5}, local, cloud, bins=2)
    assert [b["net_gain"] for b in bins] == [2, -1] and [b["n"] for b in bins] == [2, 2]


def test_gain_report_scores_signals_on_the_clouds_wins_apart_from_device_failures():
    """A signal that puts the cloud's wins first but trusts a hopeless utterance (both wrong)
    ranks the wins perfectly and the device's failures only partly."""
    from pasu.tools.experiment.gain import gain_report

    truth = {"a": "x_on", "b": "x_off", "c": "x_up", "d": "x_down"}
    device = {"a": "x_on", "b": "x_on", "c": "x_on", "d": "x_on"}  # right on a only
    cloud = {"a": "x_on", "b": "x_off", "c": "x_on", "d": "x_on"}  # fixes b; c and d hopeless
    conf = {"a": 0.8, "b": 0.1, "c": 0.3, "d": 0.9}
    records = {
        u: {
            "device": {"final": {"nbest": [{"text": device[u]}]}},
            "stock": {"text": device[u], "score_per_token": conf[u]},
            "cloud": {"text": cloud[u]},
        }
        for u in truth
    }
    g = gain_report(
        records, lambda u, text: text == truth[u], {u: [(0.0, c, 0)] for u, c in conf.items()}, target=0.5, min_pilots=1
    )
    assert g["cloud_wins"] == 1 and g["cloud_losses"] == 0
    for name in g["gain_by_bin"]:
        assert g["auroc_cloud_wins"][name] == 1.0
        assert g["auroc"][name] == 2 / 3  # a (right) above b and c, below d


def _points(policy: str, offload_sets: list[set[int]], device_ok: list[bool], cloud_ok: list[bool]) -> list:
    """Operating points of ``policy``, one per set of offloaded utterances (indices)."""
    from pasu.tools.experiment.sweep import Point

    n = len(device_ok)
    out = []
    for k, chosen in enumerate(offload_sets):
        correct = [cloud_ok[i] if i in chosen else device_ok[i] for i in range(n)]
        out.append(
            Point(
                policy,
                "net",
                float(k),
                len(chosen) / n,
                sum(correct) / n,
                0.0,
                0.0,
                0.0,
                0,
                [0.0] * n,
                correct,
                [i in chosen for i in range(n)],
            )
        )
    return out


def test_headline_interval_resamples_the_headline_itself():
    """The bootstrap recomputes the headline: on the utterances as they are it gives the headline's
    rates, and a policy that offloads exactly the device's failures first stays ahead on every resample."""
    import numpy as np

    from pasu.tools.experiment.interval import IntervalOptions, headline_interval, rates_needed, ratio_of
    from pasu.tools.experiment.report import headline

    device_ok = [True] * 5 + [False] * 5
    cloud_ok = [True] * 10
    growing = lambda order: [set(order[:k]) for k in range(11)]  # noqa: E731
    points = (
        _points("cloud", [set(range(10))], device_ok, cloud_ok)
        + _points("local", [set()], device_ok, cloud_ok)
        + _points("baseline_eou", growing(list(range(10))), device_ok, cloud_ok)  # the right ones first
        + _points("pasu_offramp", growing(list(range(5, 10)) + list(range(5))), device_ok, cloud_ok)
    )
    h = headline(points, "net")
    assert (h["offload_rate_baseline"], h["offload_rate_pasu"]) == (1.0, 0.5)
    base, pasu = rates_needed(points, "net", np.ones(10))
    assert (base[0], pasu[0]) == (1.0, 0.5)
    rng = np.random.default_rng(1)
    counts = rng.multinomial(10, np.full(10, 0.1), size=200)
    base, pasu = rates_needed(points, "net", counts)
    ratio = ratio_of(base, pasu)
    assert np.all(pasu <= base) and np.all(ratio[~np.isnan(ratio)] >= 1.0)
    iv = headline_interval(points, "net", IntervalOptions(resamples=200))
    lo, hi = iv["offload_rate_pasu_ci95"]
    assert 0.0 <= lo <= 0.5 <= hi <= 1.0
    assert iv["offload_ratio_ci95"][0] >= 1.0 and iv["bootstrap_resamples"] == 200
    assert 0.0 < iv["offload_ratio_share_reaching_2x"] <= 1.0
    assert iv["pasu_below_baseline_share"] > 0.9  # equal only where a resample misses one side's utterances
