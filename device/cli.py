"""`pasu device transcribe|run|train-confidence`: flags → :class:`AgentConfig`, nothing more.

``--runtime onnx --model EXPORT_DIR`` runs a ``pasu export`` on onnxruntime and imports
neither torch nor ESPnet, so it works from ``pip install 'pasu[lite]'``.

A bearer token is read from a file or the environment, never from a flag, so it
does not show in ``ps`` or shell history.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from pasu.cli import flag_values, needs_extra_message
from pasu.device.config import (
    POLICY_KINDS,
    RUNTIMES,
    VAD_BACKENDS,
    AgentConfig,
    CloudClientConfig,
    PolicyConfig,
    VadOptions,
)
from pasu.streaming.options import StreamingOptions
from pasu.tools.commands.common import add_decoding_args, add_model_args, decoding_options, expand_audio_args

log = logging.getLogger(__name__)

TOKEN_ENV = "PASU_DEVICE_BEARER_TOKEN"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("device", help="the device agent: VAD, pilot inference, offramps, selective offload")
    dsub = p.add_subparsers(dest="device_command", metavar="COMMAND", required=True)

    t = dsub.add_parser("transcribe", help="answer every speech segment of audio files (JSON lines)")
    t.add_argument("audio", nargs="+", help="WAV/FLAC files (any rate), or a list file / wav.scp")
    t.add_argument(
        "--realtime", action="store_true", help="feed files at real-time pace (default: as fast as possible)"
    )
    add_agent_args(t)
    t.set_defaults(func=run_transcribe)

    r = dsub.add_parser("run", help="answer a live stream: raw 16 kHz int16 PCM on stdin, or --mic")
    r.add_argument("--mic", action="store_true", help="read the microphone (needs sounddevice and PortAudio)")
    r.add_argument("--mic-device", default=None, help="sounddevice input device (name or index)")
    r.add_argument("--input", default="-", help="raw PCM file or '-' for stdin (default)")
    r.add_argument("--name", default=None, help="the `file` field of the output (default: stdin or mic)")
    add_agent_args(r)
    r.set_defaults(func=run_live)

    c = dsub.add_parser("train-confidence", help="train the offramp's confidence estimator on an ESPnet data dir")
    add_model_args(c)
    add_decoding_args(c)
    c.add_argument(
        "--data",
        required=True,
        type=Path,
        action="append",
        help="ESPnet data dir: wav.scp and text (uttid intent words…); repeat to pool several",
    )
    c.add_argument("--out", required=True, type=Path, help="weights file (metadata goes to OUT.json)")
    c.add_argument("--kind", choices=("logistic", "mlp", "cnn"), default="mlp")
    c.add_argument(
        "--features",
        default="all",
        type=_feature_set,
        help="features the estimator uses: all, scores (the shift-robust per-token scores and "
        "margin: SCORE_FEATURES), or a comma-separated list (default: all)",
    )
    c.add_argument("--hidden", type=int, default=16)
    c.add_argument("--epochs", type=int, default=400)
    c.add_argument("--lr", type=float, default=0.02)
    c.add_argument("--eval-fraction", type=float, default=0.25, help="utterances held out for the report")
    c.add_argument(
        "--label",
        choices=("intent", "intent+text", "cloud"),
        default="intent",
        help="what counts as right: the intent, or the intent and every word; cloud: the device "
        "answer is 'wrong' only where the cloud model gets the intent right and the device "
        "does not (what offloading would gain)",
    )
    c.add_argument(
        "--cloud-model", default=None, help="the cloud model the cloud label compares with (default: the shipped one)"
    )
    c.add_argument("--limit", type=int, default=None, help="first N utterances only")
    c.add_argument("--plot", type=Path, default=None, help="reliability diagram PNG (default: OUT.reliability.png)")
    c.add_argument(
        "--test",
        type=Path,
        default=None,
        help="also score the estimator on this data dir (e.g. test_hard), with its own diagram",
    )
    c.add_argument("--seed", type=int, default=0)
    c.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="keep each data dir's decoded examples (and the cloud's answers) here and reuse them: "
        "decoding is nearly all of a run, so kinds, features, seeds and labels can then be "
        "swept in seconds",
    )
    add_streaming_args(c)
    c.set_defaults(func=run_train)


def add_streaming_args(p: argparse.ArgumentParser) -> None:
    d = StreamingOptions()
    g = p.add_argument_group("pilot inference")
    g.add_argument("--pilot-period", type=float, default=d.pilot_period_s, help="seconds of audio between pilots")
    g.add_argument("--pilot-beam", type=int, default=d.pilot_beam_size)
    g.add_argument("--stock", action="store_true", help="every PASU technique off (buffer, decode at the end)")
    g.add_argument("--chunk-ms", type=int, default=100, help="input chunk size")


def add_agent_args(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    p.add_argument(
        "--runtime",
        choices=RUNTIMES,
        default="torch",
        help="what runs the model: torch (an ESPnet model dir) or onnx (a `pasu export` dir as --model; "
        "no torch needed) (default: %(default)s)",
    )
    add_decoding_args(p)
    add_streaming_args(p)
    v = VadOptions()
    g = p.add_argument_group("voice activity detection")
    g.add_argument("--vad", choices=VAD_BACKENDS, default=v.backend, help="frame classifier (default: %(default)s)")
    g.add_argument(
        "--vad-aggressiveness", type=int, choices=(0, 1, 2, 3), default=v.aggressiveness, help="webrtcvad's mode"
    )
    g.add_argument("--vad-padding-ms", type=int, default=v.padding_ms, help="audio kept before and after speech")
    g.add_argument("--vad-min-silence-ms", type=int, default=v.min_silence_ms, help="silence that ends a segment")
    g.add_argument("--vad-max-segment-s", type=float, default=v.max_segment_s, help="longer segments are cut")
    pc = PolicyConfig()
    g = p.add_argument_group("offramp and offload policy")
    g.add_argument(
        "--policy",
        choices=POLICY_KINDS,
        default=None,
        help="when to offload (default: threshold with --cloud, never without)",
    )
    g.add_argument("--confidence", type=Path, default=None, help="trained estimator (train-confidence); default: prior")
    g.add_argument("--threshold", type=float, default=pc.threshold, help="offload below this confidence")
    g.add_argument(
        "--rejection-threshold",
        type=float,
        default=None,
        help='"not understood" below this final confidence (default: the threshold calibrated '
        "for the estimator; 0 keeps only the no-words rule)",
    )
    g.add_argument("--target-rate", type=float, default=pc.target_rate, help="budget policy: offload rate to keep")
    g.add_argument("--min-pilots", type=int, default=pc.min_pilots, help="earliest pilot that may offload")
    g.add_argument("--slo-ms", type=float, default=pc.slo_ms, help="slo policy: response budget after speech (ms)")
    g.add_argument(
        "--local-rtf",
        type=float,
        default=pc.local_rtf,
        help="slo/latency: the device's compute s per s of audio, fixed (default: measured as it runs)",
    )
    g.add_argument("--no-early", action="store_true", help="decide only at the end of each segment")
    cc = CloudClientConfig()
    g = p.add_argument_group("cloud")
    g.add_argument("--cloud", default=None, help="HOST:PORT or dns:///host:port of the cloud (default: local only)")
    g.add_argument("--deadline", type=float, default=cc.deadline_s, help="seconds per attempt after the segment ends")
    g.add_argument("--total-deadline", type=float, default=cc.total_deadline_s, help="s for all attempts, then local")
    g.add_argument("--attempts", type=int, default=cc.max_attempts)
    g.add_argument("--tls-root-cert", type=Path, default=None, help="CA certificate: use TLS")
    g.add_argument("--tls-client-cert", type=Path, default=None)
    g.add_argument("--tls-client-key", type=Path, default=None)
    g.add_argument("--tls-server-name", default=None)
    g.add_argument("--bearer-token-file", type=Path, default=None, help=f"token file (or ${TOKEN_ENV})")
    g.add_argument("--cloud-nbest", type=int, default=None)
    g = p.add_argument_group("output")
    g.add_argument("--interim", action="store_true", help='also print pilot hypotheses ("interim": true)')
    g.add_argument("--human", action="store_true", help="a readable line per segment instead of JSON")


def streaming_options(args: argparse.Namespace) -> StreamingOptions:
    if args.stock:
        return StreamingOptions.stock()
    return StreamingOptions(pilot_period_s=args.pilot_period, pilot_beam_size=args.pilot_beam)


def read_token(path: Path | None) -> str | None:
    if path is not None:
        lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
        return lines[0] if lines else None
    return os.environ.get(TOKEN_ENV) or None


def agent_config(args: argparse.Namespace, realtime: bool, background: bool) -> AgentConfig:
    kind = args.policy or ("threshold" if args.cloud else "never")
    return AgentConfig(
        vad=VadOptions(
            backend=args.vad, **flag_values(args, "aggressiveness padding_ms min_silence_ms max_segment_s", "vad_")
        ),
        streaming=streaming_options(args).with_(max_segment_s=args.vad_max_segment_s + 1),
        decoding=decoding_options(args),
        policy=PolicyConfig(
            kind=kind, early=not args.no_early, **flag_values(args, "threshold target_rate min_pilots slo_ms local_rtf")
        ),
        cloud=CloudClientConfig(
            target=args.cloud,
            deadline_s=args.deadline,
            total_deadline_s=max(args.total_deadline, args.deadline),
            max_attempts=args.attempts,
            bearer_token=read_token(args.bearer_token_file),
            nbest=args.cloud_nbest,
            **flag_values(args, "root_cert client_cert client_key server_name", "tls_"),
        ),
        realtime=realtime,
        background=background,
        **flag_values(args, "confidence rejection_threshold chunk_ms interim device"),
    )


def _agent(args: argparse.Namespace, realtime: bool, background: bool):
    from pasu.device.agent import DeviceAgent
    from pasu.model_store import resolve_model

    config = agent_config(args, realtime, background)
    if args.runtime == "onnx":
        if args.model is None:
            raise ValueError("--runtime onnx needs --model EXPORT_DIR (a directory written by `pasu export`)")
        return DeviceAgent.from_export(config, Path(args.model))
    return DeviceAgent.from_path(config, resolve_model(args.model, "device"))


def _load_agent(args: argparse.Namespace, realtime: bool, background: bool):
    """The agent, or None after saying on stderr why it cannot start."""
    try:
        return _agent(args, realtime, background)
    except ModuleNotFoundError as e:
        hint = "; or run an exported model: --runtime onnx --model EXPORT_DIR" if args.runtime == "torch" else ""
        message = needs_extra_message(f"pasu device --runtime {args.runtime}", e)
        if message is None:
            raise
        print(message + hint, file=sys.stderr)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
    return None


def run_transcribe(args: argparse.Namespace) -> int:
    from pasu.audio import AudioError
    from pasu.device.output import Writer
    from pasu.device.sources import file_chunks

    agent = _load_agent(args, realtime=args.realtime, background=args.realtime)
    if agent is None:
        return 2
    writer = Writer(human=args.human)
    status = 0
    with agent:
        for path in expand_audio_args(args.audio):
            try:
                chunks = file_chunks(path, agent.config.chunk_ms, agent.config.realtime, agent.rate)
            except AudioError as e:
                writer.write({"file": path, "error": str(e)}) if not args.human else print(f"{path}: {e}")
                status = 1
                continue
            for rec in agent.process(chunks, path):
                writer.write(rec)
    return status


def run_live(args: argparse.Namespace) -> int:
    from pasu.device.output import Writer
    from pasu.device.sources import MicrophoneError, mic_chunks, pcm_chunks

    rate = 16000  # the agent's rate (VAD and models)
    if args.mic:  # fail fast, before the model loads
        device = int(args.mic_device) if args.mic_device and args.mic_device.isdigit() else args.mic_device
        try:
            chunks = mic_chunks(args.chunk_ms, rate, device)
        except MicrophoneError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        name = args.name or "mic"
    else:
        stream = sys.stdin.buffer if args.input == "-" else open(args.input, "rb")  # noqa: SIM115
        chunks = pcm_chunks(stream, args.chunk_ms, rate)
        name = args.name or ("stdin" if args.input == "-" else args.input)
    agent = _load_agent(args, realtime=True, background=True)
    if agent is None:
        return 2
    writer = Writer(human=args.human)
    with agent:
        try:
            for rec in agent.process(chunks, name):
                writer.write(rec)
        except KeyboardInterrupt:
            return 130
    return 0


def _feature_set(text: str) -> tuple[str, ...]:
    from pasu.device.confidence import feature_set

    try:
        return feature_set(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def run_train(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from pasu.model_store import resolve_model
    from pasu.models import load_model
    from pasu.tools.train.confidence import TrainOptions, train

    options = TrainOptions(
        decoding=decoding_options(args),
        streaming=streaming_options(args),
        **flag_values(args, "kind features hidden epochs lr eval_fraction seed label chunk_ms limit"),
    )
    if args.cloud_model and args.label != "cloud":
        print("error: --cloud-model is for --label cloud", file=sys.stderr)
        return 2
    model = load_model(resolve_model(args.model, "device"), args.device)
    cloud = load_model(resolve_model(args.cloud_model, "cloud"), args.device) if args.label == "cloud" else None

    def progress(items):
        return tqdm(items, desc="decoding", unit="utt", file=sys.stderr, disable=not sys.stderr.isatty())

    meta = train(
        model,
        args.data,
        args.out,
        options,
        plot=args.plot,
        progress=progress,
        test_dir=args.test,
        cloud=cloud,
        cache=args.cache,
    )
    ev = meta["metrics"]["eval"]

    def fmt(r: dict) -> str:
        auroc = "n/a (one class)" if r.get("auroc") is None else f"{r['auroc']:.3f}"
        return f"ECE {r['ece']:.3f}  AUROC {auroc}  Brier {r['brier']:.3f}  (n={r['n']}, right={r['positives']})"

    print(f"confidence estimator ({options.kind} on {', '.join(options.features)}) → {args.out} (+ .json)")
    print(f"utterances: train {meta['utterances']['train']}, eval {meta['utterances']['eval']}")
    print(f"eval, every step:  {fmt(ev['all_steps'])}")
    print(f"eval, final step:  {fmt(ev['final_step'])}")
    if ev["pilot_steps"]["n"]:
        print(f"eval, pilot steps: {fmt(ev['pilot_steps'])}")
    print(f"reliability diagram: {meta['reliability_diagram']}")
    last = {"ece": ev["all_steps"]["ece"], "auroc": ev["all_steps"]["auroc"]}
    if "test" in meta:
        t = meta["test"]["metrics"]
        name = Path(meta["test"]["data"]).name
        print(f"{name}, every step: {fmt(t['all_steps'])}")
        print(f"{name}, final step: {fmt(t['final_step'])}")
        print(f"{name} reliability diagram: {meta['test']['reliability_diagram']}")
        last.update(test_ece=t["all_steps"]["ece"], test_auroc=t["all_steps"]["auroc"])
    print(json.dumps(last))
    return 0
