"""Tiny ESPnet models, built in about a second from the configs pasu ships.

Tests and the decoder benchmark need real ESPnet models — real encoders,
decoders and CTC heads, saved and loaded as ESPnet does — but no download and
no training. These are built from ``resources/configs/tiny_*.yaml`` with seeded
random weights. Random output layers are nearly flat, which makes every beam a
near-tie and hypotheses that never end, so the output layers are scaled up
("sharpened") and ``<eos>`` gets a bias: decoding then behaves like a real model
(peaked posteriors, hypotheses that end), which is what a decoder test needs.
"""

from __future__ import annotations

import argparse
import logging
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from pasu.resources import CONFIGS

log = logging.getLogger(__name__)

TINY_KINDS = ("conformer", "branchformer", "late")
#: Kinds without a YAML of their own: (the kind whose config they start from, encoder, its encoder_conf).
TINY_VARIANTS: dict[str, tuple[str, str, dict]] = {
    "e_branchformer": (
        "branchformer",
        "e_branchformer",
        {
            "output_size": 64,
            "attention_heads": 4,
            "attention_layer_type": "rel_selfattn",
            "pos_enc_layer_type": "rel_pos",
            "rel_pos_type": "latest",
            "cgmlp_linear_units": 128,
            "cgmlp_conv_kernel": 7,
            "use_linear_after_conv": False,
            "gate_activation": "identity",
            "num_blocks": 2,
            "dropout_rate": 0.0,
            "positional_dropout_rate": 0.0,
            "attention_dropout_rate": 0.0,
            "input_layer": "conv2d",
            "use_ffn": True,
            "macaron_ffn": True,
            "linear_units": 128,
            "merge_conv_kernel": 3,
        },
    ),
}
CHAR_TOKENS = ["<blank>", "<unk>", "<space>", *string.ascii_lowercase, "'", "<sos/eos>"]


@dataclass(frozen=True)
class TinyModelOptions:
    kind: str = "conformer"
    seed: int = 0
    sharpen: float = 4.0  # scale of the decoder/CTC output layers
    eos_bias: float = 2.0  # added to the decoder's <eos> logit
    tokens: tuple[str, ...] = tuple(CHAR_TOKENS)
    encoder_conf: tuple[tuple[str, object], ...] = ()  # overrides of the config's encoder_conf, e.g. num_blocks


def config_path(name: str) -> Path:
    return CONFIGS / name


def _full_config(task, small: dict, token_list: list[str]) -> dict:
    """Complete a short config with every default of an ESPnet task's trainer, as training would."""
    args = task.get_parser().parse_args(["--output_dir", "exp/tiny", "--token_list", "tokens.txt"])
    config = vars(args)
    config.update(small)
    config["token_list"] = list(token_list)
    return config


def full_training_config(small: dict, token_list: list[str]) -> dict:
    """Complete a short config with every default of ESPnet's ASR trainer, as training would."""
    from espnet2.tasks.asr import ASRTask

    return _full_config(ASRTask, small, token_list)


def _feature_stats(frontend: torch.nn.Module, seed: int) -> dict[str, np.ndarray]:
    """Global MVN statistics (ESPnet's npz layout) over synthetic speech-like noise."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(16000 * 4) / 16000
    audio = 0.1 * torch.sin(2 * torch.pi * 220 * t) + 0.05 * torch.randn(t.shape, generator=g)
    with torch.no_grad():
        feats, _ = frontend(audio[None], torch.tensor([audio.numel()]))
    f = feats[0].double().numpy()
    return {"count": np.array(f.shape[0]), "sum": f.sum(0), "sum_square": (f**2).sum(0)}


def build_tiny_model(out_dir: str | Path, options: TinyModelOptions = TinyModelOptions()) -> Path:
    """Write ``config.yaml``, ``model.pth`` and ``feats_stats.npz`` into ``out_dir``."""
    from espnet2.asr.frontend.default import DefaultFrontend
    from espnet2.tasks.asr import ASRTask

    import pasu.encoders  # noqa: F401  (registers encoder: late_context)

    if options.kind not in TINY_KINDS and options.kind not in TINY_VARIANTS:
        raise ValueError(f"unknown tiny model kind {options.kind!r}; choose from {(*TINY_KINDS, *TINY_VARIANTS)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    base, encoder, encoder_conf = TINY_VARIANTS.get(options.kind, (options.kind, None, None))
    small = yaml.safe_load(config_path(f"tiny_{base}.yaml").read_text())
    if encoder is not None:
        small["encoder"], small["encoder_conf"] = encoder, dict(encoder_conf or {})
    small["encoder_conf"].update(dict(options.encoder_conf))
    config = full_training_config(small, list(options.tokens))

    frontend = DefaultFrontend(**config["frontend_conf"])
    np.savez(out / "feats_stats.npz", **_feature_stats(frontend, options.seed))
    config["normalize_conf"] = {"stats_file": "feats_stats.npz"}
    config["pasu"] = {"name": f"tiny-{options.kind}", "version": f"seed{options.seed}"}

    torch.manual_seed(options.seed)
    args = argparse.Namespace(**{**config, "normalize_conf": {"stats_file": str(out / "feats_stats.npz")}})
    model = ASRTask.build_model(args)
    with torch.no_grad():
        for layer in (model.decoder.output_layer, model.ctc.ctc_lo):
            layer.weight.mul_(options.sharpen)
            layer.bias.mul_(options.sharpen)
        model.decoder.output_layer.bias[model.eos] += options.eos_bias
    torch.save(model.state_dict(), out / "model.pth")
    (out / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    log.info("built tiny %s model in %s", options.kind, out)
    return out


TINY_LM_KINDS = ("transformer", "seq_rnn")


@dataclass(frozen=True)
class TinyLMOptions:
    kind: str = "transformer"
    seed: int = 0
    sharpen: float = 3.0  # scale of the output layer: a random LM with opinions, so fusion changes the n-best
    tokens: tuple[str, ...] = tuple(CHAR_TOKENS)


def full_lm_config(small: dict, token_list: list[str]) -> dict:
    """Complete a short LM config with every default of ESPnet's LM trainer, as training would."""
    from espnet2.tasks.lm import LMTask

    return _full_config(LMTask, small, token_list)


def build_tiny_lm(out_dir: str | Path, options: TinyLMOptions = TinyLMOptions()) -> Path:
    """Write an ESPnet LM's ``config.yaml`` and ``model.pth`` (``LMTask``, random weights) into ``out_dir``.

    Give it to a model as ``lm_train_config``/``lm_file``, or put it in the model's ``lm/``.
    """
    from espnet2.tasks.lm import LMTask

    if options.kind not in TINY_LM_KINDS:
        raise ValueError(f"unknown tiny LM kind {options.kind!r}; choose from {TINY_LM_KINDS}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    small = yaml.safe_load(config_path(f"tiny_lm_{options.kind}.yaml").read_text())
    config = full_lm_config(small, list(options.tokens))
    torch.manual_seed(options.seed)
    model = LMTask.build_model(argparse.Namespace(**config))
    with torch.no_grad():
        head: Any = model.lm.decoder  # an untyped submodule (nn.Linear)
        head.weight.mul_(options.sharpen)
        head.bias.mul_(options.sharpen)
    torch.save(model.state_dict(), out / "model.pth")
    (out / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    log.info("built tiny %s LM in %s", options.kind, out)
    return out
