"""`pasu bench cloud`: load a cloud worker with concurrent clients; throughput and latency.

Bounded by construction: a fixed number of requests, a wall-clock cap, and
loopback targets only. With ``--serve-model`` the worker runs in this process
(so dynamic batching can be compared with ``--max-batch-size 1`` on the same
machine in one command each); with ``--reuse compare`` the same Offload
requests run against a worker with decoder reuse off, then on, and the decode
time saved and the agreement of the answers are printed.
"""

from __future__ import annotations

import argparse
import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from pasu.device.config import PolicyConfig
from pasu.tools.bench.load import load_clips, pct, send

log = logging.getLogger(__name__)

LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")


def register_bench(bsub: argparse._SubParsersAction) -> None:
    """Add ``pasu bench cloud`` to the ``bench`` subcommands."""
    from pasu.cloud.cli import add_worker_args

    c = bsub.add_parser("cloud", help="load a cloud worker: throughput, p50/p99, batching and decoder reuse")
    where = c.add_mutually_exclusive_group(required=True)
    where.add_argument("--target", help="HOST:PORT of a running worker (loopback only)")
    where.add_argument(
        "--serve-model",
        metavar="DIR",
        help="start a worker in this process on 127.0.0.1 with this model ('tiny' works)",
    )
    c.add_argument("--concurrency", type=int, default=8, help="concurrent clients (default 8)")
    c.add_argument("--requests", type=int, default=32, help="requests in all (default 32)")
    c.add_argument(
        "--audio",
        nargs="+",
        default=None,
        help="audio files (default: the shipped evaluation subset, shared/resources/eval)",
    )
    c.add_argument(
        "--text",
        type=Path,
        default=None,
        help="ESPnet text file (keys = audio file stems): --reuse compare then scores both "
        "policies against it (default audio: the subset's own text)",
    )
    c.add_argument("--rpc", choices=("recognize", "offload"), default="recognize")
    c.add_argument("--request-beam", type=int, default=None, help="beam_size sent with each request")
    c.add_argument("--timeout", type=float, default=120.0, help="per-request deadline, seconds")
    c.add_argument("--max-wall", type=float, default=900.0, help="stop sending after this many seconds")
    c.add_argument("--token-file", type=Path, default=None, help="bearer token for --target (first line)")
    c.add_argument(
        "--device-model",
        default="same",
        help="offload: model that makes the device n-best ('same' = --serve-model; default)",
    )
    c.add_argument("--device-beam", type=int, default=4, help="offload: device beam size (--device-from final)")
    c.add_argument(
        "--device-from",
        choices=("final", "pilots"),
        default="final",
        help="offload: the device n-best sent is its final one over the whole clip (complete), or, as the "
        "agent sends it, pilot --device-pilot's in the config and the last pilot's as an update (the "
        "device's streaming session, default options)",
    )
    c.add_argument(
        "--device-pilot",
        type=int,
        default=PolicyConfig().min_pilots,
        help="--device-from pilots: the pilot that decides (default: the agent's earliest, min_pilots)",
    )
    c.add_argument("--threads", type=int, default=None, help="torch intra-op threads of an in-process worker")
    c.add_argument("--json-out", type=Path, default=None, help="also write the last line's JSON here")
    add_worker_args(c, serve=False)
    c.set_defaults(func=run_cloud_bench)
    # `--reuse compare` runs both policies; widen the choices add_worker_args set.
    for action in c._actions:
        if action.dest == "reuse":
            action.choices = ("off", "rescore", "seed", "compare")


@dataclass
class CloudBenchResult:
    label: str
    concurrency: int
    requests: int = 0
    errors: int = 0
    wall_s: float = 0.0
    latencies: list[float] = field(default_factory=list)
    decode_s: float = 0.0  # server-reported decode time, summed
    reuse: dict[str, int] = field(default_factory=dict)
    best: dict[int, str] = field(default_factory=dict)  # clip index -> best text
    error_codes: dict[str, int] = field(default_factory=dict)
    mean_batch: float | None = None
    server_busy_s: float | None = None  # in-process worker: batching thread compute time
    server_decode_s: float | None = None  # of which search + rescoring
    server_cpu_s: float | None = None  # busy time in the batching thread's CPU time

    def pct(self, q: float) -> float:
        return pct(self.latencies, q)

    @property
    def throughput(self) -> float:
        return (self.requests - self.errors) / self.wall_s if self.wall_s else 0.0

    def summary(self) -> dict:
        out = {
            "requests": self.requests,
            "errors": self.errors,
            "throughput_rps": round(self.throughput, 3),
            "p50_s": round(self.pct(0.5), 4),
            "p99_s": round(self.pct(0.99), 4),
            "concurrency": self.concurrency,
            "decode_s": round(self.decode_s, 3),
        }
        if self.mean_batch is not None:
            out["mean_batch"] = round(self.mean_batch, 2)
        if self.server_busy_s is not None:
            out["server_busy_s"] = round(self.server_busy_s, 3)
            out["server_decode_s"] = round(self.server_decode_s or 0.0, 3)
        if self.reuse:
            n = sum(self.reuse.values())
            out["reuse"] = dict(self.reuse)
            out["short_circuited"] = round((n - self.reuse.get("full_decode", 0)) / n, 3) if n else 0.0
        if self.error_codes:
            out["error_codes"] = dict(self.error_codes)
        return out


def _check_loopback(target: str) -> None:
    host = target.rsplit(":", 1)[0]
    if host not in LOOPBACK:
        raise SystemExit(f"--target must be a loopback address (127.0.0.1, localhost, ::1), got {host!r}")


def clip_paths(files: list[str] | None) -> list[str]:
    """The audio to send: ``--audio``, else the shipped evaluation subset."""
    from pasu.resources import eval_audio

    return list(files) if files else [str(p) for p in eval_audio()]


def clip_references(paths: list[str], text: Path | None, default_audio: bool) -> dict[int, str]:
    """Reference lines by clip index: from ``text`` (ESPnet ``text``, keyed by file stem),
    or, for the default audio, the shipped evaluation subset's own ``text``."""
    from pasu.audio import read_scp
    from pasu.resources import EVAL_DIR

    if text is None and default_audio and (EVAL_DIR / "text").is_file():
        text = EVAL_DIR / "text"
    if text is None:
        return {}
    refs = read_scp(text)
    return {i: refs[Path(p).stem] for i, p in enumerate(paths) if Path(p).stem in refs}


def accuracy(best: dict[int, str], refs: dict[int, str]) -> dict[str, float | int]:
    """Intent accuracy and WER of the answers that have a reference (pasu eval's scoring)."""
    from pasu.tools.scoring import summary

    return summary({k: v for k, v in best.items() if k in refs}, refs)


def device_results(clips, model_dir: str, beam: int, source: str = "final", pilot: int = PolicyConfig().min_pilots):
    """The device's n-best for each clip, as the agent sends it (untimed; confidence 0.5:
    no estimator runs here).

    ``source="pilots"``: a (config, update) pair per clip from the device's streaming
    session: pilot ``pilot``'s n-best (the earliest an offramp decides) and the last
    pilot's, both incomplete, as an agent that offloaded at that pilot sends them."""
    import torch

    from pasu.decoding.options import DecodingOptions
    from pasu.decoding.recognizer import Recognizer
    from pasu.model_store import resolve_model
    from pasu.models import load_model
    from pasu.streaming.session import StreamingSession
    from pasu.wire import device_result

    model = load_model(resolve_model(model_dir, "device"))

    def wire(nbest, complete: bool = True):
        return device_result(nbest, model.name, model.version, model.token_list, 0.5, complete=complete)

    if source == "final":
        rec = Recognizer(model, DecodingOptions(beam_size=beam, nbest=min(beam, 3)))
        return [wire(rec.recognize([a])[0]) for a in clips]
    rec = Recognizer(model, DecodingOptions())
    out = []
    with torch.inference_mode():
        for a in clips:
            session = StreamingSession(rec)
            for i in range(0, len(a), 1600):
                session.feed(a[i : i + 1600])
            pilots = [p.nbest for p in session.pilots if p.nbest]
            if not pilots:
                out.append(None)
                continue
            first = pilots[min(pilot, len(pilots)) - 1]
            out.append((wire(first, False), wire(pilots[-1], False) if len(pilots) > 1 else None))
    return out


def run_load(
    target: str, clips, args: argparse.Namespace, label: str, devices=None, metadata: tuple = ()
) -> CloudBenchResult:
    """Send ``args.requests`` requests from ``args.concurrency`` threads; collect latencies."""
    import grpc

    from pasu.cloud import client as C
    from pasu.cloud.reuse import OUTCOME_NAMES
    from pasu.slu import join_intent

    res = CloudBenchResult(label=label, concurrency=args.concurrency)
    lock = threading.Lock()
    counter = iter(range(args.requests))
    run_id = f"{label}-{time.time_ns()}"
    deadline = time.monotonic() + args.max_wall
    ch = C.channel(target)
    s = C.stub(ch)

    def one(i: int) -> None:
        clip = i % len(clips)
        rid = f"{run_id}-{i}"
        t = time.monotonic()
        try:
            device = devices[clip] if devices else None
            r = send(s, args.rpc, rid, clips[clip], device, args.request_beam, args.timeout, metadata)
            reuse = OUTCOME_NAMES.get(r.decoder_reuse, str(r.decoder_reuse)) if args.rpc == "offload" else None
            result = r.result
            dt = time.monotonic() - t
            with lock:
                res.latencies.append(dt)
                res.decode_s += result.timing.decode_duration.ToNanoseconds() / 1e9
                # the wire carries the intent apart from the transcript; pasu eval scores "intent words..."
                top = result.hypotheses[0] if result.hypotheses else None
                res.best[clip] = join_intent(top.intent, top.text) if top else ""
                if reuse:
                    res.reuse[reuse] = res.reuse.get(reuse, 0) + 1
        except grpc.RpcError as e:
            with lock:
                res.errors += 1
                res.error_codes[e.code().name] = res.error_codes.get(e.code().name, 0) + 1

    def client() -> None:
        while time.monotonic() < deadline:
            with lock:
                i = next(counter, None)
                if i is None:
                    return
                res.requests += 1
            one(i)

    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=args.concurrency) as pool:
        for f in [pool.submit(client) for _ in range(args.concurrency)]:
            f.result()
    res.wall_s = time.monotonic() - t0
    ch.close()
    return res


def _worker_config(args: argparse.Namespace, reuse: str):
    from pasu.cloud.config import WorkerConfig

    return WorkerConfig(
        port=0,
        max_batch_size=args.max_batch_size,
        max_batch_wait_ms=args.max_batch_wait_ms,
        max_queue=max(args.max_queue, args.concurrency),
        default_beam_size=args.beam_size,
        max_beam_size=max(args.max_beam_size, args.beam_size),
        default_nbest=args.nbest,
        ctc_weight=args.ctc_weight,
        reuse=reuse,
        reuse_margin=args.reuse_margin,
        reuse_tolerance=args.reuse_tolerance,
        idempotency_cache_size=0,
        max_workers=max(16, 2 * args.concurrency),
    )


def serve_and_load(model, clips, args, reuse: str, devices=None) -> CloudBenchResult:
    """Start an in-process worker, warm it up, run the load, stop it."""
    from pasu.cloud.server import CloudWorker

    worker = CloudWorker(_worker_config(args, reuse), model)
    port = worker.start(wait=True, timeout=600)
    target = f"127.0.0.1:{port}"
    try:
        warm = argparse.Namespace(**{**vars(args), "requests": 1, "concurrency": 1})
        run_load(target, clips, warm, "warmup", devices)
        bt = worker.batcher
        batches0, searched0, busy0, dec0, cpu0 = bt.batches, bt.searched, bt.busy_s, bt.decode_busy_s, bt.busy_cpu_s
        res = run_load(target, clips, args, f"batch{args.max_batch_size}-reuse-{reuse}", devices)
        b = worker.batcher.batches - batches0
        res.mean_batch = (bt.searched - searched0) / b if b else None
        res.server_busy_s, res.server_decode_s = bt.busy_s - busy0, bt.decode_busy_s - dec0
        res.server_cpu_s = bt.busy_cpu_s - cpu0
    finally:
        worker.stop(grace=5)
    return res


def format_rows(rows: list[CloudBenchResult]) -> str:
    head = (
        f"{'run':<28} {'conc':>5} {'reqs':>5} {'err':>4} {'rps':>7} {'p50 s':>7} {'p99 s':>7} "
        f"{'batch':>6} {'busy s':>7} {'search s':>9} {'reused':>7}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        s = r.summary()
        batch = f"{r.mean_batch:.1f}" if r.mean_batch else "-"
        reused = f"{s['short_circuited']:.0%}" if "short_circuited" in s else "-"
        busy = f"{r.server_busy_s:.2f}" if r.server_busy_s is not None else "-"
        search = f"{r.server_decode_s:.2f}" if r.server_decode_s is not None else "-"
        lines.append(
            f"{r.label:<28} {r.concurrency:>5} {r.requests:>5} {r.errors:>4} {r.throughput:>7.2f} "
            f"{r.pct(0.5):>7.3f} {r.pct(0.99):>7.3f} {batch:>6} {busy:>7} {search:>9} {reused:>7}"
        )
    return "\n".join(lines)


def compare_reuse(rows: list[CloudBenchResult], refs: dict[int, str]) -> dict:
    """Each reuse policy against ``off`` (the first row): server compute per request, search
    time, answers that changed, and intent accuracy/WER against ``refs`` where given."""
    off = rows[0]
    acc_off = accuracy(off.best, refs) if refs else None
    out: dict = {
        "search_s_off": round(off.server_decode_s or 0.0, 3),
        "busy_s_off": round(off.server_busy_s or 0.0, 3),
        "cpu_ms_per_request_off": round(1000 * (off.server_cpu_s or 0.0) / max(off.requests, 1), 1),
        "throughput_rps_off": round(off.throughput, 3),
    }
    if acc_off:
        out.update(intent_acc_off=acc_off["intent_acc"], wer_off=acc_off["wer"], scored=acc_off["utterances"])
    for on in rows[1:]:
        p = on.label.rsplit("-", 1)[-1]
        common = [k for k in off.best if k in on.best]
        agree = sum(off.best[k] == on.best[k] for k in common)
        d_off, d_on = off.server_decode_s or 0.0, on.server_decode_s or 0.0
        cpu_off, cpu_on = off.server_cpu_s or 0.0, on.server_cpu_s or 0.0
        out.update(
            {
                f"search_s_{p}": round(d_on, 3),
                f"busy_s_{p}": round(on.server_busy_s or 0.0, 3),
                f"cpu_ms_per_request_{p}": round(1000 * cpu_on / max(on.requests, 1), 1),
                # server compute per request without reuse over with it (CPU time; > 1: reuse saves)
                f"compute_ratio_{p}": round(cpu_off / cpu_on, 3) if cpu_on else None,
                f"search_time_saved_{p}": round(1 - d_on / d_off, 3) if d_off else None,
                f"best_text_agreement_{p}": round(agree / len(common), 3) if common else None,
                f"reused_{p}": on.summary().get("short_circuited", 0.0),
            }
        )
        if acc_off:
            acc_on = accuracy(on.best, refs)
            out.update(
                {
                    f"intent_acc_{p}": acc_on["intent_acc"],
                    f"wer_{p}": acc_on["wer"],
                    # what reuse costs, in points of intent accuracy (negative: it helped)
                    f"accuracy_cost_points_{p}": round(100 * (acc_off["intent_acc"] - acc_on["intent_acc"]), 2),
                }
            )
        print(
            f"reuse {p}: server CPU {1000 * cpu_off / max(off.requests, 1):.0f} -> "
            f"{1000 * cpu_on / max(on.requests, 1):.0f} ms per request; search {d_off:.2f} s -> {d_on:.2f} s; "
            f"reused {out[f'reused_{p}']:.0%}; best text agrees on {agree}/{len(common)} clips"
            + (
                f"; intent accuracy {100 * out['intent_acc_off']:.1f}% -> {100 * out[f'intent_acc_{p}']:.1f}%"
                if acc_off
                else ""
            )
        )
    return out


def run_cloud_bench(args: argparse.Namespace) -> int:
    if args.concurrency < 1 or args.requests < 1:
        raise SystemExit("--concurrency and --requests must be >= 1")
    paths = clip_paths(args.audio)
    clips = load_clips(paths)
    metadata: tuple = ()
    if args.target:
        _check_loopback(args.target)
        if args.reuse == "compare":
            raise SystemExit("--reuse compare needs --serve-model (it restarts the worker)")
        if args.token_file:
            metadata = (("authorization", f"Bearer {args.token_file.read_text().splitlines()[0].strip()}"),)
        devices = None
        if args.rpc == "offload" and args.device_model != "same":
            devices = device_results(clips, args.device_model, args.device_beam, args.device_from, args.device_pilot)
        rows = [run_load(args.target, clips, args, "remote", devices, metadata)]
    else:
        import torch

        from pasu.model_store import resolve_model
        from pasu.models import load_model

        if args.threads:
            torch.set_num_threads(args.threads)
        model = load_model(resolve_model(args.serve_model, "cloud"))
        devices = None
        if args.rpc == "offload":
            dev = args.serve_model if args.device_model == "same" else args.device_model
            devices = device_results(clips, dev, args.device_beam, args.device_from, args.device_pilot)
        policies = ("off", "rescore", "seed") if args.reuse == "compare" else (args.reuse,)
        rows = [serve_and_load(model, clips, args, p, devices) for p in policies]
    print(format_rows(rows))
    summary = rows[-1].summary()
    if len(rows) > 1:
        summary["reuse_compare"] = compare_reuse(rows, clip_references(paths, args.text, default_audio=not args.audio))
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary), flush=True)
    return 0 if all(r.errors == 0 for r in rows) else 1
