"""`pasu experiment offload --slo-ms`: the response-budget grid, written next to the rest."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from pasu.tools.experiment.collect import CollectOptions
from pasu.tools.experiment.interval import IntervalOptions
from pasu.tools.experiment.profiles import PROFILES, device_profile
from pasu.tools.experiment.slo import sweep_slo
from pasu.tools.experiment.slo_report import plot_slo, slo_headline, slo_lines, write_slo_csv
from pasu.tools.experiment.sweep import Network

log = logging.getLogger(__name__)
MD_PROFILE = "xavier"  # summary.md lists every budget for this one (the rest: summary.json)
MD_ALSO = (("xavier-gemm", 300.0),)


def run_slo(
    records: dict[str, dict],
    refs: dict[str, str],
    estimator,
    args: argparse.Namespace,
    networks: list[Network],
    main_net: Network,
    min_pilots: int,
    out: Path,
    command: str,
) -> list[dict]:
    """Sweep every profile x budget x network; write ``slo_points.csv.gz`` (main network),
    ``slo_networks.json`` (the headline entries on every network), the plot and ``summary.md``
    (or ``slo.md`` when the confidence framing's summary follows); return the summary
    entries of the main network (one per profile and budget)."""
    profiles = [device_profile(s) for s in (args.device_profile or list(PROFILES))]
    budgets = sorted(set(args.slo_ms))
    points = []
    for prof in profiles:
        log.info("response budget: profile %s (x%g)", prof.name, prof.factor)
        points += sweep_slo(records, refs, estimator, prof, budgets, networks, CollectOptions().chunk_s, min_pilots)
    write_slo_csv([p for p in points if p.network == main_net.name], out / "slo_points.csv.gz")  # the others: JSON
    plot = plot_slo(points, main_net.name, out)
    options = IntervalOptions(resamples=args.resamples, seed=args.seed)
    by_net = {
        net.name: [
            slo_headline(
                [p for p in points if p.profile == prof.name and p.slo_ms == b and p.network == net.name], options
            )
            for prof in profiles
            for b in budgets
        ]
        for net in networks
    }
    (out / "slo_networks.json").write_text(json.dumps(by_net, indent=1))
    entries = by_net[main_net.name]
    shown = [e for e in entries if e["device_profile"] == MD_PROFILE or (e["device_profile"], e["slo_ms"]) in MD_ALSO]
    lines = slo_lines(shown or entries, main_net.name, command)
    lines.insert(
        4,
        f"Every profile: `summary.json` (`slo`); networks: `slo_networks.json`; points: `slo_points.csv.gz`; "
        f"[plot]({plot.name}).",
    )
    name = "summary.md" if args.slo_only else "slo.md"
    head = [f"# Offload under a response budget: `{args.data}` ({len(records)} utterances)"] if args.slo_only else []
    (out / name).write_text("\n".join(head + lines) + "\n")
    return entries
