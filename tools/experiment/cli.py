"""`pasu experiment offload`: the paper's offload-rate figure, on any ESPnet data dir."""

from __future__ import annotations

import argparse
import json
import shlex
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("experiment", help="offload-rate experiments")
    esub = p.add_subparsers(dest="experiment_command", metavar="EXPERIMENT", required=True)
    o = esub.add_parser("offload", help="accuracy vs offload rate and latency, pasu vs baselines")
    o.add_argument("--data", required=True, help="ESPnet data dir (wav.scp, text)")
    o.add_argument("--out", required=True, help="output dir (cache, CSV, plots, summary)")
    o.add_argument("--device-model", default=None, help="device model (default: the shipped one)")
    o.add_argument("--cloud-model", default=None, help="cloud model, run in-process (default: the shipped one)")
    o.add_argument("--cloud", default=None, metavar="HOST:PORT", help="use a running cloud worker instead (loopback)")
    o.add_argument("--confidence", default=None, help="confidence estimator (default: the one shipped with the model)")
    o.add_argument("--limit", type=int, default=None, help="at most N utterances")
    o.add_argument("--rtt-ms", type=float, nargs="+", default=[20.0, 100.0, 300.0])
    o.add_argument("--mbit", type=float, nargs="+", default=[1.0, 10.0])
    o.add_argument(
        "--min-pilots",
        type=int,
        default=None,
        help="earliest pilot at which pasu's offramps may offload (default: the agent's, PolicyConfig.min_pilots)",
    )
    o.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads (default: torch's choice); 1 for runs side by side, which "
        "would otherwise oversubscribe the cores and inflate every latency",
    )
    o.add_argument("--seed", type=int, default=0, help="random offloading's draw and the bootstrap's")
    o.add_argument(
        "--slo-ms",
        type=float,
        action="append",
        default=None,
        help="response budget after the end of speech (repeatable): adds the capacity framing "
        "(three device pipelines, budget-aware policies; slo_points.csv.gz, summary.json's 'slo')",
    )
    o.add_argument(
        "--device-profile",
        action="append",
        default=None,
        metavar="NAME|FACTOR",
        help="replay the device's compute as on this device (repeatable; names: "
        "pasu.tools.experiment.profiles.PROFILES; default with --slo-ms: every named one)",
    )
    o.add_argument(
        "--slo-only", action="store_true", help="with --slo-ms: only the budget framing (summary, CSV, plot)"
    )
    o.add_argument(
        "--resamples",
        type=int,
        default=1000,  # IntervalOptions' (not imported: keeps the CLI light)
        help="bootstrap resamples for the headline's intervals (default: %(default)s)",
    )
    o.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import numpy as np

    from pasu.audio import read_scp, read_wav_scp
    from pasu.device.confidence import estimator_for, nothing_lost
    from pasu.device.config import PolicyConfig
    from pasu.model_store import resolve_model
    from pasu.models import load_model
    from pasu.tools.experiment.collect import CollectOptions, collect
    from pasu.tools.experiment.gain import gain_report
    from pasu.tools.experiment.interval import IntervalOptions, headline_interval
    from pasu.tools.experiment.report import plot, target_accuracy, write_csv, write_summary
    from pasu.tools.experiment.sweep import Network, Scorer, pilot_confidences, sweep

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    data, out = Path(args.data), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    wav = read_wav_scp(data)
    refs = read_scp(data / "text") if (data / "text").is_file() else {}
    if args.limit:
        wav = dict(list(wav.items())[: args.limit])
    device = load_model(resolve_model(args.device_model, "device"))
    cloud = None if args.cloud else load_model(resolve_model(args.cloud_model, "cloud"))
    records = collect(device, cloud, wav, out, CollectOptions(), cloud_target=args.cloud)
    estimator = estimator_for(device.files.root, args.confidence or None)  # default: shipped with the model
    networks = [Network(rtt_s=r / 1000, mbit_s=m) for r in args.rtt_ms for m in args.mbit]
    min_pilots = args.min_pilots if args.min_pilots is not None else PolicyConfig().min_pilots
    command = "pasu " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    main_net = next((n for n in networks if abs(n.rtt_s - 0.1) < 1e-9 and n.mbit_s == 10.0), networks[0])
    slo = None
    if args.slo_ms:
        from pasu.tools.experiment.slo_run import run_slo

        slo = run_slo(records, refs, estimator, args, networks, main_net, min_pilots, out, command)
        if args.slo_only:
            summary = {"command": command, "utterances": len(records), "slo_network": main_net.name, "slo": slo}
            (out / "summary.json").write_text(json.dumps(summary, indent=2))
            print((out / "summary.md").read_text())
            return 0
    elif args.slo_only or args.device_profile:
        raise SystemExit("--slo-only and --device-profile need --slo-ms")
    points = sweep(records, refs, estimator, networks, seed=args.seed, min_pilots=min_pilots)
    write_csv(points, out / "points.csv")
    conf = pilot_confidences(records, estimator)
    scorer = Scorer(refs)
    finals = np.array([conf[u][-1][1] for u in records])
    right = {
        u: scorer.correct(u, r["device"]["final"]["nbest"][0]["text"] if r["device"]["final"]["nbest"] else "")
        for u, r in records.items()
    }
    if (estimator.meta.get("options") or {}).get("label") == "cloud":  # it predicts "the cloud would not fix it"
        right = {u: nothing_lost(ok, scorer.correct(u, records[u]["cloud"]["text"])) for u, ok in right.items()}
    correct = np.array([right[u] for u in records], float)
    plots = []
    for n in [main_net] + [n for n in networks if n is not main_net]:
        plots += plot(points, n.name, out, (finals, correct) if n is main_net else None)
    gain = gain_report(records, scorer.correct, conf, target_accuracy(points, main_net.name), min_pilots)
    interval = headline_interval(points, main_net.name, IntervalOptions(resamples=args.resamples, seed=args.seed))
    summary = write_summary(
        points, [main_net.name] + [n.name for n in networks if n is not main_net], out, command, plots, gain, interval
    )
    summary["utterances"] = len(records)
    if slo is not None:  # the budget framing beside the confidence one (summary.md has both)
        summary["slo_network"], summary["slo"] = main_net.name, slo
        slo_md = (out / "slo.md").read_text()
        (out / "summary.md").write_text((out / "summary.md").read_text() + slo_md)
        (out / "slo.md").unlink()
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print((out / "summary.md").read_text())
    print(json.dumps({k: summary[k] for k in summary if k not in ("networks", "gain_by_bin")}), flush=True)
    return 0
