"""`pasu eval --rejection`: false accepts on what is no command, false rejects on commands (issue 28).

Every clip goes through the real device agent (VAD, pilots, estimator, the
rejection rule), alone or with a real cloud worker on 127.0.0.1 (``hybrid``),
so the figures are the product's, not a model's on pre-cut audio:

* a *reject* set (``pasu data rejection``'s ``noise`` and ``ood``): a clip with
  any understood answer is a false accept;
* an *in-domain* set (``test_voices``, ``test_hard``, ``lead_noise``): the
  clip's main segment (the longest) carries the best guess; a clip whose best
  guess is right but not understood is a false reject, and the false-reject
  rate is over the clips whose best guess is right ("the device's correct
  answers"). Understood answers on other segments are extra answers.

``calibrate`` sets the thresholds on held-out in-domain commands: the device's
on the estimator's final confidence of its right answers, the cloud's on
:func:`pasu.slu.answer_score` of the cloud model's right answers, each the
largest that rejects at most ``target`` of them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pasu.audio import read_scp, read_wav_scp
from pasu.slu import REJECTION_FILE

log = logging.getLogger(__name__)


@dataclass
class Clip:
    """One clip's records from the agent (interim lines dropped)."""

    utt: str
    ref_intent: str | None  # None: nothing in it is a command
    kind: str
    records: list[dict] = field(default_factory=list)

    @property
    def main(self) -> dict | None:
        """The longest segment's record: where a command's answer is."""
        if not self.records:
            return None
        return max(self.records, key=lambda r: r["segment"]["end"] - r["segment"]["start"])

    @property
    def answers(self) -> list[dict]:
        return [r for r in self.records if r.get("understood")]


def run_clips(
    agent, data: Path, limit: int | None = None, progress: Callable[[Iterable], Iterable] = iter, reject: bool = False
) -> list[Clip]:
    """Every clip of ``data`` through ``agent`` (a DeviceAgent)."""
    from pasu.device.sources import file_chunks

    wavs = read_wav_scp(data)
    refs = {} if reject or not (data / "text").is_file() else read_scp(data / "text")
    kinds = read_scp(data / "utt2kind") if (data / "utt2kind").is_file() else {}
    out = []
    for utt in progress(list(wavs)[: limit or None]):
        ref = None if reject else (refs.get(utt, "").split() or [""])[0]
        clip = Clip(utt, ref, kinds.get(utt, "command" if not reject else "?"))
        chunks = file_chunks(wavs[utt], agent.config.chunk_ms, False, agent.rate)
        clip.records = [r for r in agent.process(chunks, utt) if not r.get("interim")]
        out.append(clip)
    return out


def reject_figures(clips: Sequence[Clip]) -> dict:
    """False accepts on a set where nothing is a command, overall and per kind."""
    fa = [c for c in clips if c.answers]
    kinds: dict[str, list[int]] = {}
    for c in clips:
        k = kinds.setdefault(c.kind, [0, 0])
        k[0] += 1
        k[1] += bool(c.answers)
    return {
        "clips": len(clips),
        "clips_with_segments": sum(bool(c.records) for c in clips),
        "false_accepts": len(fa),
        "false_accept_rate": round(len(fa) / len(clips), 4) if clips else 0.0,
        "not_understood_rate": round(1 - len(fa) / len(clips), 4) if clips else 0.0,
        "offloaded": sum(r["offloaded"] for c in clips for r in c.records),
        "not_speech": _not_speech(c.records for c in clips),
        "per_kind": {k: {"clips": n, "false_accepts": f} for k, (n, f) in sorted(kinds.items())},
        "examples": [
            f"{c.utt}: {a['text']} ({a['confidence']:.2f}, {a['source']})" for c in fa[:5] for a in c.answers[:1]
        ],
    }


def command_figures(clips: Sequence[Clip]) -> dict:
    """False rejects among the right best guesses, answers right, extra answers."""
    mains = [(c, c.main) for c in clips]
    right = [m for c, m in mains if m is not None and m.get("best_intent") == c.ref_intent]
    wrong = [m for c, m in mains if m is not None and m.get("best_intent") != c.ref_intent]
    rejected = [m for m in right if not m.get("understood")]
    extra = sum(len([r for r in c.answers if r is not m]) for c, m in mains)
    n = len(clips)
    return {
        "clips": n,
        "best_guess_right": len(right),
        "best_guess_accuracy": round(len(right) / n, 4) if n else 0.0,
        "false_rejects": len(rejected),
        "false_reject_rate": round(len(rejected) / len(right), 4) if right else 0.0,
        "answered_right": len(right) - len(rejected),
        "answered_wrong": sum(bool(m.get("understood")) for m in wrong),
        "not_understood_when_wrong": sum(not m.get("understood") for m in wrong),
        "no_segment": sum(m is None for _, m in mains),
        "rejected_right_not_speech": _not_speech([m] for m in rejected),
        "extra_answers": extra,
        "offloaded": sum(r["offloaded"] for c in clips for r in c.records),
    }


def _not_speech(records: Iterable[Iterable[dict]]) -> dict[str, int]:
    """Clips per VAD verdict on the audio (``no_speech``, ``babble``): what those rules took."""
    from pasu.device.vad import NOT_SPEECH

    out: dict[str, int] = dict.fromkeys(NOT_SPEECH, 0)
    for recs in records:
        for why in {str(r.get("reject_reason")) for r in recs} & set(NOT_SPEECH):
            out[why] += 1
    return out


def calibrate(scores_of_right: Sequence[float], target: float) -> float:
    """The largest threshold that rejects at most ``target`` of the right answers
    (an answer is rejected when its score is strictly below the threshold)."""
    s = np.sort(np.asarray(scores_of_right, dtype=np.float64))
    if s.size == 0:
        raise ValueError("no right answers to calibrate on")
    k = int(np.floor(target * s.size))  # rejections allowed
    return float(s[min(k, s.size - 1)])


# -- the runs ---------------------------------------------------------------------
@dataclass(frozen=True)
class RejectionRun:
    """What to evaluate: in-domain sets, reject sets, the models, device alone and/or hybrid."""

    commands: tuple[Path, ...]
    rejects: tuple[Path, ...] = ()
    device_model: str | None = None
    cloud_model: str | None = None
    modes: tuple[str, ...] = ("device",)  # "device" (alone) and/or "hybrid" (device + cloud)
    limit: int | None = None
    rejection_threshold: float | None = None  # device; None: the estimator's calibrated one
    cloud_rejection_threshold: float | None = None  # None: the cloud model's rejection.json
    records: Path | None = None  # also write every clip's records here (JSON lines), to redo figures offline


def evaluate_rejection(run: RejectionRun, progress: Callable[[Iterable], Iterable] = iter) -> dict:
    """Figures per mode ("device", and "hybrid" if asked) and per set."""
    from pasu.device.agent import DeviceAgent
    from pasu.device.config import AgentConfig, CloudClientConfig, PolicyConfig
    from pasu.model_store import resolve_model
    from pasu.models import load_model

    model = load_model(resolve_model(run.device_model, "device"))
    base = AgentConfig(rejection_threshold=run.rejection_threshold)
    modes = {"device": base} if "device" in run.modes else {}
    worker = None
    if "hybrid" in run.modes:
        from pasu.cloud.config import WorkerConfig
        from pasu.cloud.server import CloudWorker

        worker = CloudWorker(
            WorkerConfig(host="127.0.0.1", port=0, grace_s=1.0, rejection_threshold=run.cloud_rejection_threshold),
            resolve_model(run.cloud_model, "cloud"),
        )
        port = worker.start(wait=True, timeout=600)
        modes["hybrid"] = base.with_(
            policy=PolicyConfig(kind="threshold"), cloud=CloudClientConfig(target=f"127.0.0.1:{port}")
        )
    result: dict = {}
    dump = run.records.open("w", encoding="utf-8") if run.records else None
    try:
        for mode, cfg in modes.items():
            with DeviceAgent(cfg, model) as agent:
                r = {"rejection_threshold": agent.reject_below, "sets": {}}
                for d, reject in [(d, True) for d in run.rejects] + [(d, False) for d in run.commands]:
                    clips = run_clips(agent, d, run.limit, progress, reject=reject)
                    r["sets"][d.name] = reject_figures(clips) if reject else command_figures(clips)
                    log.info("%s %s: %s", mode, d.name, r["sets"][d.name])
                    if dump is not None:
                        dump.writelines(
                            json.dumps(
                                {
                                    "mode": mode,
                                    "set": d.name,
                                    "utt": c.utt,
                                    "ref": c.ref_intent,
                                    "kind": c.kind,
                                    "records": c.records,
                                }
                            )
                            + "\n"
                            for c in clips
                        )
                result[mode] = r
    finally:
        if dump is not None:
            dump.close()
        if worker is not None:
            worker.stop(grace=1.0)
    return result


# -- offline: the same figures from a run's records, with another device threshold -------
def read_records(path: Path) -> dict[str, dict[str, tuple[bool, list[Clip]]]]:
    """``{mode: {set: (is a reject set, clips)}}`` from ``RejectionRun.records`` (JSON lines)."""
    out: dict[str, dict[str, tuple[bool, list[Clip]]]] = {}
    with path.open(encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            d = json.loads(line)
            sets = out.setdefault(d["mode"], {})
            reject = d["ref"] is None
            clips = sets.setdefault(d["set"], (reject, []))[1]
            clips.append(Clip(d["utt"], d["ref"], d["kind"], d["records"]))
    return out


def rethreshold(clip: Clip, threshold: float, audio: str | Path | None = None) -> Clip:
    """The clip's device-alone records judged with ``threshold``. Exact for ``device`` runs:
    alone, the device offloads nothing, so the threshold changes only the verdict; the
    VAD's verdicts on the audio (checked first) stand whatever the threshold, or, with
    ``audio`` (the clip's file), are made anew on the segments the same VAD cuts from it."""
    from pasu.device.vad import NOT_SPEECH
    from pasu.slu import rejection_reason

    verdicts: dict[int, str | None] = {}
    if audio is not None:
        from pasu.audio import read_audio
        from pasu.device.vad import not_speech_reason, segment_audio

        verdicts = {s.index: not_speech_reason(s.speech_s, s.audio) for s in segment_audio(read_audio(audio))}
    recs = []
    for r in clip.records:
        if r.get("source", "device") != "device" or r.get("offloaded"):
            raise ValueError(f"{clip.utt}: only device-alone records can be re-thresholded")
        reason = r.get("reject_reason")
        if audio is not None:
            reason = verdicts.get(r["segment"]["index"])
        if reason not in NOT_SPEECH:
            reason = rejection_reason(r["text"], r["device_confidence"], threshold)
        new = {k: v for k, v in r.items() if k != "reject_reason"}
        new.update(understood=reason is None, intent=r["best_intent"] if reason is None else None)
        if reason is not None:
            new["reject_reason"] = reason
        recs.append(new)
    return Clip(clip.utt, clip.ref_intent, clip.kind, recs)


def figures_from_records(path: Path, threshold: float, audio_dirs: Sequence[Path] = ()) -> dict:
    """:func:`evaluate_rejection`'s figures for the ``device`` mode of a recorded run, at
    ``threshold``; the sets whose data dir is in ``audio_dirs`` (by name) get the VAD's
    verdicts anew from their audio (a run recorded before a change to those rules)."""
    sets = _judged_sets(_device_runs(path), threshold, audio_dirs)
    return {"device": {"rejection_threshold": threshold, "records": str(path), "sets": sets}}


def _device_runs(path: Path) -> dict[str, tuple[bool, list[Clip]]]:
    runs = read_records(path)
    if "device" not in runs:
        raise ValueError(f"{path}: no device-alone records (run with --mode device and --records)")
    return runs["device"]


def _judged_sets(
    runs: dict[str, tuple[bool, list[Clip]]], threshold: float, audio_dirs: Sequence[Path] = ()
) -> dict[str, dict]:
    """Each set's figures with its clips judged at ``threshold`` (:func:`rethreshold`)."""
    dirs = {d.name: d for d in audio_dirs}
    sets = {}
    for name, (reject, clips) in runs.items():
        wavs = read_wav_scp(dirs[name]) if name in dirs else {}
        judged = [rethreshold(c, threshold, wavs.get(c.utt)) for c in clips]
        sets[name] = reject_figures(judged) if reject else command_figures(judged)
    return sets


def threshold_sweep(path: Path, thresholds: Sequence[float]) -> dict:
    """The device's operating curve from one recorded run: per threshold, each set's
    false rejects (command sets) or false accepts (reject sets), judged as
    :func:`figures_from_records` judges them. It shows what no single threshold can
    buy, e.g. the false-reject target on test_voices against the out-of-domain one."""
    runs = _device_runs(path)  # read once, judged at each threshold
    rows = []
    for t in sorted(thresholds):
        sets = _judged_sets(runs, t)
        row: dict = {"threshold": t}
        for name, f in sets.items():
            keys = (
                ("false_accepts", "not_understood_rate")
                if "false_accepts" in f
                else ("false_rejects", "false_reject_rate")
            )
            row[name] = {k: f[k] for k in keys}
        rows.append(row)
    return {"records": str(path), "sweep": rows}


def sweep_table(result: dict) -> str:
    """Markdown: one row per threshold, one column per set (FR rate or FA count and not-understood rate)."""
    rows = result["sweep"]
    names = [k for k in rows[0] if k != "threshold"] if rows else []
    out = ["| threshold | " + " | ".join(names) + " |", "|---:|" + "---:|" * len(names)]
    for r in rows:
        cells = [
            f"FR {100 * r[n]['false_reject_rate']:.1f}%"
            if "false_reject_rate" in r[n]
            else f"FA {r[n]['false_accepts']} ({100 * r[n]['not_understood_rate']:.1f}% not understood)"
            for n in names
        ]
        out.append(f"| {r['threshold']:g} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def voice_engine(utt: str) -> str:
    """The TTS engine of a corpus utterance, from its id (``espeakng_en_us_m1-…``, ``flite_awb-…``)."""
    return utt.split("_", 1)[0]


def calibrate_by_group(records: Sequence[Path], target: float) -> dict:
    """The device threshold from recorded device-alone runs on held-out commands, robust to
    the voice: the right answers of each (set, voice engine) group get their own threshold
    at ``target`` and the lowest is kept, so no held-out group loses more than ``target``
    (one threshold over all favours the engine the model knows best)."""
    from pasu.device.vad import NOT_SPEECH

    groups: dict[str, list[float]] = {}
    for path in records:
        for name, (reject, clips) in read_records(path).get("device", {}).items():
            if reject:
                continue
            for c in clips:
                m = c.main
                if m is None or m.get("best_intent") != c.ref_intent or m.get("reject_reason") in NOT_SPEECH:
                    continue
                if not split_words(m["text"]):
                    continue
                groups.setdefault(f"{name}/{voice_engine(c.utt)}", []).append(m["device_confidence"])
    if not groups:
        raise ValueError("no right answers in the records to calibrate on")
    per = {g: round(calibrate(v, target), 4) for g, v in sorted(groups.items())}
    t = min(per.values())
    every = [x for v in groups.values() for x in v]
    rejected = sum(x < t for x in every)
    return {
        "target_false_reject": target,
        "data": [str(p) for p in records],
        "method": "lowest of the (set, voice engine) groups' thresholds",
        "groups": {g: {"threshold": per[g], "right_answers": len(groups[g])} for g in per},
        "device": {
            "threshold": t,
            "right_answers": len(every),
            "rejected": rejected,
            "false_reject_rate": round(rejected / len(every), 4),
        },
    }


def split_words(text: str) -> str:
    from pasu.slu import split_intent

    return split_intent(text)[1].strip()


def calibrate_on(
    data: Sequence[Path],
    target: float,
    device_model: str | None = None,
    cloud_model: str | None = None,
    limit: int | None = None,
    progress: Callable[[Iterable], Iterable] = iter,
    sides: Sequence[str] = ("device", "cloud"),
) -> dict:
    """The thresholds of ``sides`` from held-out in-domain commands (see the module's doc)."""
    unknown = set(sides) - {"device", "cloud"}
    if unknown or not sides:
        raise ValueError(f"sides: device and/or cloud, got {sorted(sides)}")
    dev_scores: list[float] = []
    cloud_scores: list[float] = []
    out = {"target_false_reject": target, "data": [str(d) for d in data]}
    if "device" in sides:
        dev_scores = _device_right_scores(data, device_model, limit, progress)
    if "cloud" in sides:
        cloud_scores = _cloud_right_scores(data, cloud_model, limit, progress)
    for side, scores in (("device", dev_scores), ("cloud", cloud_scores)):
        if side not in sides:
            continue
        t = calibrate(scores, target)
        rejected = sum(s < t for s in scores)
        out[side] = {
            "threshold": round(t, 4),
            "right_answers": len(scores),
            "rejected": rejected,
            "false_reject_rate": round(rejected / len(scores), 4),
        }
    return out


def _device_right_scores(
    data: Sequence[Path], device_model: str | None, limit: int | None, progress: Callable[[Iterable], Iterable]
) -> list[float]:
    """The device agent's final confidence on its right answers (no threshold applied)."""
    from pasu.device.agent import DeviceAgent
    from pasu.device.config import AgentConfig
    from pasu.model_store import resolve_model
    from pasu.models import load_model

    device = load_model(resolve_model(device_model, "device"))
    dev_scores: list[float] = []
    with DeviceAgent(AgentConfig(rejection_threshold=0.0), device) as agent:
        for d in data:
            for c in run_clips(agent, d, limit, progress):
                m = c.main
                if m is not None and m.get("best_intent") == c.ref_intent and m.get("understood"):
                    dev_scores.append(m["confidence"])
    return dev_scores


def _cloud_right_scores(
    data: Sequence[Path], cloud_model: str | None, limit: int | None, progress: Callable[[Iterable], Iterable]
) -> list[float]:
    """:func:`pasu.slu.answer_score` of the cloud model's right answers on whole clips."""
    from pasu.audio import read_audio
    from pasu.cloud.config import WorkerConfig
    from pasu.decoding import DecodingOptions, Recognizer
    from pasu.model_store import resolve_model
    from pasu.models import load_model
    from pasu.slu import answer_score, split_intent

    cloud = load_model(resolve_model(cloud_model, "cloud"))
    w = WorkerConfig()
    rec = Recognizer(cloud, DecodingOptions(beam_size=w.default_beam_size, ctc_weight=w.ctc_weight, penalty=w.penalty))
    cloud_scores: list[float] = []
    for d in data:
        wavs, refs = read_wav_scp(d), read_scp(d / "text")
        ids = list(wavs)[: limit or None]
        for i in progress(range(0, len(ids), 8)):
            batch = ids[i : i + 8]
            for u, nbest in zip(batch, rec.recognize([read_audio(wavs[u]) for u in batch]), strict=True):
                intent, words = split_intent(nbest[0].text) if nbest else (None, "")
                if nbest and words.strip() and intent == refs[u].split()[0]:
                    cloud_scores.append(answer_score(nbest[0]))
    return cloud_scores


def save_thresholds(
    cal: dict, device_model: str | None, cloud_model: str | None, estimator: Path | None = None
) -> list[Path]:
    """Write the device's threshold into its estimator's metadata (``rejection``) and the
    cloud's into ``rejection.json`` beside the cloud model (each side ``cal`` has): each
    belongs to one scale."""
    from pasu.device.confidence import SHIPPED_NAME, meta_path
    from pasu.model_store import resolve_model

    common = {"target_false_reject": cal["target_false_reject"], "calibrated_on": cal["data"]}
    if "method" in cal:
        common["method"] = cal["method"]
    written = []
    if "device" in cal:
        est = estimator or Path(resolve_model(device_model, "device")) / SHIPPED_NAME
        j = meta_path(est)
        meta = json.loads(j.read_text())
        meta["rejection"] = dict(common, **cal["device"])
        j.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        written.append(j)
    if "cloud" in cal:
        c = Path(resolve_model(cloud_model, "cloud")) / REJECTION_FILE
        c.write_text(
            json.dumps(dict(common, score="pasu.slu.answer_score", **cal["cloud"]), indent=2, sort_keys=True) + "\n"
        )
        written.append(c)
    return written


def table(result: dict) -> str:
    """Markdown: one row per mode and set."""
    rows = ["| mode | set | clips | false accepts / rejects | rate | other |", "|---|---|---:|---:|---:|---|"]
    for mode, r in result.items():
        for name, f in r["sets"].items():
            if "false_accepts" in f:
                rows.append(
                    f"| {mode} | {name} (no command) | {f['clips']} | {f['false_accepts']} FA | "
                    f"{100 * f['false_accept_rate']:.1f}% | "
                    f"not understood {100 * f['not_understood_rate']:.1f}%, "
                    f"segments on {f['clips_with_segments']} clips, offloaded {f['offloaded']} |"
                )
            else:
                rows.append(
                    f"| {mode} | {name} (commands) | {f['clips']} | {f['false_rejects']} FR of "
                    f"{f['best_guess_right']} right | {100 * f['false_reject_rate']:.1f}% | "
                    f"best guess right {100 * f['best_guess_accuracy']:.1f}%, answered right "
                    f"{f['answered_right']}, answered wrong {f['answered_wrong']}, extra answers "
                    f"{f['extra_answers']}, no segment {f['no_segment']}, offloaded {f['offloaded']} |"
                )
    return "\n".join(rows)
