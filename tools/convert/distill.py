"""Distil the full model into its converted device model on unlabeled audio, with ESPnet's trainer.

Targets are the full (teacher) model's 1-best token sequences from pasu's
decoder, written as space-separated tokens of the shared token list and read
back with ``token_type: word``, so the student learns the teacher's exact token
ids (re-tokenizing the detokenized text could split it differently). Training
is ESPnet's ``ASRTask`` (as :mod:`pasu.tools.train.recipe` runs it: a
subprocess, its log beside the checkpoints, ``--resume``), started from the
converted weights with the decoder and the CTC head frozen; the package then
carries the teacher's decoder and CTC tensors bit for bit.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import soundfile as sf
import yaml

log = logging.getLogger(__name__)

FROZEN = ("decoder", "ctc")


@dataclass(frozen=True)
class DistillOptions:
    """How to distil.

    Attributes:
        epochs: ESPnet epochs (``--resume``: rerun with more to continue).
        limit: utterances of the audio dir (None: all).
        valid_every: every n-th utterance is held out for validation (agreement with the teacher).
        beam_size: the teacher's beam.
        lr: peak learning rate (warm start: below a from-scratch run's).
        warmup_steps: warm-up of ESPnet's warmuplr scheduler.
        batch_bins: ESPnet's numel batch size (None: the model's training config).
        num_iters_per_epoch: batches per epoch (None: the whole audio).
        threads: torch threads of the ESPnet run.
        extra_args: appended to the ESPnet command line.
    """

    epochs: int = 4
    limit: int | None = None
    valid_every: int = 10
    beam_size: int = 10
    lr: float = 0.0005
    warmup_steps: int = 200
    batch_bins: int | None = None
    num_iters_per_epoch: int | None = None
    threads: int = 1
    extra_args: tuple[str, ...] = ()


def teacher_data(teacher_dir: Path, audio_dir: Path, data_dir: Path, options: DistillOptions) -> tuple[Path, Path]:
    """``data_dir/{train,valid}``: wav.scp, the teacher's tokens as ``text``, shape files (kept if there)."""
    from tqdm import tqdm

    from pasu.audio import read_audio, read_wav_scp
    from pasu.decoding import DecodingOptions, Recognizer
    from pasu.models import load_model
    from pasu.tools.convert.measure import audio_files

    train, valid = data_dir / "train", data_dir / "valid"
    if (valid / "text_shape").is_file():
        log.info("distill: teacher targets in %s exist, reusing", data_dir)
        return train, valid
    if (audio_dir / "wav.scp").is_file():
        items = list(read_wav_scp(audio_dir).items())[: options.limit or None]
    else:
        items = [
            (str(f.relative_to(audio_dir).with_suffix("")).replace("/", "-"), str(f)) for f in audio_files(audio_dir)
        ]
        items = items[: options.limit or None]
    teacher = load_model(teacher_dir)
    recognizer = Recognizer(teacher, DecodingOptions(beam_size=options.beam_size))
    rows: list[tuple[str, str, int, list[str]]] = []
    for uid, path in tqdm(items, desc="teacher 1-best", unit="utt", disable=not sys.stderr.isatty()):
        info = sf.info(path)
        if info.samplerate != teacher.sample_rate:
            raise ValueError(
                f"{path}: {info.samplerate} Hz; ESPnet's trainer reads audio as it is: resample to "
                f"{teacher.sample_rate} Hz first"
            )
        nbest = recognizer.recognize([read_audio(path)])[0]
        if nbest and nbest[0].tokens:
            rows.append((uid, str(Path(path).resolve()), info.frames, nbest[0].tokens))
    if len(rows) < 2:
        raise ValueError(f"{audio_dir}: the teacher answered {len(rows)} utterances; distillation needs at least 2")
    every = max(2, options.valid_every)
    splits = {valid: rows[::every], train: [r for i, r in enumerate(rows) if i % every]}
    vocab = len(teacher.token_list)
    for d, part in splits.items():
        d.mkdir(parents=True, exist_ok=True)
        (d / "wav.scp").write_text("".join(f"{u} {p}\n" for u, p, _, _ in part), encoding="utf-8")
        (d / "text").write_text("".join(f"{u} {' '.join(t)}\n" for u, _, _, t in part), encoding="utf-8")
        (d / "speech_shape").write_text("".join(f"{u} {n}\n" for u, _, n, _ in part))
        (d / "text_shape").write_text("".join(f"{u} {len(t)},{vocab}\n" for u, _, _, t in part))
    log.info(
        "distill: %d train + %d valid utterances with the teacher's 1-best", len(splits[train]), len(splits[valid])
    )
    return train, valid


def training_config(converted_dir: Path, path: Path, options: DistillOptions) -> dict[str, Any]:
    """ESPnet's training config: the converted model's (architecture, features, loss) + distillation settings."""
    from espnet2.tasks.asr import ASRTask

    config = yaml.safe_load((converted_dir / "config.yaml").read_text(encoding="utf-8"))
    dests = {a.dest for a in ASRTask.get_parser()._actions}
    config = {k: v for k, v in config.items() if k in dests}
    config.update(
        token_type="word",  # the teacher's tokens, one a word: its exact ids
        bpemodel=None,
        token_list=str((converted_dir / "tokens.txt").resolve()),
        optim_conf={**(config.get("optim_conf") or {}), "lr": options.lr},
        scheduler_conf={**(config.get("scheduler_conf") or {}), "warmup_steps": options.warmup_steps},
        num_iters_per_epoch=options.num_iters_per_epoch,
        max_epoch=options.epochs,
        # validation CER/WER need editdistance (not a pasu dependency); token accuracy stays
        model_conf={**(config.get("model_conf") or {}), "report_cer": False, "report_wer": False},
    )
    stats = (config.get("normalize_conf") or {}).get("stats_file")
    if stats:
        config["normalize_conf"] = {**config["normalize_conf"], "stats_file": str((converted_dir / stats).resolve())}
    if options.batch_bins:
        config.update(batch_type="numel", batch_bins=options.batch_bins)
    path.write_text(f"# pasu convert --distill: {converted_dir}\n" + yaml.safe_dump(config, sort_keys=False))
    return config


def run_espnet(args: list[str], log_file: Path, threads: int) -> None:
    """``python -m pasu.tools.train.asr_train ARGS``, its output in ``log_file`` (as the recipe runs ESPnet)."""
    cmd = [sys.executable, "-m", "pasu.tools.train.asr_train", *args]
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    log_file.parent.mkdir(parents=True, exist_ok=True)
    log.info("running ESPnet (log: %s)", log_file)
    with open(log_file, "a", encoding="utf-8") as fh:
        fh.write(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd)}\n")
        fh.flush()
        rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, check=False).returncode
    if rc != 0:
        tail = "".join(log_file.read_text(encoding="utf-8", errors="replace").splitlines(True)[-20:])
        raise RuntimeError(f"ESPnet exited with {rc}; see {log_file}:\n{tail}")


def pin_shared(state: dict, source: dict, tolerance: float = 1e-5) -> dict:
    """``state`` with the source's decoder and CTC tensors, after proving training left them alone.

    ESPnet's checkpoint average of identical frozen tensors can still move one by an ulp.
    """
    from pasu.tools.train.package import shared_decoder

    pinned = dict(state)
    pinned.update(shared_decoder(state, source, tolerance))
    ctc = {k: v for k, v in source.items() if k.startswith("ctc.")}
    worst = max((float((state[k].float() - v.float()).abs().max()) for k, v in ctc.items()), default=0.0)
    if worst > tolerance:
        raise ValueError(f"the CTC head moved by {worst:g} in distillation: was it frozen?")
    pinned.update(ctc)
    return pinned


def distill(
    converted_dir: Path,
    teacher_dir: Path,
    audio_dir: Path,
    exp_dir: Path,
    out_dir: Path,
    options: DistillOptions = DistillOptions(),
) -> Path:
    """Train ``converted_dir`` on the teacher's 1-best over ``audio_dir``; package the result in ``out_dir``."""
    import torch

    from pasu.models import find_model_files, load_state_dict
    from pasu.tools.train.package import write_model_card
    from pasu.tools.train.recipe import best_checkpoint

    train, valid = teacher_data(teacher_dir, audio_dir, exp_dir / "data", options)
    out = exp_dir / "train"
    out.mkdir(parents=True, exist_ok=True)
    config = out / "distill.yaml"
    training_config(converted_dir, config, options)
    args = [
        "--config", str(config),
        "--output_dir", str(out),
        "--resume", "true",
        "--ngpu", "0",
        "--num_workers", "1",
        "--use_tensorboard", "false",
        "--use_matplotlib", "false",
        "--init_param", str((converted_dir / "model.pth").resolve()),
        "--freeze_param", *FROZEN,
        "--train_data_path_and_name_and_type", f"{train / 'wav.scp'},speech,sound",
        "--train_data_path_and_name_and_type", f"{train / 'text'},text,text",
        "--valid_data_path_and_name_and_type", f"{valid / 'wav.scp'},speech,sound",
        "--valid_data_path_and_name_and_type", f"{valid / 'text'},text,text",
        "--train_shape_file", str(train / "speech_shape"),
        "--train_shape_file", str(train / "text_shape"),
        "--valid_shape_file", str(valid / "speech_shape"),
        "--valid_shape_file", str(valid / "text_shape"),
        *options.extra_args,
    ]  # fmt: skip
    t0 = time.monotonic()
    run_espnet(args, out / "train.log", options.threads)
    checkpoint = best_checkpoint(out)
    state = pin_shared(load_state_dict(checkpoint), load_state_dict(converted_dir / "model.pth"))
    source = yaml.safe_load((converted_dir / "config.yaml").read_text(encoding="utf-8"))
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(converted_dir, tmp)
    for stale in tmp.glob("eval_*.json"):
        stale.unlink()
    dtype = next(v.dtype for k, v in state.items() if k.startswith("decoder.") and v.is_floating_point())
    torch.save({k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}, tmp / "model.pth")
    meta = source.setdefault("pasu", {})
    teacher_meta = (yaml.safe_load(find_model_files(teacher_dir).config.read_text()) or {}).get("pasu") or {}
    meta["distilled"] = {
        "teacher": str(teacher_dir),
        "audio": str(audio_dir),
        "train_utterances": len((train / "text").read_text().splitlines()),
        "valid_utterances": len((valid / "text").read_text().splitlines()),
        "epochs": options.epochs,
        "checkpoint": checkpoint.name,
        "wall_s": round(time.monotonic() - t0, 1),
    }
    meta["history"] = [
        *meta.get("history", []),
        (
            f"distilled by `pasu convert --distill` from {teacher_meta.get('name', teacher_dir.name)} on "
            f"{meta['distilled']['train_utterances']} unlabeled utterances of {audio_dir} (its 1-best token "
            f"sequences as targets, beam {options.beam_size}), {options.epochs} ESPnet epochs, decoder and CTC "
            f"head frozen (lr {options.lr}; weights {checkpoint.name})."
        ),
    ]
    (tmp / "config.yaml").write_text(yaml.safe_dump(source, sort_keys=False), encoding="utf-8")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    write_model_card(out_dir)
    log.info("distilled %s -> %s (%s)", converted_dir, out_dir, checkpoint)
    return out_dir
