"""`pasu demo`: the main job, end to end — a cloud worker and a device agent on this machine.

Starts a cloud worker on 127.0.0.1 with the default cloud model, runs the
device agent (default device model, default offload policy) on the bundled
example recordings, and prints for each segment the intent, the text, where
it was decided and the end-of-speech latency, next to what was said.
"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="device + cloud on this machine, on the bundled recordings (the main job)")
    p.add_argument("--device-model", default=None, help="device model (default: the shipped one)")
    p.add_argument("--cloud-model", default=None, help="cloud model (default: the shipped one)")
    p.add_argument("--policy", default="threshold", help="offload policy (default: threshold)")
    p.add_argument("--limit", type=int, default=6, help="how many example clips (default: 6)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pasu.audio import read_scp
    from pasu.cloud.config import WorkerConfig
    from pasu.cloud.server import CloudWorker
    from pasu.device.agent import DeviceAgent
    from pasu.device.config import AgentConfig, CloudClientConfig, PolicyConfig
    from pasu.device.sources import file_chunks
    from pasu.model_store import default_model_dir, resolve_model
    from pasu.resources import AUDIO_DIR, example_audio

    trained = default_model_dir("device") is not None and default_model_dir("cloud") is not None
    device_dir = resolve_model(args.device_model or (None if trained else "tiny:late"), "device")
    cloud_dir = resolve_model(args.cloud_model or (None if trained else "tiny:conformer"), "cloud")
    if not trained and not (args.device_model and args.cloud_model):
        print(
            "note: no trained default models in this checkout yet; using tiny untrained models, so the "
            "text is noise — what is shown is the pipeline: VAD, pilots, offramp, offload, fallback.\n"
        )
    worker = CloudWorker(WorkerConfig(host="127.0.0.1", port=0, grace_s=2.0), cloud_dir)
    port = worker.start(wait=True, timeout=300)
    print(f"cloud worker: 127.0.0.1:{port}, model {cloud_dir}")
    config = AgentConfig(policy=PolicyConfig(kind=args.policy), cloud=CloudClientConfig(target=f"127.0.0.1:{port}"))
    refs = read_scp(AUDIO_DIR / "text")
    try:
        with DeviceAgent.from_path(config, device_dir) as agent:
            print(f"device agent: model {device_dir}, policy {args.policy}\n")
            for f in example_audio(args.limit):
                for rec in agent.process(file_chunks(str(f), config.chunk_ms, False, agent.rate), f.name):
                    if rec.get("interim"):
                        continue
                    where = rec["source"] + (" (fallback)" if rec.get("fallback") else "")
                    print(
                        f"{f.name} [{rec['segment']['start']:.2f}-{rec['segment']['end']:.2f} s] "
                        f"decided on {where}, {rec['latency_ms']:.0f} ms after speech, "
                        f"device confidence {rec.get('device_confidence', rec['confidence']):.2f}"
                    )
                    if rec.get("understood", True):
                        print(f"  intent: {rec.get('intent') or '-'}   text: {rec['text']}")
                    else:  # noise or no command: say so, and show the guess it did not act on
                        print(
                            f"  not understood ({rec.get('reject_reason')}); best guess: "
                            f"{rec.get('best_intent') or '-'}   text: {rec['text']}"
                        )
                    print(f"  said:   {refs.get(f.stem, '?')}")
    finally:
        worker.stop(grace=2.0)
    return 0
