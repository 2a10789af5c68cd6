"""`pasu demo`: the main job, end to end — a cloud worker and a device agent on this machine.

Starts a cloud worker on 127.0.0.1 with the default cloud model, runs the
device agent (default device model, default offload policy) on the bundled
example recordings and on a few harder clips from the shipped evaluation
subset, and prints for each segment the intent, the text, where it was decided
and why, and the end-of-speech latency, next to what was said. The example
clips are easy for the device; the harder ones (``HARD_CLIPS``, chosen by
measurement: docs/experiments/README.md) show the hybrid — an offload at a
pilot, answered by the cloud.
"""

from __future__ import annotations

import argparse

# From shared/resources/eval/test_hard: the device answers them wrong with a pilot confidence
# under the default threshold from the second pilot on, and the cloud answers them right.
HARD_CLIPS = ("festival_cmu_us_slt_arctic_hts-test_hard-000070", "flite_kal16-test_hard-000179")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="device + cloud on this machine, on the bundled recordings (the main job)")
    p.add_argument("--device-model", default=None, help="device model (default: the shipped one)")
    p.add_argument("--cloud-model", default=None, help="cloud model (default: the shipped one)")
    p.add_argument("--policy", default="threshold", help="offload policy (default: threshold)")
    p.add_argument("--limit", type=int, default=6, help="how many example clips (default: 6)")
    p.add_argument(
        "--hard", type=int, default=len(HARD_CLIPS), help="how many harder clips from the eval subset (default: all)"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pasu.audio import read_scp
    from pasu.cloud.config import WorkerConfig
    from pasu.cloud.server import CloudWorker
    from pasu.device.agent import DeviceAgent
    from pasu.device.config import AgentConfig, CloudClientConfig, PolicyConfig
    from pasu.device.sources import file_chunks
    from pasu.model_store import default_model_dir, resolve_model
    from pasu.resources import AUDIO_DIR, EVAL_DIR, example_audio
    from pasu.slu import split_intent

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
    clips = list(example_audio(args.limit))
    hard = [EVAL_DIR / "audio" / f"{u}.flac" for u in HARD_CLIPS[: args.hard]]
    clips += [f for f in hard if f.is_file()]
    if (EVAL_DIR / "text").is_file():  # "intent words…", as the model writes it: the words are what was said
        refs.update({k: split_intent(v)[1] for k, v in read_scp(EVAL_DIR / "text").items()})
    try:
        with DeviceAgent.from_path(config.with_(interim=True), device_dir) as agent:
            print(f"device agent: model {device_dir}, policy {args.policy}\n")
            for f in clips:
                pilots: list[dict] = []
                for rec in agent.process(file_chunks(str(f), config.chunk_ms, False, agent.rate), f.name):
                    if rec.get("interim"):
                        pilots.append(rec)
                        continue
                    where = rec["source"] + (" (fallback)" if rec.get("fallback") else "")
                    print(
                        f"{f.name} [{rec['segment']['start']:.2f}-{rec['segment']['end']:.2f} s] "
                        f"decided on {where}, {rec['latency_ms']:.0f} ms after speech, "
                        f"device confidence {rec.get('device_confidence', rec['confidence']):.2f}"
                    )
                    print(f"  why: {why(rec, pilots, config.policy)}")
                    pilots = []
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


def why(rec: dict, pilots: list[dict], policy) -> str:
    """Where and why the segment was decided, from the agent's record and its pilots' reports."""
    if not rec["offloaded"]:
        return f"kept on the device: confidence never under the threshold {policy.threshold:.2f} ({policy.kind})"
    stage, reason = rec.get("offload_stage"), rec.get("offload_reason")
    if reason == "low_confidence" and stage == "pilot":
        # the pilot that decided: the first from min_pilots on under the threshold
        hit = next((p for p in pilots[policy.min_pilots - 1 :] if p["confidence"] < policy.threshold), None)
        if hit is not None:
            k = pilots.index(hit) + 1
            return (
                f"offloaded at pilot {k}, {hit['audio_s']:.2f} s into the speech, while the user still spoke: "
                f"device confidence {hit['confidence']:.2f} < threshold {policy.threshold:.2f} "
                f"(it heard {hit['text']!r})"
            )
    if reason == "low_confidence":
        return f"offloaded after the local final pass: confidence under the threshold {policy.threshold:.2f}"
    if reason == "latency":
        return f"offloaded at the {stage}: the device was expected to answer too late"
    return f"offloaded ({reason}, at the {stage})"
