"""Outputs of the offload experiment: points.csv, plots, summary.md and summary.json."""

from __future__ import annotations

import csv
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from pasu.tools.experiment.sweep import Point

PER_UTTERANCE = ("latencies", "correct", "offloaded")  # Point fields kept out of the CSV
POLICIES = ("local", "cloud", "random", "baseline_eou", "pasu_offramp", "pasu_latency")


def write_csv(points: list[Point], path: Path) -> None:
    fields = [k for k in asdict(points[0]) if k not in PER_UTTERANCE]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        for p in points:
            w.writerow(asdict(p))


def min_rate_reaching(points: list[Point], target: float) -> Point | None:
    """The operating point with the lowest offload rate whose accuracy reaches ``target``."""
    ok = [p for p in points if p.accuracy >= target - 1e-12]
    return min(ok, key=lambda p: (p.offload_rate, -p.accuracy)) if ok else None


TARGET_MARGIN = 0.005  # the headline's target: the cloud-only accuracy minus 0.5 points


def target_accuracy(points: list[Point], network: str) -> float:
    return next(p for p in points if p.policy == "cloud" and p.network == network).accuracy - TARGET_MARGIN


def headline(points: list[Point], network: str) -> dict:
    at = [p for p in points if p.network == network]
    cloud = next(p for p in at if p.policy == "cloud")
    local = next(p for p in at if p.policy == "local")
    target = target_accuracy(points, network)
    base = min_rate_reaching([p for p in at if p.policy == "baseline_eou"], target)
    pasu = min_rate_reaching([p for p in at if p.policy == "pasu_offramp"], target)
    ratio = None  # undefined when pasu needs no offloading at all (JSON has no infinity)
    if base and pasu and pasu.offload_rate > 0:
        ratio = base.offload_rate / pasu.offload_rate
    return {
        "network": network,
        "target_accuracy": round(target, 4),
        "cloud_accuracy": cloud.accuracy,
        "local_accuracy": local.accuracy,
        "offload_rate_baseline": base.offload_rate if base else None,
        "offload_rate_pasu": pasu.offload_rate if pasu else None,
        "offload_ratio": ratio,
        "latency_p50_baseline_s": base.latency_p50_s if base else None,
        "latency_p50_pasu_s": pasu.latency_p50_s if pasu else None,
        "latency_p50_local_s": local.latency_p50_s,
        "latency_p50_cloud_s": cloud.latency_p50_s,
    }


def plot(points: list[Point], network: str, out: Path, reliability: tuple[np.ndarray, np.ndarray] | None) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    at = [p for p in points if p.network == network]
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for pol, style in (("random", ":"), ("baseline_eou", "--"), ("pasu_offramp", "-"), ("pasu_latency", "-.")):
        ps = sorted((p for p in at if p.policy == pol), key=lambda p: p.offload_rate)
        ax.plot([p.offload_rate for p in ps], [100 * p.accuracy for p in ps], style, marker=".", label=pol)
    for pol, marker in (("local", "s"), ("cloud", "^")):
        p = next(p for p in at if p.policy == pol)
        ax.plot([p.offload_rate], [100 * p.accuracy], marker, markersize=9, label=pol)
    cloud = next(p for p in at if p.policy == "cloud")
    ax.axhline(100 * cloud.accuracy - 0.5, color="grey", lw=0.8, label="cloud − 0.5 pt")
    ax.set_xlabel("offload rate")
    ax.set_ylabel("accuracy (%)")
    files.append(
        _save(fig, ax, f"accuracy vs offload rate ({network})", out / f"accuracy_vs_offload_{_slug(network)}.png")
    )

    h = headline(points, network)
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for pol in ("local", "cloud", "baseline_eou", "pasu_offramp"):
        if pol in ("baseline_eou", "pasu_offramp"):
            rate = h["offload_rate_baseline" if pol == "baseline_eou" else "offload_rate_pasu"]
            cand = [p for p in at if p.policy == pol and rate is not None and p.offload_rate == rate]
            if not cand:
                continue
            p = cand[0]
        else:
            p = next(p for p in at if p.policy == pol)
        lat = np.sort(np.array(p.latencies))
        ax.step(lat, np.arange(1, len(lat) + 1) / len(lat), where="post", label=f"{pol} (offload {p.offload_rate:.2f})")
    ax.set_xlabel("end of speech → answer (s)")
    ax.set_ylabel("fraction of utterances")
    files.append(
        _save(fig, ax, f"latency CDF at the target accuracy ({network})", out / f"latency_cdf_{_slug(network)}.png")
    )

    if reliability is not None:
        from pasu.device.calibration import reliability_diagram  # the one train-confidence draws

        conf, correct = reliability
        files.append(
            reliability_diagram(conf, correct, out / "reliability.png", title="confidence reliability (final step)")
        )
    return files


def _save(fig, ax, title: str, path: Path) -> Path:
    """Title, legend and grid as every experiment plot has them; write the PNG, free the figure."""
    import matplotlib.pyplot as plt

    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _slug(s: str) -> str:
    return s.replace("/", "_").replace(".", "p")


def write_summary(
    points: list[Point],
    networks: list[str],
    out: Path,
    command: str,
    plots: list[Path],
    gain: dict | None = None,
    interval: dict | None = None,
) -> dict:
    """``gain``: :func:`pasu.tools.experiment.gain.gain_report` (the oracle rate, the gain per bin);
    ``interval``: :func:`pasu.tools.experiment.interval.headline_interval` on the first network."""
    heads = [headline(points, n) for n in networks]
    main = heads[0]
    summary = {**main, "networks": heads, "utterances": None, "command": command}
    if interval is not None:
        summary.update(interval)
    if gain is not None:
        summary.update(gain)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    lines = [
        "# Offload experiment",
        "",
        f"Command: `{command}`",
        "",
        "Headline: offload rate needed to reach the cloud-only accuracy minus 0.5 points, "
        "end-of-utterance baseline divided by pasu's offramps.",
        "",
        "| network | target acc | baseline offload | pasu offload | ratio | p50 latency baseline | p50 latency pasu |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for h in heads:
        fmt = lambda v, f="{:.3f}": "—" if v is None else f.format(v)  # noqa: E731
        lines.append(
            f"| {h['network']} | {fmt(h['target_accuracy'])} | {fmt(h['offload_rate_baseline'])} | "
            f"{fmt(h['offload_rate_pasu'])} | {fmt(h['offload_ratio'], '{:.2f}x')} | "
            f"{fmt(h['latency_p50_baseline_s'], '{:.3f} s')} | {fmt(h['latency_p50_pasu_s'], '{:.3f} s')} |"
        )
    lines += ["", f"Local only: accuracy {main['local_accuracy']:.3f}; cloud only: {main['cloud_accuracy']:.3f}.", ""]
    if interval is not None:
        lines += _interval_lines(interval, main["network"])
    if gain is not None:
        lines += _gain_lines(gain)
    lines += [f"![{p.stem}]({p.name})" for p in plots]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    return summary


def _interval_lines(interval: dict, network: str) -> list[str]:
    """Markdown: the headline's bootstrap intervals (keys as :func:`headline_interval` names them)."""

    def span(key: str, fmt: str = "{:.3f}") -> str:
        v = interval.get(key)
        if v is None:
            return "—"
        return "[" + ", ".join("∞" if x is None else fmt.format(x) for x in v) + "]"

    share = interval.get("offload_ratio_share_reaching_2x")
    below = interval.get("pasu_below_baseline_share")
    pct = lambda v: "—" if v is None else f"{100 * v:.1f}%"  # noqa: E731
    return [
        f"How far the headline could move ({network}; {interval['bootstrap_resamples']} bootstrap resamples "
        "of the utterances, 95% percentile intervals): baseline offload "
        f"{span('offload_rate_baseline_ci95')}, pasu offload {span('offload_rate_pasu_ci95')}, ratio "
        f"{span('offload_ratio_ci95', '{:.2f}x')}; the ratio reaches 2x in {pct(share)} of the resamples, "
        f"and pasu needs less offloading than the baseline in {pct(below)}.",
        "",
    ]


def _gain_lines(gain: dict) -> list[str]:
    """Markdown: the oracle rate and, per signal, the cloud's net gain in each confidence bin."""
    oracle = gain["oracle_offload_rate"]
    lines = [
        "## Where the cloud's gain lies",
        "",
        f"The cloud is right where the device (pasu's final answer) is wrong on {gain['cloud_wins']} "
        f"utterances and wrong where it is right on {gain['cloud_losses']}. Offloading only its wins "
        "reaches the target at an offload rate of "
        + ("— (they fall short)" if oracle is None else f"**{oracle:.3f}** (the oracle: no policy needs less)")
        + ". Net gain (cloud wins minus losses, utterances) per bin of each signal, least confident "
        "bin first:",
        "",
    ]
    bins = max(len(v) for v in gain["gain_by_bin"].values())
    lines += [
        "| signal | " + " | ".join(f"bin {k + 1}" for k in range(bins)) + " | AUROC | AUROC, cloud's wins |",
        "|---|" + "---:|" * (bins + 2),
    ]
    for name, by_bin in gain["gain_by_bin"].items():
        cells = [
            f"{b['net_gain']:+d} ({100 * b['local_accuracy']:.0f}→{100 * b['cloud_accuracy']:.0f}%)" for b in by_bin
        ]
        for a in (gain["auroc"][name], gain.get("auroc_cloud_wins", {}).get(name)):
            cells.append("—" if a is None else f"{a:.3f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines + [
        "",
        "(cell: net gain, and the device's → the cloud's accuracy in the bin; AUROC: how well "
        "the signal ranks the device's own failures, 0.5 = not at all; AUROC, cloud's wins: how "
        "well it ranks the failures the cloud fixes, the only ones offloading pays for.)",
        "",
    ]
