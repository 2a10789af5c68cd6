"""Turn an ESPnet experiment dir into a self-contained model dir pasu and ESPnet both load.

Layout: ``config.yaml`` (the training config, every path relative to the model
dir), ``model.pth`` (a plain state dict), ``feats_stats.npz``, ``tokens.txt``,
``bpe.model`` and ``model_card.md``. Training-only entries (data lists, shape
files, init_param) are cleared so the config names no file outside the dir.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

log = logging.getLogger(__name__)

SIZE_TARGET_MB = 30.0
# Config keys that only mean something to the training run that wrote them.
_TRAINING_ONLY = {
    "train_data_path_and_name_and_type": [],
    "valid_data_path_and_name_and_type": [],
    "train_shape_file": [],
    "valid_shape_file": [],
    "init_param": [],
    "output_dir": None,
    "config": None,
    "print_config": False,
    "collect_stats": False,
    "resume": False,
    "allow_multi_rates": False,
}


@dataclass(frozen=True)
class PackageInfo:
    """What the model card says about where a model came from."""

    name: str
    role: str  # "cloud" or "device"
    version: str
    data_dir: Path
    notes: dict[str, Any] = field(default_factory=dict)


def package_model(
    exp_dir: Path,
    checkpoint: Path,
    token_dir: Path,
    stats_file: Path,
    out_dir: Path,
    info: PackageInfo,
    shared_decoder_from: Path | None = None,
    weights_dtype: torch.dtype = torch.float32,
) -> Path:
    """Write the model dir; with ``shared_decoder_from``, prove and pin the shared decoder.

    The device decoder was initialised from the cloud checkpoint and frozen, so
    it must equal the cloud's; averaging n identical checkpoints can still move
    a float by one ulp, so the cloud tensors are copied in after checking they
    agree (anything beyond rounding is an error: the freeze did not hold).
    """
    from pasu.models import load_state_dict

    tmp = out_dir.with_name(out_dir.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    state = load_state_dict(checkpoint)
    if shared_decoder_from is not None:
        dec = shared_decoder(state, load_state_dict(shared_decoder_from))
        state.update({k: v.clone() for k, v in dec.items()})
    # the cloud is packaged first, so a pinned decoder is already in weights_dtype
    state = {k: v.to(weights_dtype) if v.is_floating_point() else v for k, v in state.items()}
    torch.save(state, tmp / "model.pth")
    shutil.copy(stats_file, tmp / "feats_stats.npz")
    shutil.copy(token_dir / "tokens.txt", tmp / "tokens.txt")
    shutil.copy(token_dir / "bpe.model", tmp / "bpe.model")

    config = yaml.safe_load((exp_dir / "config.yaml").read_text(encoding="utf-8"))
    config.update(_TRAINING_ONLY)
    config["token_list"] = "tokens.txt"
    config["bpemodel"] = "bpe.model"
    config.setdefault("normalize_conf", {})["stats_file"] = "feats_stats.npz"
    n_params = sum(v.numel() for v in state.values() if v.is_floating_point())
    train_log = _training_summary(exp_dir)
    config["pasu"] = {
        "name": info.name,
        "version": info.version,
        "role": info.role,
        "parameters": n_params,
        "checkpoint": checkpoint.name,
        "weights_dtype": str(weights_dtype).removeprefix("torch."),
        **train_log,
        **info.notes,
    }
    (tmp / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    write_model_card(out_dir, data_manifest=info.data_dir / "manifest.json")
    size = dir_size_mb(out_dir)
    (log.warning if size > SIZE_TARGET_MB else log.info)(
        "packaged %s: %.2f M parameters, %.1f MB (target <= %.0f MB)", out_dir, n_params / 1e6, size, SIZE_TARGET_MB
    )
    return out_dir


def shared_decoder(
    device: dict[str, torch.Tensor], cloud: dict[str, torch.Tensor], tolerance: float = 1e-5
) -> dict[str, torch.Tensor]:
    """The cloud's decoder tensors, after proving the device's decoder is the same one.

    Differences within the rounding of the cloud's dtype (float16 rounds at 2**-11
    of a value) pass; anything beyond ``tolerance`` is an error: the freeze did not hold.
    """
    dec = {k: v for k, v in cloud.items() if k.startswith("decoder.")}
    mine = {k for k in device if k.startswith("decoder.")}
    if set(dec) != mine:
        raise ValueError(f"device and cloud decoders differ in shape/keys: {sorted(mine ^ set(dec))[:5]}")
    worst = max(
        float(((device[k].float() - v.float()).abs() - torch.finfo(v.dtype).eps * v.float().abs()).max())
        for k, v in dec.items()
    )
    if worst > tolerance:
        raise ValueError(f"device decoder drifted from the cloud decoder by {worst:g}: was it frozen?")
    log.info("device decoder = cloud decoder (max |diff| %.2g)", worst)
    return dec


def dir_size_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.iterdir() if f.is_file()) / 1e6


def _training_summary(exp_dir: Path) -> dict[str, Any]:
    """Epochs run and the best validation accuracy, from ESPnet's train.log."""
    train_log = exp_dir / "train.log"
    text = train_log.read_text(encoding="utf-8", errors="replace") if train_log.is_file() else ""
    epochs = [int(m) for m in re.findall(r"(\d+)epoch results:", text)]
    accs = [float(m) for m in re.findall(r"\[valid\][^\n]*?\bacc=([0-9.]+)", text)]
    out: dict[str, Any] = {}
    if epochs:
        out["epochs"] = max(epochs)
    if accs:
        out["best_valid_acc"] = round(max(accs), 4)
    return out


def update_model_card(model_dir: Path) -> None:
    """Re-render the card, now with the ``eval_*.json`` results beside it."""
    write_model_card(model_dir)


def save_card_row(model_dir: Path, name: str, summary: dict) -> None:
    """One evaluation as ``eval_<name>.json`` beside the weights, and the card re-rendered
    with it: the one place the recipe's eval stage and ``pasu eval --card-row`` write rows."""
    (model_dir / f"eval_{name}.json").write_text(json.dumps(summary, indent=2) + "\n")
    update_model_card(model_dir)


def write_model_card(model_dir: Path, data_manifest: Path | None = None) -> Path:
    """``model_card.md`` from config.yaml's ``pasu`` section and any eval results."""
    config = yaml.safe_load((model_dir / "config.yaml").read_text(encoding="utf-8"))
    meta = config.get("pasu", {})
    card = model_dir / "model_card.md"
    if data_manifest is not None and data_manifest.is_file():
        manifest = json.loads(data_manifest.read_text())
        meta_data = {k: manifest[k] for k in ("counts", "seconds") if k in manifest}
        meta_data["seed"] = manifest.get("options", {}).get("seed")
    else:
        meta_data = _previous_data_line(card)
    enc = config.get("encoder_conf", {})
    dec = config.get("decoder_conf", {})
    lines = [
        f"# {meta.get('name', model_dir.name)} (version {meta.get('version', '0')})",
        "",
        f"Role: **{meta.get('role', '?')}** model of pasu's device/cloud pair. "
        "An ordinary ESPnet2 ASR model (`espnet2.tasks.asr`); load with "
        "`pasu.models.load_model(DIR)` or ESPnet's `Speech2Text` run from this directory.",
        "",
        "## Architecture",
        "",
        f"- encoder: `{config.get('encoder')}` {json.dumps(enc, sort_keys=True)}",
        f"- decoder: `{config.get('decoder')}` {json.dumps(dec, sort_keys=True)}"
        + (" — frozen, identical to the cloud model's" if meta.get("role") == "device" else ""),
        f"- CTC weight {config.get('model_conf', {}).get('ctc_weight')}, "
        f"frontend {json.dumps(config.get('frontend_conf', {}), sort_keys=True)}, global MVN, SpecAugment",
        f"- tokens: sentencepiece BPE, {len(_lines(model_dir / 'tokens.txt'))} entries, "
        "intent labels as single tokens (first token of the output)",
        f"- parameters: {meta.get('parameters', 0) / 1e6:.2f} M; package {dir_size_mb(model_dir):.1f} MB",
        "",
        "## Training",
        "",
        f"- data: pasu synthetic SLURP-style corpus {json.dumps(meta_data, sort_keys=True)}",
        f"- epochs: {meta.get('epochs', '?')}; best validation token accuracy: {meta.get('best_valid_acc', '?')}; "
        f"weights: {meta.get('checkpoint', '?')}"
        + (" (ESPnet n-best average)" if ".ave." in str(meta.get("checkpoint", "")) else ""),
    ]
    if "training_wall_s" in meta:
        lines.append(
            f"- training time: {meta['training_wall_s'] / 60:.1f} min wall, "
            f"{(meta.get('training_cpu_s') or 0) / 60:.1f} min CPU (2-core CPU machine)"
        )
    if "bootstrap_attention_branch_weights" in meta:
        w = ", ".join(f"{x:.2f}" for x in meta["bootstrap_attention_branch_weights"])
        lines.append(f"- the bootstrap Branchformer's attention-branch weight per layer: {w}")
    lines += [f"- {note}" for note in meta.get("history", [])]  # how this model was trained, in words
    results = sorted(model_dir.glob("eval_*.json"))
    lines += ["", "## Evaluation (pasu Recognizer)", ""]
    if results:
        lines += ["| test set | utterances | intent accuracy | WER |", "|---|---:|---:|---:|"]
        for r in results:
            s = json.loads(r.read_text())
            name, acc, wer = r.stem.removeprefix("eval_"), 100 * s["intent_acc"], 100 * s["wer"]
            lines.append(f"| {name} | {s['utterances']} | {acc:.1f}% | {wer:.1f}% |")
        lines += ["", "Each row: `pasu eval --model DIR --data SET --card-row NAME` (beam 10, CTC weight 0.5)."]
    else:
        lines.append("Not evaluated yet: `pasu eval --model DIR --data data/synth/test_voices --card-row test_voices`.")
    lines += ["", f"<!-- data: {json.dumps(meta_data, sort_keys=True)} -->", ""]
    card.write_text("\n".join(lines), encoding="utf-8")
    return card


def _previous_data_line(card: Path) -> dict[str, Any]:
    if card.is_file():
        m = re.search(r"<!-- data: (.*) -->", card.read_text(encoding="utf-8"))
        if m:
            return json.loads(m.group(1))
    return {}


def _lines(path: Path) -> list[str]:
    return [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()] if path.is_file() else []
