"""`pasu demo`: the main job, end to end on the embedded default model.

Until the device agent and the cloud worker land, the demo decodes the bundled
example recordings with the shared decoder and shows what it heard and how
long it took, next to the reference transcript.
"""

from __future__ import annotations

import argparse
import time


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="decode the bundled example recordings (the main job)")
    p.add_argument("--model", default=None, help="model directory (default: the shipped device model)")
    p.add_argument("--limit", type=int, default=6, help="how many example clips (default: 6)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pasu.audio import read_audio, read_scp
    from pasu.decoding.recognizer import Recognizer
    from pasu.model_store import default_model_dir, resolve_model
    from pasu.models import load_model
    from pasu.resources import AUDIO_DIR, example_audio

    path = resolve_model(args.model)
    model = load_model(path)
    if args.model is None and default_model_dir("device") is None:
        print("note: no trained default model in this checkout yet; decoding with a tiny "
              "untrained model, so the text is noise — the pipeline is what is shown.")
    rec = Recognizer(model)
    refs = read_scp(AUDIO_DIR / "text")
    print(f"model {model.name} from {path}; beam {rec.options.beam_size}, ctc_weight {rec.options.ctc_weight}")
    for f in example_audio(args.limit):
        speech = read_audio(f, model.sample_rate)
        t0 = time.perf_counter()
        best = rec.recognize([speech])[0][0]
        ms = 1000 * (time.perf_counter() - t0)
        print(f"{f.name}  ({len(speech) / model.sample_rate:.1f} s audio, decoded in {ms:.0f} ms)")
        print(f"  heard: {best.text}")
        print(f"  said:  {refs.get(f.stem, '?')}")
    return 0
