"""`pasu cloud serve`: a thin layer from flags to :class:`WorkerConfig` and a running worker.

Bearer tokens are read from a file or the environment, never from flags, so
they do not show in ``ps`` or shell history.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
from pathlib import Path

from pasu.cli import flag_values
from pasu.cloud.config import REUSE_POLICIES, WorkerConfig

log = logging.getLogger(__name__)

TOKENS_ENV = "PASU_CLOUD_BEARER_TOKENS"  # comma-separated


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cloud", help="the cloud worker (gRPC SpeechService)")
    csub = p.add_subparsers(dest="cloud_command", metavar="COMMAND", required=True)
    s = csub.add_parser("serve", help="serve SpeechService (Offload, Recognize, StreamingRecognize)")
    add_worker_args(s)
    s.add_argument("--text-logs", action="store_true", help="human-readable logs instead of JSON lines")
    s.set_defaults(func=run_serve)


def add_worker_args(p: argparse.ArgumentParser, serve: bool = True) -> None:
    """Flags for every WorkerConfig field (the bench reuses the batching/reuse ones)."""
    d = WorkerConfig()
    if serve:
        p.add_argument(
            "--model",
            default=None,
            help="ESPnet model directory, or 'tiny[:branchformer]' (default: the shipped cloud model)",
        )
        p.add_argument("--device", default=d.device, help="torch device (default: cpu)")
        p.add_argument("--host", default=d.host, help=f"address to bind (default: {d.host})")
        p.add_argument("--port", type=int, default=d.port, help=f"gRPC port (default: {d.port}; 0: any)")
        p.add_argument("--metrics-port", type=int, default=None, help="Prometheus /metrics port (default: none)")
    g = p.add_argument_group("batching")
    g.add_argument("--max-batch-size", type=int, default=d.max_batch_size)
    g.add_argument("--max-batch-wait-ms", type=float, default=d.max_batch_wait_ms)
    g.add_argument("--max-queue", type=int, default=d.max_queue)
    g = p.add_argument_group("decoding")
    g.add_argument("--beam-size", type=int, default=d.default_beam_size, help="default beam")
    g.add_argument("--max-beam-size", type=int, default=d.max_beam_size)
    g.add_argument("--nbest", type=int, default=d.default_nbest, help="default n-best")
    g.add_argument("--ctc-weight", type=float, default=d.ctc_weight)
    g.add_argument("--lm-weight", type=float, default=d.lm_weight, help="LM shallow fusion (needs the model's LM)")
    g.add_argument(
        "--reuse",
        choices=REUSE_POLICIES,
        default=d.reuse,
        help="Offload decoder reuse: rescore the device's complete n-best, seed the search with "
        "the device's latest hypothesis as far as this model confirms it, or off (always search)",
    )
    g.add_argument("--reuse-margin", type=float, default=d.reuse_margin)
    g.add_argument(
        "--reuse-tolerance",
        type=float,
        default=d.reuse_tolerance,
        help="seed: nats a device token may trail this model's own pick by and still be kept",
    )
    g.add_argument(
        "--rejection-threshold",
        type=float,
        default=None,
        help="results whose answer score is below this say understood=false (default: the "
        "threshold calibrated beside the model, rejection.json)",
    )
    if not serve:
        return
    g = p.add_argument_group("limits")
    g.add_argument("--max-message-bytes", type=int, default=d.max_message_bytes)
    g.add_argument("--max-audio-seconds", type=float, default=d.max_audio_seconds)
    g.add_argument(
        "--sample-rates",
        default=",".join(map(str, d.allowed_sample_rates)),
        help="allowed sample rates, comma-separated",
    )
    g.add_argument("--idempotency-window", type=float, default=d.idempotency_window_s, help="seconds")
    g.add_argument("--idempotency-cache-size", type=int, default=d.idempotency_cache_size)
    g = p.add_argument_group("security")
    g.add_argument("--tls-cert", type=Path, default=None)
    g.add_argument("--tls-key", type=Path, default=None)
    g.add_argument("--tls-client-ca", type=Path, default=None, help="require client certificates (mTLS)")
    g.add_argument(
        "--bearer-token-file",
        type=Path,
        default=None,
        help=f"accepted bearer tokens, one a line (or ${TOKENS_ENV}, comma-separated)",
    )
    g = p.add_argument_group("lifecycle")
    g.add_argument("--grace", type=float, default=d.grace_s, help="seconds in-flight calls get on shutdown")
    g.add_argument("--drain", type=float, default=d.drain_s, help="seconds NOT_SERVING before refusing calls")
    g.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads (default: torch's, one per core; on a busy host 1 is far faster)",
    )


def read_tokens(path: Path | None) -> tuple[str, ...]:
    tokens: list[str] = []
    if path is not None:
        tokens += [line.strip() for line in path.read_text().splitlines() if line.strip()]
    tokens += [t.strip() for t in os.environ.get(TOKENS_ENV, "").split(",") if t.strip()]
    return tuple(tokens)


def config_from_args(args: argparse.Namespace) -> WorkerConfig:
    return WorkerConfig(
        **flag_values(
            args,
            "host port metrics_port device max_batch_size max_batch_wait_ms max_queue max_message_bytes "
            "max_audio_seconds ctc_weight lm_weight reuse reuse_margin reuse_tolerance rejection_threshold "
            "idempotency_cache_size tls_cert tls_key tls_client_ca",
        ),
        allowed_sample_rates=tuple(int(r) for r in args.sample_rates.split(",") if r.strip()),
        default_beam_size=args.beam_size,
        max_beam_size=max(args.max_beam_size, args.beam_size),
        default_nbest=args.nbest,
        max_nbest=max(WorkerConfig().max_nbest, args.nbest),
        idempotency_window_s=args.idempotency_window,
        bearer_tokens=read_tokens(args.bearer_token_file),
        grace_s=args.grace,
        drain_s=args.drain,
    )


def run_serve(args: argparse.Namespace) -> int:
    from pasu.cloud.logs import use_json_logs
    from pasu.cloud.server import CloudWorker
    from pasu.model_store import resolve_model

    if not args.text_logs:
        use_json_logs(logging.INFO)
    else:
        logging.getLogger().setLevel(logging.INFO)
    try:
        config = config_from_args(args)
    except ValueError as e:
        log.error("invalid configuration: %s", e)
        return 2
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)
    worker = CloudWorker(config, resolve_model(args.model, "cloud"))
    stop = threading.Event()

    def on_signal(signum, _frame) -> None:
        log.info("signal received", extra={"signal": signal.Signals(signum).name})
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    worker.start()
    print(f"pasu cloud worker listening on {config.host}:{worker.port}", flush=True)
    while not stop.wait(0.5):
        if worker.load_error is not None:
            worker.stop(grace=0)
            return 1
    worker.stop()
    return 0
