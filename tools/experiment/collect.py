"""Run the device and the cloud once per utterance and cache what every policy needs.

The sweep (``sweep.py``) then replays policies and thresholds from the cache
without recomputing. Per utterance we keep three device pipelines — pasu's
streaming session with every technique on (each pilot's n-best and when it
finished on the simulated clock, the final n-best and its latency), the same
session with every technique off (pasu's decoder after speech) and the stock
end-of-utterance decode (ESPnet's Speech2Text on the device model) — each with
its compute per chunk and after speech, so that ``profiles.py`` can replay them
on a slower device; and the cloud model's answer and compute time. Compute is
the calling thread's CPU time (``time.thread_time``: right with one torch
thread, and not inflated by other jobs on a shared machine). One JSON file per utterance and side, so an interrupted run
resumes: ``cache/device/`` (the streaming run and the stock decode) and
``cache/cloud/`` (the cloud's answer), each with a ``key.json`` naming the model
(a digest of its weights) and options its records came from. A run with other
models or options starts that side's cache afresh instead of mixing answers of
two model versions — and a new cloud model re-decodes only the cloud's side.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pasu.audio import read_audio
from pasu.decoding import DecodingOptions, Recognizer
from pasu.decoding.recognizer import NBestEntry
from pasu.models import LoadedModel
from pasu.slu import join_intent
from pasu.streaming import TECHNIQUES, StreamingOptions, StreamingSession
from pasu.tools.reference import espnet_nbest, espnet_speech2text

log = logging.getLogger(__name__)

RECORD_VERSION = 2  # 2: per-chunk compute, the all-off pipeline, CPU-time clock
CLOCK = time.thread_time


@dataclass(frozen=True)
class CollectOptions:
    chunk_s: float = 0.16
    decoding: DecodingOptions = DecodingOptions(nbest=2)
    streaming: StreamingOptions = StreamingOptions()


def _entry(e: NBestEntry) -> dict:
    return {"text": e.text, "token_ids": e.token_ids, "score": e.score, "scores": e.scores}


def nbest_from_json(items: list[dict]) -> list[NBestEntry]:
    return [
        NBestEntry(
            text=i["text"],
            tokens=[],
            token_ids=list(i["token_ids"]),
            score=i["score"],
            scores=dict(i["scores"]),
            yseq=[],
        )
        for i in items
    ]


def device_stream(rec: Recognizer, options: CollectOptions, audio: np.ndarray, streaming=None) -> dict:
    """A pasu session on a simulated clock (as ``pasu bench latency``), with pilot timings.

    ``chunks``: per chunk, [compute s, pilots it ran]; ``final_s``: the compute after
    the end of speech. ``streaming`` overrides ``options.streaming`` (the all-off run).
    """
    rate = rec.model.sample_rate
    step = max(1, int(options.chunk_s * rate))
    session = StreamingSession(rec, streaming or options.streaming, background=False)
    busy = 0.0
    pilots, chunk_log = [], []
    chunks = [audio[i : i + step] for i in range(0, len(audio), step)]
    for i, chunk in enumerate(chunks):
        arrival = (i + 1) * options.chunk_s
        start = max(arrival, busy)
        t0 = CLOCK()
        n_before = len(session.pilots)
        session.feed(chunk, may_pilot=busy <= arrival)
        dt = CLOCK() - t0
        busy = start + dt
        chunk_log.append([dt, len(session.pilots) - n_before])
        for p in session.pilots[n_before:]:
            pilots.append({"audio_s": p.audio_s, "done_s": busy, "chunk": i, "nbest": [_entry(e) for e in p.nbest]})
    eos = len(chunks) * options.chunk_s
    start = max(eos, busy)
    t0 = CLOCK()
    final = session.finalize()
    final_s = CLOCK() - t0
    return {
        "pilots": pilots,
        "final": {"nbest": [_entry(e) for e in final.nbest], "features": final.features},
        "latency_s": start + final_s - eos,
        "eos_s": eos,
        "chunks": chunk_log,
        "final_s": final_s,
    }


def stock_decode(s2t, audio: np.ndarray) -> dict:
    """Stock ESPnet after the end of speech: its best text, score and compute."""
    t0 = CLOCK()
    stock = espnet_nbest(s2t, audio)
    stock_s = CLOCK() - t0
    n_tok = max(1, len(stock[0].yseq) - 2) if stock else 1
    return {
        "text": stock[0].text if stock else "",
        "score": stock[0].score if stock else -1e9,
        "score_per_token": (stock[0].score / n_tok) if stock else -1e9,
        "latency_s": stock_s,
    }


def off_summary(run: dict) -> dict:
    """The all-off session, reduced to what its after-speech baselines need."""
    best = run["final"]["nbest"][0] if run["final"]["nbest"] else None
    n_tok = max(1, len(best["token_ids"])) if best else 1
    return {
        "text": best["text"] if best else "",
        "score_per_token": best["score"] / n_tok if best else -1e9,
        "latency_s": run["latency_s"],
        "chunks": run["chunks"],
        "final_s": run["final_s"],
    }


def collect(
    device: LoadedModel,
    cloud: LoadedModel | None,
    wav_scp: dict[str, str],
    out: Path,
    options: CollectOptions = CollectOptions(),
    cloud_target: str | None = None,
) -> dict[str, dict]:
    """Per-utterance records, computed once and cached under ``out/cache``."""
    if cloud is None and not cloud_target:
        raise ValueError("need a cloud model or a cloud target")
    keys = cache_key(device, cloud, options, cloud_target)
    dev_cache = _open_cache(out / "cache" / "device", {k: keys[k] for k in ("device", "options")})
    cloud_cache = _open_cache(out / "cache" / "cloud", {k: keys[k] for k in ("cloud", "decoding")})
    todo_dev = [u for u in wav_scp if not (dev_cache / f"{u}.json").is_file()]
    todo_cloud = [u for u in wav_scp if not (cloud_cache / f"{u}.json").is_file()]
    if len(todo_dev) < len(wav_scp) or len(todo_cloud) < len(wav_scp):
        log.info(
            "resuming: device %d, cloud %d of %d utterances cached",
            len(wav_scp) - len(todo_dev),
            len(wav_scp) - len(todo_cloud),
            len(wav_scp),
        )
    if todo_dev:
        rec = Recognizer(device, options.decoding)
        s2t = espnet_speech2text(device, options.decoding)
        all_off = replace(options.streaming, **dict.fromkeys(TECHNIQUES, False))
        for utt in tqdm(todo_dev, desc="device", unit="utt"):
            audio = read_audio(wav_scp[utt], device.sample_rate)
            rec_ = {"utt": utt, "audio_s": len(audio) / device.sample_rate, "bytes_pcm16": 2 * len(audio)}
            rec_["stock"] = stock_decode(s2t, audio)
            rec_["device"] = device_stream(rec, options, audio)
            rec_["off"] = off_summary(device_stream(rec, options, audio, all_off))
            (dev_cache / f"{utt}.json").write_text(json.dumps(rec_))
    if todo_cloud:
        cloud_rec = Recognizer(cloud, options.decoding) if cloud is not None else None
        for utt in tqdm(todo_cloud, desc="cloud", unit="utt"):
            audio = read_audio(wav_scp[utt], device.sample_rate)
            (cloud_cache / f"{utt}.json").write_text(json.dumps(_cloud(cloud_rec, cloud_target, audio, utt)))
    return {
        utt: {
            **json.loads((dev_cache / f"{utt}.json").read_text()),
            "cloud": json.loads((cloud_cache / f"{utt}.json").read_text()),
        }
        for utt in wav_scp
    }


def _open_cache(path: Path, key: dict) -> Path:
    """``path``, emptied first if its records were made with another ``key``."""
    key_file = path / "key.json"
    if path.is_dir() and (not key_file.is_file() or json.loads(key_file.read_text()) != key):
        log.warning("%s was made with other models or options: starting it afresh", path)
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    key_file.write_text(json.dumps(key, indent=2))
    return path


def _cloud(cloud_rec: Recognizer | None, target: str | None, audio: np.ndarray, utt: str) -> dict:
    """The cloud's answer: in-process with the cloud model, or over gRPC (``Recognize``)."""
    clock = time.perf_counter if target else CLOCK  # a remote worker's time is wall time here
    t0 = clock()
    if target:
        from pasu.cloud import client as cc

        with cc.channel(target) as ch:
            resp = cc.stub(ch).Recognize(cc.recognize_request(f"experiment-{utt}", audio), timeout=120)
        hyps = resp.result.hypotheses
        # the wire keeps the intent apart from the transcript; the device's text carries both
        text = join_intent(hyps[0].intent, hyps[0].text) if hyps else ""
    else:  # collect() has checked that one of the two is given
        assert cloud_rec is not None
        best = cloud_rec.recognize([audio])[0]
        text = best[0].text if best else ""
    return {"text": text, "compute_s": clock() - t0}


def cache_key(
    device: LoadedModel, cloud: LoadedModel | None, options: CollectOptions, cloud_target: str | None
) -> dict:
    """What the cached records depend on (JSON-comparable)."""
    return {
        "device": device.weights_digest(),
        "cloud": cloud.weights_digest() if cloud is not None else f"grpc:{cloud_target}",
        "options": json.loads(json.dumps(options_dict(options))),
        "decoding": json.loads(json.dumps(asdict(options.decoding))),  # all the cloud's answer depends on
    }


def options_dict(options: CollectOptions) -> dict:
    return {
        "chunk_s": options.chunk_s,
        "decoding": asdict(options.decoding),
        "streaming": asdict(options.streaming),
        "records": RECORD_VERSION,
    }
