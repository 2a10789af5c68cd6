"""A trained ESPnet Branchformer / E-Branchformer -> a late-contextualized pasu device model.

The PASU paper's rule: measure each layer's attention-branch weight on audio
(:mod:`pasu.tools.convert.measure`); attention stays where it weighs more than
the threshold (0.2). The late encoder runs its local layers first, as audio
arrives, so the split is one cut: the lowest layer above the threshold and every
layer over it keep attention (k + 1 layers), the N - k - 1 below lose their
attention branch (their cgMLP branch, norms and feed-forwards kept; the branch
replaced by its mean contribution on the same audio). At least one layer keeps
attention (:func:`pasu.tools.train.recipe.choose_attention_blocks`, the rule the
training recipe applies to its bootstrap Branchformer).

Everything else — front end, normalisation, subsampling, the attention layers,
the final norm, the CTC head and the decoder — is the source model's tensors;
the decoder and CTC head bit for bit (the pair exchanges hypotheses).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import torch
import yaml

from pasu.digest import file_sha256

log = logging.getLogger(__name__)

DEFAULT_THRESHOLD = 0.2
SUPPORTED = ("branchformer", "e_branchformer")
LATE = ("late_context", "late_branchformer")
_LAYER = re.compile(r"^encoder\.encoders\.(\d+)\.(.+)$")
# Per-layer lists of a Branchformer's encoder_conf: the attention layers keep their entries.
_PER_LAYER = ("cgmlp_weight", "attn_branch_drop_rate", "stochastic_depth_rate")
# The only encoder keys that are neither a layer's nor copied as they are.
_COPIED = ("encoder.embed.conv", "encoder.after_norm.")


class UnsupportedModelError(ValueError):
    """The model cannot be converted; the message says what to do instead."""


@dataclass(frozen=True)
class ConvertOptions:
    """How to convert.

    Attributes:
        threshold: attention stays where its branch weighs more than this.
        limit: calibration utterances from ``--audio`` (None: all).
        name: the device package's name (default: the source's + "-late").
        version: the device package's version.
        num_attention_blocks: set the split instead of measuring it (the weights are
            still measured: the local layers need the removed branch's mean).
        right_context: cut the local layers' depthwise kernels to this many future taps
            (None: keep them whole, exact). A Branchformer's kernel is symmetric (31 taps:
            15 frames ahead per layer), so at the end of speech the last 15 x layers frames
            run through every local layer again; fewer future taps cut that tail (an
            approximation that distillation then trains on).
    """

    threshold: float = DEFAULT_THRESHOLD
    limit: int | None = 200
    name: str | None = None
    version: str = "1"
    num_attention_blocks: int | None = None
    right_context: int | None = None


@dataclass
class Conversion:
    """What :func:`convert_model` did (also ``conversion.json`` in the package)."""

    source: str
    out: str
    encoder: str
    layers: int
    local_layers: list[int]
    attention_layers: list[int]
    attention_weights: list[float]
    weight_definition: str
    threshold: float
    kept_at_or_below_threshold: list[int]
    calibration: dict[str, Any]
    rule: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def branch_type(config: dict[str, Any], where: str = "the model") -> str:
    """The source encoder's type, or :class:`UnsupportedModelError` saying what to do instead."""
    encoder = str(config.get("encoder"))
    if encoder in SUPPORTED:
        conf = config.get("encoder_conf") or {}
        if encoder == "branchformer" and conf.get("use_attn") is False:
            raise UnsupportedModelError(f"{where}: a Branchformer without attention (use_attn: false) is local already")
        if encoder == "branchformer" and conf.get("use_cgmlp") is False:
            raise UnsupportedModelError(
                f"{where}: a Branchformer without its cgMLP branch (use_cgmlp: false) is a Transformer: "
                "nothing local remains when attention goes; train one with both branches"
            )
        if conf.get("interctc_layer_idx"):
            raise UnsupportedModelError(f"{where}: intermediate CTC (interctc_layer_idx) is not supported")
        pos_enc = conf.get("pos_enc_layer_type", "rel_pos")
        if pos_enc not in ("rel_pos", "legacy_rel_pos"):
            raise UnsupportedModelError(
                f"{where}: pos_enc_layer_type {pos_enc!r} is added before layer 0, where the late encoder's "
                "streamed local layers cannot know the position; convert a model trained with rel_pos"
            )
        from pasu.encoders.late import SUBSAMPLING

        if conf.get("input_layer", "conv2d") not in SUBSAMPLING:
            raise UnsupportedModelError(
                f"{where}: input_layer {conf.get('input_layer')!r}; pasu streams {', '.join(SUBSAMPLING)}"
            )
        return encoder
    if encoder in LATE:
        raise UnsupportedModelError(
            f"{where} is late-contextualized already (encoder {encoder}): use it as the device model as it is"
        )
    raise UnsupportedModelError(
        f"{where}: encoder {encoder!r} cannot be converted. pasu convert keeps self-attention only in the "
        "layers whose attention branch carries weight, which needs a model with parallel attention and "
        "convolution branches (encoder: branchformer or e_branchformer); a Conformer or Transformer has "
        "none to weigh. Instead: train an ESPnet Branchformer or E-Branchformer on your data and convert "
        "that, or serve this model as the cloud only (`pasu cloud serve --model DIR`) beside a device model "
        "trained directly (`pasu train`)."
    )


def split(weights: list[float], threshold: float, num_attention_blocks: int | None = None) -> int:
    """Number of bottom layers that become local (N - k - 1) by the paper's rule."""
    from pasu.tools.train.recipe import choose_attention_blocks

    n = len(weights)
    if num_attention_blocks is not None:
        if not 1 <= num_attention_blocks <= n:
            raise ValueError(f"num_attention_blocks must be in [1, {n}], got {num_attention_blocks}")
        return n - num_attention_blocks
    return n - choose_attention_blocks(weights, threshold, max_fraction=1.0)


def _merge(state: dict[str, torch.Tensor], src: str, merge_method: str, d: int, layer) -> tuple[torch.Tensor, ...]:
    """A local Branchformer layer's merge (D x D weight, bias): the attention term folded into the bias."""
    w = state.get(src + "merge_proj.weight")
    if w is None:  # one branch only: ESPnet's merge is the identity
        return torch.eye(d, dtype=torch.float64), torch.zeros(d, dtype=torch.float64)
    w, b = w.double(), state[src + "merge_proj.bias"].double()
    mean = layer.attention_mean.double()
    if merge_method == "concat":
        return w[:, d:], b + w[:, :d] @ mean
    return w * layer.cgmlp_scale, b + w @ mean


def _local_names(kind: str, i: int) -> tuple[dict[str, str], str]:
    """Source layer ``i``'s tensor prefixes -> the local blocks' (and the block with its final norm)."""
    from pasu.encoders.branch import blocks_per_layer

    per = blocks_per_layer(kind)
    conv, fusion = (f"encoder.local_blocks.{per * i + j}." for j in range(2))
    # a layer's frame-wise head runs in the block below it (layer 0's: after the subsampling)
    head = "encoder.embed.out.head." if i == 0 else f"encoder.local_blocks.{per * i - 1}.next_head."
    names = {
        "norm_mlp.": head + "norm_mlp.",
        "cgmlp.channel_proj1.0.": head + "channel_proj1.0.",
        "cgmlp.csgu.norm.": head + "csgu_norm.",
        "cgmlp.csgu.conv.": conv + "conv_module.conv.",
        "cgmlp.csgu.linear.": conv + "csgu_linear.",
        "cgmlp.channel_proj2.": conv + "channel_proj2.",
    }
    if kind == "branchformer":
        return names, conv
    return names | {
        "feed_forward_macaron.": head + "feed_forward_macaron.",
        "norm_ff_macaron.": head + "norm_ff_macaron.",
        "depthwise_conv_fusion.": fusion + "conv_module.conv.",
        "merge_proj.": fusion + "merge_proj.",
        "feed_forward.": fusion + "feed_forward.",
        "norm_ff.": fusion + "norm_ff.",
    }, fusion


def _cast(value: torch.Tensor, like: torch.Tensor, factor: float = 1.0) -> torch.Tensor:
    """``value * factor`` (computed in float64) in ``like``'s dtype; ``value`` itself when nothing changes."""
    if factor == 1.0 and value.dtype == like.dtype:
        return value
    return (value.double() * factor).to(like.dtype)


def convert_state(
    state: dict[str, torch.Tensor],
    kind: str,
    merge_method: str,
    layers: list,
    num_local: int,
    xscale: float,
    right_context: int | None = None,
) -> dict[str, torch.Tensor]:
    """The ``late_branchformer`` state dict of a Branchformer / E-Branchformer state dict.

    ``layers``: the measured :class:`~pasu.tools.convert.measure.LayerBranches`,
    bottom first; ``xscale``: the positional encoding's input scale (sqrt(d)),
    which the late encoder applies after the local layers, so it moves into the
    subsampling output and out of the last local layer's final norm.
    """
    out: dict[str, torch.Tensor] = {}
    scale = xscale if num_local else 1.0
    for key, value in state.items():
        m = _LAYER.match(key)
        if not key.startswith("encoder."):
            out[key] = value  # front end, normalisation, CTC, decoder: as they are
        elif m and int(m.group(1)) >= num_local:
            out[f"encoder.attention_blocks.{int(m.group(1)) - num_local}.{m.group(2)}"] = value
        elif key.startswith("encoder.embed.out."):
            out[key] = _cast(value, value, scale)
        elif key.startswith(_COPIED):
            out[key] = value
        elif not m:
            raise ValueError(f"unexpected encoder tensor {key}")
    d = state["encoder.after_norm.weight"].numel()
    for i in range(num_local):
        src = f"encoder.encoders.{i}."
        if src + "cgmlp.channel_proj2.weight" not in state:
            raise ValueError(f"layer {i} has no cgMLP branch: it cannot become local")
        names, final = _local_names(kind, i)
        for key, value in state.items():
            name = key.removeprefix(src)
            if not key.startswith(src):
                continue
            if name.startswith("norm_final."):
                out[final + name] = _cast(value, value, 1.0 / scale if i == num_local - 1 else 1.0)
            elif target := next((t + name.removeprefix(p) for p, t in names.items() if name.startswith(p)), None):
                if target.endswith("conv_module.conv.weight") and right_context is not None:
                    half = (value.size(-1) - 1) // 2  # the kernel's past taps, the centre, the future it keeps
                    value = value[..., : half + 1 + min(right_context, half)].clone()
                out[target] = value
        like = state[src + "norm_final.weight"]
        conv = names["cgmlp.channel_proj2."].removesuffix("channel_proj2.")
        if kind == "branchformer":
            w, b = _merge(state, src, merge_method, d, layers[i])
            out[conv + "merge_proj.weight"], out[conv + "merge_proj.bias"] = _cast(w, like), _cast(b, like)
        else:
            out[conv + "attention_mean"] = _cast(layers[i].attention_mean, like)
    return out


def _branch_conf(conf: dict[str, Any], num_local: int) -> dict[str, Any]:
    """The source encoder_conf for the attention layers: per-layer lists cut to theirs."""
    out = {k: v for k, v in conf.items() if k != "num_blocks"}
    for key in _PER_LAYER:
        if isinstance(out.get(key), list):
            out[key] = out[key][num_local:]
    return out


def _package_files(source: Any, out: Path) -> dict[str, Any]:
    """Copy tokens, BPE model and feature statistics into ``out``; config entries that name them."""
    from pasu.tools.train.package import _TRAINING_ONLY

    config = dict(source.config)
    config.update(_TRAINING_ONLY)
    (out / "tokens.txt").write_text("".join(f"{t}\n" for t in source.token_list), encoding="utf-8")
    config["token_list"] = "tokens.txt"
    if config.get("bpemodel"):
        shutil.copy(config["bpemodel"], out / "bpe.model")
        config["bpemodel"] = "bpe.model"
    stats = (config.get("normalize_conf") or {}).get("stats_file")
    if stats:
        shutil.copy(stats, out / "feats_stats.npz")
        config["normalize_conf"] = {**config["normalize_conf"], "stats_file": "feats_stats.npz"}
    if config.get("non_linguistic_symbols"):
        shutil.copy(config["non_linguistic_symbols"], out / "nlsyms.txt")
        config["non_linguistic_symbols"] = "nlsyms.txt"
    card = source.files.root / "model_card.md"
    if card.is_file():  # its data line carries over (package.write_model_card)
        shutil.copy(card, out / "model_card.md")
    return config


def convert_model(
    model_dir: Path, out_dir: Path, audio_dir: Path, options: ConvertOptions = ConvertOptions()
) -> Conversion:
    """Write the late-contextualized device package of ``model_dir`` to ``out_dir``.

    Returns the :class:`Conversion`; the package loads with :func:`pasu.models.load_model`
    (with ``late_branchformer`` registered: :mod:`pasu.encoders.branch`).
    """
    from pasu.encoders import branch as late
    from pasu.models import find_model_files, load_model, load_state_dict
    from pasu.tools.convert.measure import audio_files, measure
    from pasu.tools.train.package import write_model_card

    files = find_model_files(model_dir)
    raw = yaml.safe_load(files.config.read_text(encoding="utf-8")) or {}
    kind = branch_type(raw, str(model_dir))
    source = load_model(model_dir)
    calib = audio_files(audio_dir, options.limit)
    log.info("measuring attention-branch weights on %d utterances of %s", len(calib), audio_dir)
    measured = measure(source.model, calib, str(audio_dir))
    weights = [layer.attention_weight for layer in measured.layers]
    n = len(weights)
    num_local = split(weights, options.threshold, options.num_attention_blocks)
    conf = late.full_conf(kind, dict(raw.get("encoder_conf") or {}))
    xscale = float(cast(Any, source.model).encoder.embed.pos_enc.xscale)
    state = load_state_dict(files.weights)
    merge = conf["merge_method"] if kind == "branchformer" else ""
    converted = convert_state(state, kind, merge, measured.layers, num_local, xscale, options.right_context)

    tmp = out_dir.with_name(out_dir.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    config = _package_files(source, tmp)
    config["encoder"] = late.ENCODER_NAME
    config["encoder_conf"] = {
        "branch_type": kind,
        "num_local_blocks": num_local,
        "num_attention_blocks": n - num_local,
        "branch_conf": _branch_conf(dict(raw.get("encoder_conf") or {}), num_local),
        "local_right_context": options.right_context,
    }
    result = Conversion(
        source=str(model_dir),
        out=str(out_dir),
        encoder=kind,
        layers=n,
        local_layers=list(range(num_local)),
        attention_layers=list(range(num_local, n)),
        attention_weights=measured.weights,
        weight_definition=measured.definition,
        threshold=options.threshold,
        kept_at_or_below_threshold=[i for i in range(num_local, n) if weights[i] <= options.threshold],
        calibration={"audio": str(audio_dir), "utterances": measured.utterances, "frames": measured.frames},
        rule=(
            f"attention where its branch weighs > {options.threshold}: the lowest such layer and all above "
            "keep it (the late encoder's local layers run first, as audio arrives), at least one; below, "
            "the attention branch is removed and its mean contribution on the calibration audio added"
            if options.num_attention_blocks is None
            else f"{options.num_attention_blocks} attention layers set by hand"
        )
        + (
            f"; local kernels cut to {options.right_context} future frames" if options.right_context is not None else ""
        ),
    )
    meta = source.config.get("pasu") or {}
    params = sum(v.numel() for v in converted.values() if v.is_floating_point())
    history = [
        *meta.get("history", []),
        (
            f"converted by `pasu convert` from {meta.get('name', files.root.name)} version "
            f"{meta.get('version', '?')} ({kind}, {n} layers; weights sha256 {file_sha256(files.weights)[:12]}): "
            f"attention-branch weight per layer {', '.join(f'{w:.3f}' for w in weights)} "
            f"({measured.definition}; {measured.utterances} utterances of {audio_dir}); "
            f"{num_local} local layers (attention removed) then {n - num_local} attention layers "
            f"({result.rule}). Decoder and CTC head: the source's, bit for bit."
        ),
    ]
    config["pasu"] = {
        # the source's training figures (epochs, accuracy, time) are not this model's
        **({"weights_dtype": meta["weights_dtype"]} if "weights_dtype" in meta else {}),
        "name": options.name or f"{meta.get('name', files.root.name)}-late",
        "version": options.version,
        "role": "device",
        "parameters": params,
        "converted_from": {"path": str(model_dir), "name": meta.get("name"), "version": meta.get("version")},
        "attention_branch_weights": measured.weights,
        "conversion": {k: v for k, v in result.to_json().items() if k not in ("source", "out")},
        "history": history,
    }
    torch.save(converted, tmp / "model.pth")
    (tmp / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    (tmp / "conversion.json").write_text(json.dumps(result.to_json(), indent=2) + "\n")
    for stale in tmp.glob("eval_*.json"):
        stale.unlink()
    load_model(tmp)  # strict: every tensor has its place
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    write_model_card(out_dir)
    log.info(
        "converted %s -> %s: %d local + %d attention layers (weights %s)",
        model_dir,
        out_dir,
        num_local,
        n - num_local,
        measured.weights,
    )
    return result
