"""`pasu decode FILES…`: whole-file recognition with the shared decoder, as JSON lines."""

from __future__ import annotations

import argparse
import json

from pasu.tools.commands.common import add_decoding_args, add_model_args, decoding_options, expand_audio_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("decode", help="decode audio files with the shared decoder (JSON lines)")
    add_model_args(p)
    add_decoding_args(p)
    p.add_argument("audio", nargs="+", help="WAV/FLAC files, or a list file / wav.scp")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pasu.audio import AudioError, read_audio
    from pasu.decoding.recognizer import Recognizer
    from pasu.model_store import resolve_model
    from pasu.models import load_model

    rec = Recognizer(load_model(resolve_model(args.model), args.device), decoding_options(args))
    status = 0
    for path in expand_audio_args(args.audio):
        try:
            speech = read_audio(path, rec.model.sample_rate)
        except AudioError as e:
            print(json.dumps({"file": path, "error": str(e)}), flush=True)
            status = 1
            continue
        nbest = rec.recognize([speech])[0]
        best = nbest[0] if nbest else None
        print(
            json.dumps(
                {
                    "file": path,
                    "text": best.text if best else "",
                    "score": best.score if best else None,
                    "nbest": [
                        {"text": h.text, "token_ids": h.token_ids, "score": h.score, "scores": h.scores} for h in nbest
                    ],
                }
            ),
            flush=True,
        )
    return status
