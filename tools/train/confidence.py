"""`pasu device train-confidence`: fit the offramp estimator on an ESPnet data dir.

Each utterance is streamed through the same :class:`StreamingSession` the agent
uses; every pilot and the final pass become one example, all labelled with
whether the *final* device answer was right (intent, and optionally the
words) — or, with the ``cloud`` label, whether keeping it loses nothing: 0 only
where the cloud model gets the intent right and the device does not. That is
the question an offload answers; on sentences neither model knows, most device
errors are the cloud's errors too, and offloading them buys nothing (the
offload experiment's gain table). Utterances — never steps of one utterance —
are split into train and eval, so the eval numbers (ECE, AUROC, Brier,
reliability diagram) are honest.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from pasu.audio import AudioError, read_audio, read_scp, read_wav_scp
from pasu.decoding.options import DecodingOptions
from pasu.decoding.recognizer import Recognizer
from pasu.device.calibration import reliability_diagram, report
from pasu.device.confidence import (
    FEATURES,
    KINDS,
    ConfidenceEstimator,
    ConfidenceNet,
    FeatureTracker,
    Kind,
    nothing_lost,
    pad_sequence,
)
from pasu.models import LoadedModel
from pasu.streaming.options import StreamingOptions
from pasu.streaming.session import StreamingSession
from pasu.tools import scoring

log = logging.getLogger(__name__)

Label = Literal["intent", "intent+text", "cloud"]
LABELS: tuple[str, ...] = ("intent", "intent+text", "cloud")


@dataclass(frozen=True)
class TrainOptions:
    kind: Kind = "mlp"
    features: tuple[str, ...] = FEATURES  # the ones the estimator uses (SCORE_FEATURES: shift-robust)
    hidden: int = 16
    epochs: int = 400
    lr: float = 0.02
    weight_decay: float = 1e-3
    eval_fraction: float = 0.25
    seed: int = 0
    label: Label = "intent"
    chunk_ms: int = 100
    limit: int | None = None  # first N utterances (quick runs)
    decoding: DecodingOptions = DecodingOptions()
    streaming: StreamingOptions = StreamingOptions()

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.label not in LABELS:
            raise ValueError(f"label must be one of {LABELS}, got {self.label!r}")
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ValueError("eval_fraction must be in [0, 1)")


@dataclass
class Examples:
    X: np.ndarray  # (N, F) step features
    seqs: np.ndarray  # (N, SEQ_LEN, F) the steps up to each one
    y: np.ndarray  # (N,) 1 = keep the answer local (see :func:`label`); zeros until labelled
    utt: np.ndarray  # (N,) utterance index
    final: np.ndarray  # (N,) bool: the final pass (else a pilot)
    utt_ids: list[str] = field(default_factory=list)
    hyps: list[str] = field(default_factory=list)  # final device text per utterance
    refs: list[str] = field(default_factory=list)  # reference text per utterance

    def take(self, mask: np.ndarray) -> Examples:
        return Examples(
            self.X[mask],
            self.seqs[mask],
            self.y[mask],
            self.utt[mask],
            self.final[mask],
            self.utt_ids,
            self.hyps,
            self.refs,
        )

    @staticmethod
    def concat(parts: Sequence[Examples]) -> Examples:
        """One set from several (pooled data dirs); utterance indices stay distinct."""
        offsets = np.cumsum([0] + [len(p.utt_ids) for p in parts[:-1]])
        return Examples(
            np.concatenate([p.X for p in parts]),
            np.concatenate([p.seqs for p in parts]),
            np.concatenate([p.y for p in parts]),
            np.concatenate([p.utt + o for p, o in zip(parts, offsets, strict=True)]),
            np.concatenate([p.final for p in parts]),
            [u for p in parts for u in p.utt_ids],
            [h for p in parts for h in p.hyps],
            [r for p in parts for r in p.refs],
        )

    def save(self, path: Path) -> None:
        np.savez_compressed(
            path,
            X=self.X,
            seqs=self.seqs,
            y=self.y,
            utt=self.utt,
            final=self.final,
            utt_ids=np.array(self.utt_ids),
            hyps=np.array(self.hyps),
            refs=np.array(self.refs),
        )

    @classmethod
    def load(cls, path: Path) -> Examples:
        with np.load(path) as z:
            return cls(
                z["X"],
                z["seqs"],
                z["y"],
                z["utt"],
                z["final"],
                z["utt_ids"].tolist(),
                z["hyps"].tolist(),
                z["refs"].tolist(),
            )


def read_data_dir(data: str | Path) -> list[tuple[str, Path, str]]:
    """(utterance id, audio path, reference text) from ``wav.scp`` and ``text``."""
    d = Path(data)
    for name in ("wav.scp", "text"):
        if not (d / name).is_file():
            raise FileNotFoundError(f"{d / name} is missing (an ESPnet data dir has wav.scp and text)")
    wavs, texts = read_wav_scp(d), read_scp(d / "text")
    out = []
    for utt, where in wavs.items():
        if where.rstrip().endswith("|"):
            raise ValueError(f"{d / 'wav.scp'}: {utt} is a command pipe; only file paths are supported")
        if utt not in texts:
            log.warning("%s has no transcript in %s; skipped", utt, d / "text")
            continue
        out.append((utt, Path(where), texts[utt]))
    if not out:
        raise ValueError(f"{d}: no utterance has both audio and a transcript")
    return out


def is_right(hyp: str, ref: str, label: Label = "intent") -> bool:
    """The intent is right (:func:`pasu.tools.scoring.correct`, as every figure scores it);
    with ``intent+text`` the transcript too."""
    return scoring.correct(hyp, ref) and (label == "intent" or scoring.transcript(hyp) == scoring.transcript(ref))


def collect(
    model: LoadedModel, data: list[tuple[str, Path, str]], options: TrainOptions, progress: Callable | None = None
) -> Examples:
    """Stream every utterance as the agent does and record each step's features
    and the final answer (unlabelled: :func:`label` says what "right" means)."""
    rec = Recognizer(model, options.decoding)
    chunk = max(1, model.sample_rate * options.chunk_ms // 1000)
    X, seqs, utt, final, ids, hyps, refs = [], [], [], [], [], [], []
    items = progress(data) if progress else data
    for uid, path, ref in items:
        try:
            audio = read_audio(path, model.sample_rate)
        except AudioError as e:
            log.warning("%s: %s; skipped", uid, e)
            continue
        session = StreamingSession(rec, options.streaming, background=False)
        for j in range(0, audio.size, chunk):
            session.feed(audio[j : j + chunk])
        try:
            result = session.finalize()
        except ValueError as e:
            log.warning("%s: %s; skipped", uid, e)
            continue
        tracker = FeatureTracker()
        steps = [tracker.pilot(p) for p in result.pilots] + [tracker.final(result)]
        for k, v in enumerate(steps):
            X.append(v)
            seqs.append(pad_sequence(steps[: k + 1]))
            utt.append(len(ids))
            final.append(k == len(steps) - 1)
        ids.append(uid)
        hyps.append(result.best.text if result.best else "")
        refs.append(ref)
    if not ids:
        raise ValueError("no utterance could be decoded")
    return Examples(
        np.stack(X), np.stack(seqs), np.zeros(len(X), np.float32), np.array(utt), np.array(final), ids, hyps, refs
    )


def cloud_answers(
    cloud: LoadedModel, data: list[tuple[str, Path, str]], options: TrainOptions, progress: Callable | None = None
) -> dict[str, str]:
    """The cloud's text for every utterance: the whole utterance decoded once, with
    the same decoding options, as the cloud worker does ("" where it finds nothing)."""
    rec = Recognizer(cloud, options.decoding)
    out = {}
    for uid, path, _ in progress(data) if progress else data:
        try:
            audio = read_audio(path, cloud.sample_rate)
        except AudioError as e:
            log.warning("%s: %s; skipped", uid, e)
            continue
        best = rec.recognize([audio])[0]
        out[uid] = best[0].text if best else ""
    return out


def label(ex: Examples, kind: Label, cloud: dict[str, str] | None = None) -> Examples:
    """Every step gets its utterance's label: the final device answer is right
    (``intent``, ``intent+text``) or, with ``cloud``, keeping it local loses
    nothing (0 only where the cloud gets the intent right and the device not)."""
    if (kind == "cloud") != (cloud is not None):
        raise ValueError("the cloud label needs the cloud's answers, and only it uses them")
    per_utt = []
    for uid, hyp, ref in zip(ex.utt_ids, ex.hyps, ex.refs, strict=True):
        if cloud is None:
            per_utt.append(is_right(hyp, ref, kind))
        else:
            if uid not in cloud:
                raise KeyError(f"{uid}: the cloud has no answer")
            per_utt.append(nothing_lost(is_right(hyp, ref), is_right(cloud[uid], ref)))
    y = np.array(per_utt, np.float32)[ex.utt] if len(ex.utt) else np.zeros(0, np.float32)
    return Examples(ex.X, ex.seqs, y, ex.utt, ex.final, ex.utt_ids, ex.hyps, ex.refs)


def _digest(payload: dict) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:20]


def examples_key(model: LoadedModel, data: list[tuple[str, Path, str]], options: TrainOptions) -> str:
    """A digest of everything :func:`collect` depends on: the device's weights, the
    utterances (ids, audio paths, references) and the decoding and streaming
    options — not the label or the estimator's options, which is what a cache
    lets one sweep. (Audio files rewritten in place under the same path are not seen.)"""
    return _digest(
        {
            "device": model.weights_digest(),
            "chunk_ms": options.chunk_ms,
            "decoding": asdict(options.decoding),
            "streaming": asdict(options.streaming),
            "utterances": [(u, str(p), r) for u, p, r in data],
        }
    )


def answers_key(cloud: LoadedModel, data: list[tuple[str, Path, str]], options: TrainOptions) -> str:
    """What :func:`cloud_answers` depends on: the cloud's weights, the decoding options, the utterances."""
    return _digest(
        {
            "cloud": cloud.weights_digest(),
            "decoding": asdict(options.decoding),
            "utterances": [(u, str(p)) for u, p, _ in data],
        }
    )


def _load_or_make[T](
    path: Path | None, make: Callable[[], T], load: Callable[[Path], T], save: Callable[[T, Path], None]
) -> T:
    """``load(path)`` if it exists, else ``make()``, saved to ``path`` (None: no cache)."""
    if path is not None and path.is_file():
        log.info("reusing %s", path)
        return load(path)
    made = make()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        save(made, path)
    return made


def collect_cached(
    model: LoadedModel,
    data: list[tuple[str, Path, str]],
    options: TrainOptions,
    cache: Path | None,
    progress: Callable | None = None,
    cloud: LoadedModel | None = None,
) -> Examples:
    """:func:`collect` (and, with ``cloud``, :func:`cloud_answers`), labelled by
    ``options.label``, or their earlier results from ``cache`` (a directory; None: no cache).

    Decoding is nearly all of a run's time (the fit takes seconds), so with a
    cache one decode serves any number of estimator kinds, feature sets, seeds
    and labels; the device's decodes and the cloud's are kept apart, so a new
    cloud model decodes only its own side.
    """
    if (options.label == "cloud") != (cloud is not None):
        raise ValueError("the cloud label needs a cloud model, and only it uses one")
    where = Path(cache) if cache is not None else None
    ex = _load_or_make(
        where / f"examples-{examples_key(model, data, options)}.npz" if where else None,
        lambda: collect(model, data, options, progress),
        Examples.load,
        Examples.save,
    )
    answers = None
    if cloud is not None:
        answers = _load_or_make(
            where / f"cloud-{answers_key(cloud, data, options)}.json" if where else None,
            lambda: cloud_answers(cloud, data, options, progress),
            lambda p: json.loads(p.read_text()),
            lambda a, p: p.write_text(json.dumps(a)),
        )
    return label(ex, options.label, answers)


def split(ex: Examples, fraction: float, seed: int) -> tuple[Examples, Examples]:
    n = len(ex.utt_ids)
    n_eval = int(round(fraction * n)) if n >= 2 else 0
    n_eval = min(max(n_eval, 1 if fraction > 0 and n >= 2 else 0), n - 1)
    perm = np.random.default_rng(seed).permutation(n)
    eval_utts = set(perm[:n_eval].tolist())
    mask = np.array([u in eval_utts for u in ex.utt])
    return ex.take(~mask), ex.take(mask)


def fit(ex: Examples, options: TrainOptions) -> ConfidenceEstimator:
    """Full-batch Adam on binary cross-entropy (small data: seconds on a CPU)."""
    torch.manual_seed(options.seed)
    net = ConfidenceNet(options.kind, hidden=options.hidden, uses=options.features)
    X = torch.as_tensor(ex.X)
    S = torch.as_tensor(ex.seqs)
    y = torch.as_tensor(ex.y)
    with torch.no_grad():
        net.mean.copy_(X.mean(0))
        std = X.std(0, unbiased=False)
        net.std.copy_(torch.where(std > 1e-6, std, torch.ones_like(std)))
    opt = torch.optim.Adam(net.parameters(), lr=options.lr, weight_decay=options.weight_decay)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    net.train()
    loss = torch.tensor(0.0)
    for _ in range(options.epochs):
        opt.zero_grad()
        loss = loss_fn(net(X, S if options.kind == "cnn" else None), y)
        loss.backward()
        opt.step()
    net.eval()
    return ConfidenceEstimator(net, {"train_loss": round(float(loss.detach()), 5)})


def evaluate(est: ConfidenceEstimator, ex: Examples) -> dict:
    """Calibration and ranking on every step, and on the final step alone."""
    if ex.X.shape[0] == 0:
        return {}
    p = est.predict_many(ex.X, ex.seqs if est.net.kind == "cnn" else None)
    return {
        "all_steps": report(p, ex.y),
        "final_step": report(p[ex.final], ex.y[ex.final]),
        "pilot_steps": report(p[~ex.final], ex.y[~ex.final]),
    }


def train(
    model: LoadedModel,
    data_dir: str | Path | Sequence[str | Path],
    out: str | Path,
    options: TrainOptions = TrainOptions(),
    plot: str | Path | None = None,
    progress: Callable | None = None,
    test_dir: str | Path | None = None,
    cloud: LoadedModel | None = None,
    cache: str | Path | None = None,
) -> dict:
    """Collect, split, fit, evaluate, save. Returns the report (also stored in the JSON metadata).

    ``data_dir``: one data dir or several, pooled (e.g. ``calib`` with familiar
    sentences and a ``calib`` of the novel-template grammar: the device meets both).
    ``test_dir``: a second data dir (e.g. ``test_hard``: other voices, unseen
    sentences) the estimator is also scored on, with its own reliability diagram
    — the honest figure, since dev shares voices and templates with training.
    ``cloud``: the cloud model, for the ``cloud`` label.
    ``cache``: a directory keeping each data dir's decoded examples (:func:`collect_cached`).
    """
    t0 = time.perf_counter()
    dirs = [Path(data_dir)] if isinstance(data_dir, (str, Path)) else [Path(d) for d in data_dir]
    per_dir, left = [], options.limit or None
    for d in dirs:  # --limit: the first N utterances of the pooled dirs
        items = read_data_dir(d)[:left] if left is not None else read_data_dir(d)
        if items:
            per_dir.append(items)
        left = None if left is None else left - len(items)
    cache_dir = Path(cache) if cache is not None else None
    ex = Examples.concat([collect_cached(model, items, options, cache_dir, progress, cloud) for items in per_dir])
    train_ex, eval_ex = split(ex, options.eval_fraction, options.seed)
    if eval_ex.X.shape[0] == 0:
        log.warning("too few utterances for an eval split: the report is on the training data")
        eval_ex = train_ex
    est = fit(train_ex, options)
    metrics = {"train": evaluate(est, train_ex), "eval": evaluate(est, eval_ex)}
    p = est.predict_many(eval_ex.X, eval_ex.seqs if est.net.kind == "cnn" else None)
    plot_path = Path(plot) if plot else Path(str(out) + ".reliability.png")
    names = " + ".join(f"{d.parent.name}/{d.name}" if len(dirs) > 1 else d.name for d in dirs)
    reliability_diagram(p, eval_ex.y, plot_path, title=f"{options.kind} on {names} (eval)")
    opts = {k: v for k, v in asdict(options).items() if k not in ("decoding", "streaming")}
    est.meta.update(
        name=f"{model.name}-confidence",
        model={"name": model.name, "version": model.version},
        **({"cloud": {"name": cloud.name, "version": cloud.version}} if cloud is not None else {}),
        data=str(dirs[0]) if len(dirs) == 1 else [str(d) for d in dirs],
        utterances={"train": int(len(set(train_ex.utt.tolist()))), "eval": int(len(set(eval_ex.utt.tolist())))},
        options=opts,
        decoding=asdict(options.decoding),
        streaming=asdict(options.streaming),
        metrics=metrics,
        reliability_diagram=str(plot_path),
        seconds=round(time.perf_counter() - t0, 2),
    )
    if test_dir is not None:
        test = read_data_dir(test_dir)
        test_ex = collect_cached(
            model, test[: options.limit] if options.limit else test, options, cache_dir, progress, cloud
        )
        test_plot = Path(str(out) + f".reliability.{Path(test_dir).name}.png")
        reliability_diagram(
            est.predict_many(test_ex.X, test_ex.seqs if est.net.kind == "cnn" else None),
            test_ex.y,
            test_plot,
            title=f"{options.kind} on {Path(test_dir).name}",
        )
        est.meta.update(
            test={
                "data": str(test_dir),
                "utterances": len(test_ex.utt_ids),
                "metrics": evaluate(est, test_ex),
                "reliability_diagram": str(test_plot),
            }
        )
    est.save(out)
    return est.meta
