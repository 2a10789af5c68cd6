"""Grow a full-attention Conformer from a trained late-context encoder.

Why: on 2 CPU cores a from-scratch Conformer/Branchformer learns CTC far more
slowly than the late-context encoder, whose lower blocks are convolutions
(docs/models.md, "Why this order"). The cloud model must be a full-attention
encoder, so instead of starting it from scratch we start it from the device
encoder and let it train on with attention in *every* layer:

* front end, subsampling, CTC head, final norm: copied;
* Conformer layers ``0 .. L-1`` (L = local blocks): the local block's
  feed-forwards, norms and convolution module, plus a *new* self-attention
  whose output projection starts at zero, so it adds nothing until it learns;
  the local block's asymmetric kernel is placed inside the wider symmetric one
  with zeros on the taps it never had;
* Conformer layers ``L ..``: the device's attention blocks, copied exactly
  (the same ESPnet ``EncoderLayer``), their kernels centred in the wider one;
* the positional scaling: ESPnet's Conformer multiplies the subsampled input by
  sqrt(d) before layer 0, the late-context encoder only before its attention
  blocks; so (when there are local blocks) the subsampling output is divided by
  sqrt(d) and the last local block's final norm multiplied by it, which keeps
  every activation the same.

Optionally the feed-forwards grow wider (``linear_units``): the new hidden units
get random input weights and zero output weights, so they too start silent.

What stays approximate: the local blocks normalise their convolution with
LayerNorm, ESPnet's Conformer with BatchNorm (initialised from the LayerNorm's
affine weights). The result is an ``--init_param`` file for ESPnet's trainer.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch

LOCAL = re.compile(r"^encoder\.local_blocks\.(\d+)\.(.+)$")
ATTENTION = re.compile(r"^encoder\.attention_blocks\.(\d+)\.(.+)$")


def _widen_kernel(weight: torch.Tensor, kernel: int, left: int) -> torch.Tensor:
    """Place a (C, 1, k) depthwise kernel with ``left`` past taps into a centred ``kernel``."""
    if kernel % 2 == 0:
        raise ValueError(f"the Conformer kernel must be odd, got {kernel}")
    k = weight.size(-1)
    start = (kernel - 1) // 2 - left
    if start < 0 or start + k > kernel:
        raise ValueError(f"a {k}-tap kernel with {left} past taps does not fit a centred {kernel}-tap kernel")
    out = weight.new_zeros(weight.size(0), weight.size(1), kernel)
    out[..., start : start + k] = weight
    return out


def _widen_feed_forward(state: dict[str, torch.Tensor], prefix: str, units: int, gen: torch.Generator) -> None:
    """Give ``prefix`` (w_1, w_2) ``units`` hidden units; the new ones output zero."""
    w1, b1, w2 = state[prefix + "w_1.weight"], state[prefix + "w_1.bias"], state[prefix + "w_2.weight"]
    old, d = w1.shape
    if units < old:
        raise ValueError(f"cannot shrink a feed-forward from {old} to {units} units")
    bound = 1.0 / math.sqrt(d)  # nn.Linear's default init range
    extra = (torch.rand(units - old, d, generator=gen) * 2 - 1) * bound
    state[prefix + "w_1.weight"] = torch.cat([w1, extra])
    state[prefix + "w_1.bias"] = torch.cat([b1, b1.new_zeros(units - old)])
    state[prefix + "w_2.weight"] = torch.cat([w2, w2.new_zeros(d, units - old)], dim=1)


def conformer_init_state(
    device_state: dict[str, torch.Tensor],
    *,
    kernel: int,
    local_left_context: int,
    attention_heads: int,
    linear_units: int | None = None,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """State dict (encoder + CTC) of an ESPnet ``conformer`` model grown from ``device_state``.

    ``device_state`` is an ESPnet checkpoint of a ``late_context`` model;
    ``local_left_context`` is its local kernel's past taps (kernel - 1 - right context);
    ``linear_units`` the Conformer's feed-forward width (None: the device's).
    Keys not returned (the new attention's projections, BatchNorm statistics)
    keep ESPnet's own initialisation, except the new attention's output
    projection, which is zero.
    """
    out: dict[str, torch.Tensor] = {}
    num_local = 1 + max((int(m.group(1)) for k in device_state if (m := LOCAL.match(k))), default=-1)
    d = device_state["encoder.after_norm.weight"].numel()
    scale = math.sqrt(d)
    gen = torch.Generator().manual_seed(seed)
    for key, value in device_state.items():
        if key.startswith("encoder.embed.out."):
            out[key] = value / scale if num_local else value
        elif key.startswith(("frontend.", "normalize.", "encoder.embed.conv", "encoder.after_norm", "ctc.")):
            out[key] = value
        elif m := ATTENTION.match(key):
            layer, name = num_local + int(m.group(1)), m.group(2)
            if name == "conv_module.depthwise_conv.weight":
                value = _widen_kernel(value, kernel, (value.size(-1) - 1) // 2)
            out[f"encoder.encoders.{layer}.{name}"] = value
        elif m := LOCAL.match(key):
            layer, name = int(m.group(1)), m.group(2)
            prefix = f"encoder.encoders.{layer}."
            if name == "conv_module.depthwise_conv.weight":
                value = _widen_kernel(value, kernel, local_left_context)
            elif name.startswith("conv_module.pointwise_conv"):
                value = value.unsqueeze(-1) if value.dim() == 2 else value  # Linear -> Conv1d(k=1)
            elif name.startswith("norm_final.") and layer == num_local - 1:
                value = value * scale  # the sqrt(d) the late-context encoder applies here
            out[prefix + name] = value
    for layer in range(num_local):
        prefix = f"encoder.encoders.{layer}."
        out[prefix + "self_attn.linear_out.weight"] = torch.zeros(d, d)
        out[prefix + "self_attn.linear_out.bias"] = torch.zeros(d)
        out[prefix + "norm_mha.weight"] = torch.ones(d)
        out[prefix + "norm_mha.bias"] = torch.zeros(d)
        for name in ("pos_bias_u", "pos_bias_v"):
            w = torch.empty(attention_heads, d // attention_heads)
            out[prefix + f"self_attn.{name}"] = torch.nn.init.xavier_uniform_(w, generator=gen)
    if linear_units is not None:
        for key in [k for k in out if k.endswith(".w_1.weight") and k.startswith("encoder.encoders.")]:
            _widen_feed_forward(out, key.removesuffix("w_1.weight"), linear_units, gen)
    return out


def write_conformer_init(
    device_ckpt: Path,
    out: Path,
    *,
    kernel: int,
    local_left_context: int,
    attention_heads: int,
    linear_units: int | None = None,
) -> Path:
    """Write :func:`conformer_init_state` of an ESPnet checkpoint to ``out`` (a .pth)."""
    from pasu.models import load_state_dict

    state = load_state_dict(device_ckpt)
    grown = conformer_init_state(
        state,
        kernel=kernel,
        local_left_context=local_left_context,
        attention_heads=attention_heads,
        linear_units=linear_units,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(grown, out)
    return out


# The residual branches of an ESPnet Conformer layer end in these projections:
# zeroed, the layer adds nothing to its input (see deepen_conformer_state).
_RESIDUAL_OUTPUTS = (
    "feed_forward_macaron.w_2",
    "self_attn.linear_out",
    "conv_module.pointwise_conv2",
    "feed_forward.w_2",
)
_LAYER = re.compile(r"^encoder\.encoders\.(\d+)\.(.+)$")


def deepen_conformer_state(state: dict[str, torch.Tensor], after: list[int]) -> dict[str, torch.Tensor]:
    """State dict of the same Conformer with a new layer inserted after each layer in ``after``.

    Why: a deeper cloud encoder, started from a trained one without losing what it
    knows. Each new layer is a copy of the layer below it (trained feature
    extractors to start from) with its residual branches' output projections
    zeroed, so it passes its input through; its final LayerNorm then would
    re-normalise that input, so the layer below hands over its final norm's
    affine weights (it outputs the plain normalised vector, which a LayerNorm
    leaves unchanged) and the new layer applies them: the deeper encoder computes
    the same function (up to LayerNorm's epsilon), and training grows the new
    layers from zero.
    """
    layers: dict[int, dict[str, torch.Tensor]] = {}
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if m := _LAYER.match(key):
            layers.setdefault(int(m.group(1)), {})[m.group(2)] = value
        else:
            out[key] = value
    missing = sorted(set(after) - set(layers))
    if missing:
        raise ValueError(f"no encoder layers {missing} to insert after (the encoder has {len(layers)})")
    index = 0
    for i in sorted(layers):
        layer = dict(layers[i])
        if i in after:
            new = {k: v.clone() for k, v in layer.items()}
            for name in _RESIDUAL_OUTPUTS:
                for suffix in (".weight", ".bias"):
                    if name + suffix in new:
                        new[name + suffix] = torch.zeros_like(new[name + suffix])
            layer["norm_final.weight"] = torch.ones_like(layer["norm_final.weight"])
            layer["norm_final.bias"] = torch.zeros_like(layer["norm_final.bias"])
            for name, value in layer.items():
                out[f"encoder.encoders.{index}.{name}"] = value
            layer, index = new, index + 1
        for name, value in layer.items():
            out[f"encoder.encoders.{index}.{name}"] = value
        index += 1
    return out


def write_deeper_model(model_dir: Path, out_dir: Path, after: list[int]) -> Path:
    """Copy a packaged Conformer model (config.yaml, model.pth, ...) to ``out_dir``,
    :func:`deepen_conformer_state` applied: a ready ``--init-from`` package."""
    import shutil

    import yaml

    config = yaml.safe_load((model_dir / "config.yaml").read_text())
    if config.get("encoder") != "conformer":
        raise ValueError(f"{model_dir}: only a conformer encoder can be deepened, not {config.get('encoder')}")
    out_dir.mkdir(parents=True, exist_ok=True)
    for f in model_dir.iterdir():
        if f.is_file() and f.name not in ("config.yaml", "model.pth"):
            shutil.copy2(f, out_dir / f.name)
    from pasu.models import load_state_dict

    state = load_state_dict(model_dir / "model.pth")
    torch.save(deepen_conformer_state(state, after), out_dir / "model.pth")
    before, layers = int(config["encoder_conf"]["num_blocks"]), sorted(set(after))
    config["encoder_conf"]["num_blocks"] = before + len(layers)
    pasu = config.setdefault("pasu", {})  # the package's own history, carried into the model card
    pasu["history"] = [
        *pasu.get("history", []),
        (
            f"deepened from {before} to {before + len(layers)} Conformer layers: a new layer after layers "
            f"{', '.join(map(str, layers))}, starting as the identity (pasu.tools.train.grow)."
        ),
    ]
    (out_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return out_dir


def main(argv: list[str] | None = None) -> int:
    """``python -m pasu.tools.train.grow --model DIR --out DIR --after 1,4,7``: a deeper package."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m pasu.tools.train.grow", description=write_deeper_model.__doc__)
    p.add_argument("--model", type=Path, required=True, help="packaged Conformer model dir")
    p.add_argument("--out", type=Path, required=True, help="where the deeper package goes")
    p.add_argument("--after", required=True, help="comma-separated layers to insert a new layer after")
    args = p.parse_args(argv)
    write_deeper_model(args.model, args.out, [int(i) for i in args.after.split(",")])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
