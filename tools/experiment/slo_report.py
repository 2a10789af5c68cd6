"""The response-budget headline, its bootstrap interval, CSV, plot and summary lines.

Headline, per device profile and budget (on the main network): the least
offload rate at which a policy answers >= ``MIN_ON_TIME`` of the utterances on
time with intent accuracy >= cloud-only - 0.5 pt; for the stock pipeline the
better of its baselines, for pasu its offramps; the ratio stock / pasu (and
all-off / pasu) with the bootstrap of :mod:`interval` (the same resampling).
"""

from __future__ import annotations

import csv
import gzip
from pathlib import Path

import numpy as np

from pasu.tools.experiment.interval import IntervalOptions, least_rate, percentile_interval, ratio_of
from pasu.tools.experiment.report import TARGET_MARGIN
from pasu.tools.experiment.slo import SloPoint

MIN_ON_TIME = 0.95
# which operating points each side of the headline may pick from
SIDES = {
    "stock": ("stock", ("eou", "capacity")),
    "off": ("off", ("eou", "capacity")),
    "pasu": ("pasu", ("offramp", "offramp_capacity")),
}
CSV_FIELDS = (
    "profile",
    "slo_ms",
    "network",
    "pipeline",
    "policy",
    "threshold",
    "rate_quantile",
    "offload_rate",
    "accuracy",
    "on_time_rate",
    "bytes_uploaded",
)


def write_slo_csv(points: list[SloPoint], path: Path) -> None:
    """Every operating point, one CSV row each (gzip-compressed when ``path`` ends in ``.gz``:
    the runs commit them, ~10x smaller)."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", newline="") as f:
        w = csv.writer(f)
        w.writerow(CSV_FIELDS)
        for p in points:
            w.writerow([_fmt(getattr(p, k)) for k in CSV_FIELDS])


def _fmt(v):
    return f"{v:.6g}" if isinstance(v, float) else v


def _matrices(points: list[SloPoint], side: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pipe, policies = SIDES[side]
    ps = [p for p in points if p.pipeline == pipe and p.policy in policies]
    c, o, t = (np.array([getattr(p, k) for p in ps], dtype=np.float64) for k in ("correct", "offloaded", "on_time"))
    return c, o, t


def slo_headline(points: list[SloPoint], options: IntervalOptions | None = None) -> dict:
    """The summary entry for one profile, budget and network (``points`` filtered to them)."""
    options = options or IntervalOptions()
    cloud = next(p for p in points if p.pipeline == "cloud")
    n = len(cloud.correct)
    one = np.ones((1, n))
    rng = np.random.default_rng(options.seed)
    counts = rng.multinomial(n, np.full(n, 1.0 / n), size=options.resamples).astype(np.float64)
    cloud_ok = np.array([cloud.correct], dtype=np.float64)
    out, boot, chosen = {}, {}, {}
    for side in SIDES:
        c, o, t = _matrices(points, side)
        out[side] = least_rate(c, o, one, (cloud_ok @ one.T)[0] / n - TARGET_MARGIN, t, MIN_ON_TIME)[0]
        boot[side] = least_rate(c, o, counts, (cloud_ok @ counts.T)[0] / n - TARGET_MARGIN, t, MIN_ON_TIME)
        chosen[side] = _chosen(points, side, out[side])
    ratio = ratio_of(np.array([out["stock"]]), np.array([out["pasu"]]))[0]
    vs_off = ratio_of(np.array([out["off"]]), np.array([out["pasu"]]))[0]
    return {
        "slo_ms": cloud.slo_ms,
        "device_profile": cloud.profile,
        "offload_rate_stock": _num(out["stock"]),
        "offload_rate_pasu": _num(out["pasu"]),
        "offload_ratio_slo": _num(ratio),
        "offload_ratio_slo_ci95": percentile_interval(ratio_of(boot["stock"], boot["pasu"])),
        "offload_ratio_slo_vs_off": _num(vs_off),
        "offload_rate_off": _num(out["off"]),
        "on_time_rate_stock": chosen["stock"].on_time_rate if chosen["stock"] else None,
        "on_time_rate_pasu": chosen["pasu"].on_time_rate if chosen["pasu"] else None,
        "accuracy_stock": chosen["stock"].accuracy if chosen["stock"] else None,
        "accuracy_pasu": chosen["pasu"].accuracy if chosen["pasu"] else None,
    }


def _num(x: float) -> float | None:
    """JSON-safe: None for NaN (no operating point reaches the target) and for inf."""
    return float(x) if np.isfinite(x) else None


def _chosen(points: list[SloPoint], side: str, rate: float) -> SloPoint | None:
    if not np.isfinite(rate):
        return None
    pipe, policies = SIDES[side]
    cloud = next(p for p in points if p.pipeline == "cloud")
    target = cloud.accuracy - TARGET_MARGIN
    ok = [
        p
        for p in points
        if p.pipeline == pipe
        and p.policy in policies
        and abs(p.offload_rate - rate) < 1e-12
        and p.accuracy >= target - 1e-12
        and p.on_time_rate >= MIN_ON_TIME - 1e-12
    ]
    return max(ok, key=lambda p: (p.on_time_rate, p.accuracy)) if ok else None


def least_by_policy(points: list[SloPoint]) -> dict[tuple[str, str], float | None]:
    """(pipeline, policy) -> least offload rate reaching the headline's target, for the plot."""
    cloud = next(p for p in points if p.pipeline == "cloud")
    target = cloud.accuracy - TARGET_MARGIN
    out: dict[tuple[str, str], float | None] = {}
    for p in points:
        if p.pipeline == "cloud":
            continue
        key = (p.pipeline, p.policy)
        ok = p.accuracy >= target - 1e-12 and p.on_time_rate >= MIN_ON_TIME - 1e-12
        best = out.get(key)
        if ok and (best is None or p.offload_rate < best):
            out[key] = p.offload_rate
        else:
            out.setdefault(key, None)
    return out


def plot_slo(points: list[SloPoint], network: str, out: Path) -> Path:
    """Offload needed vs budget: a line per pipeline and policy, a panel per profile."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    profiles = list(dict.fromkeys(p.profile for p in points))
    budgets = sorted({p.slo_ms for p in points})
    fig, axes = plt.subplots(1, len(profiles), figsize=(4.2 * len(profiles), 3.8), sharey=True, squeeze=False)
    styles = {"stock": "tab:red", "off": "tab:orange", "pasu": "tab:blue"}
    marks = {"eou": "o--", "capacity": "s-", "offramp": "o--", "offramp_capacity": "s-", "oracle": "x:"}
    for ax, prof in zip(axes[0], profiles, strict=True):
        per = {
            b: least_by_policy([p for p in points if p.profile == prof and p.slo_ms == b and p.network == network])
            for b in budgets
        }
        for key in sorted({k for d in per.values() for k in d}):
            ys = [per[b].get(key) for b in budgets]
            ys = [np.nan if y is None else y for y in ys]
            ax.plot(budgets, ys, marks.get(key[1], "o-"), color=styles[key[0]], label=f"{key[0]} {key[1]}", ms=4)
        ax.set_title(prof)
        ax.set_xlabel("response budget after speech (ms)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("offload rate needed")
    axes[0][-1].legend(fontsize=7, loc="upper right")
    fig.suptitle(
        f"least offload rate with >= 95% on time and accuracy >= cloud-only - 0.5 pt ({network}); "
        "no point: not reached",
        fontsize=9,
    )
    fig.tight_layout()
    path = out / f"slo_offload_vs_budget_{network.replace('/', '_')}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def slo_lines(entries: list[dict], network: str, command: str) -> list[str]:
    """The summary.md section."""

    def f(x, pct=True):
        return "—" if x is None else (f"{100 * x:.1f}%" if pct else f"{x:.2f}x")

    lines = [
        "",
        f"## Response budget ({network})",
        "",
        "Least offload rate with >= 95% on time and accuracy >= cloud-only − 0.5 pt (—: not reached); "
        "ratio: stock's best baseline / pasu's offramps.",
        "",
        "| profile | budget | stock | all-off | pasu | ratio (95% CI) | vs all-off |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for e in entries:
        ci = e["offload_ratio_slo_ci95"]
        ci_s = "" if not ci else " (" + "–".join("∞" if v is None else f"{v:.2f}" for v in ci) + ")"
        lines.append(
            f"| {e['device_profile']} | {e['slo_ms']:g} ms | {f(e['offload_rate_stock'])} | {f(e['offload_rate_off'])} "
            f"| {f(e['offload_rate_pasu'])} | {f(e['offload_ratio_slo'], False)}{ci_s} "
            f"| {f(e['offload_ratio_slo_vs_off'], False)} |"
        )
    lines += ["", "```bash", command, "```"]
    return lines
